"""VectorStoreRegistry: own adapter kinds, stores handed over, stored connections by name."""

from __future__ import annotations

import asyncpg
import pytest

from viewfinder_common.errors import NotFound
from viewfinder_common.vectorstore import VectorStore
from viewfinder_common.vectorstore.factory import VectorStoreSettings
from viewfinder_common.vectorstore.milvus import MilvusVectorStore
from viewfinder_common.vectorstore.pgvector import PgVectorStore
from viewfinder_common.vectorstore.registry import VectorStoreRegistry

pytestmark = pytest.mark.stack


class _Recorded(PgVectorStore):
    """A pgvector store that notes its close."""

    closed = 0

    async def close(self) -> None:
        type(self).closed += 1
        await super().close()


async def test_own_kinds_open_once_and_other_names_go_to_the_stored_opener(pool: asyncpg.Pool) -> None:
    opened: list[str] = []

    async def open_stored(name: str) -> VectorStore:
        if name != "archive":
            raise NotFound(f"no vector store connection named {name!r} is configured or stored")
        opened.append(name)
        return _Recorded(pool)

    handed_over = _Recorded(pool)
    registry = VectorStoreRegistry(
        VectorStoreSettings(), pool, stored=open_stored, opened={"configured": handed_over}
    )
    _Recorded.closed = 0
    try:
        pgvector = await registry.store("pgvector")
        assert isinstance(pgvector, PgVectorStore)
        assert await registry.store("pgvector") is pgvector
        assert isinstance(await registry.store("milvus"), MilvusVectorStore)
        assert await registry.store("configured") is handed_over
        archive = await registry.store("archive")
        assert await registry.store("archive") is archive
        assert opened == ["archive"]
        with pytest.raises(NotFound, match="'gone'"):
            await registry.store("gone")
        assert registry.has_connection("gone")  # stored connections are found on first use
    finally:
        await registry.close()
    assert _Recorded.closed == 2  # the stored store and the one handed over


async def test_without_an_opener_only_own_kinds_are_known(pool: asyncpg.Pool) -> None:
    registry = VectorStoreRegistry(VectorStoreSettings(kind="pgvector"), pool)
    try:
        assert (registry.has_connection("milvus"), registry.has_connection("archive")) == (True, False)
        with pytest.raises(NotFound, match="no vector store connection named 'archive' is configured"):
            await registry.store("archive")
    finally:
        await registry.close()
