"""IndexRoutedVectorStore: each index is searched in the store it lives in."""

from __future__ import annotations

from typing import Any, cast

import asyncpg
import pytest

from viewfinder_common.errors import FailedPrecondition
from viewfinder_common.vectorstore import VectorFilter, VectorHit, VectorQuery, VectorStore
from viewfinder_common.vectorstore.factory import VectorStoreSettings
from viewfinder_search.adapters.vector_stores import IndexRoutedVectorStore


class _Store:
    """A store that answers every search with its own name as the file id."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = 0

    async def search(self, index: str, query: VectorQuery) -> list[VectorHit]:
        return [VectorHit(file_id=f"{self.name}:{index}", score=1.0)]

    async def close(self) -> None:
        self.closed += 1


class _Registry:
    """The one query IndexRoutedVectorStore sends to the catalogue: an index's store."""

    def __init__(self, stores: dict[str, str]) -> None:
        self.stores = stores
        self.lookups: list[str] = []

    async def fetchval(self, sql: str, index: str) -> Any:
        self.lookups.append(index)
        return self.stores.get(index)


_QUERY = VectorQuery(
    vector_field="visual", vector=[1.0], top_k=1, filter=VectorFilter(dataset_version_id="v")
)


def _routed(registry: _Registry, default: _Store, opener: Any = None) -> IndexRoutedVectorStore:
    return IndexRoutedVectorStore(
        cast(VectorStore, default),
        settings=VectorStoreSettings(kind="pgvector"),
        pool=cast(asyncpg.Pool, registry),
        open_stored=opener,
    )


async def test_each_index_is_searched_in_its_own_store_opened_once() -> None:
    default, archive = _Store("default"), _Store("archive")
    opened: list[str] = []

    async def open_stored(name: str) -> VectorStore:
        opened.append(name)
        return cast(VectorStore, archive)

    registry = _Registry({"ds_new": "vs-archive", "ds_old": "pgvector"})
    routed = _routed(registry, default, open_stored)

    assert [hit.file_id for hit in await routed.search("ds_new", _QUERY)] == ["archive:ds_new"]
    assert [hit.file_id for hit in await routed.search("ds_new", _QUERY)] == ["archive:ds_new"]
    assert [hit.file_id for hit in await routed.search("ds_old", _QUERY)] == ["default:ds_old"]
    # An index the registry does not know is searched in the configured store.
    assert [hit.file_id for hit in await routed.search("ds_unknown", _QUERY)] == ["default:ds_unknown"]
    assert opened == ["vs-archive"]  # opened on first use, then kept
    assert registry.lookups.count("ds_new") == 1  # an index never moves: looked up once

    await routed.close()
    assert (default.closed, archive.closed) == (1, 1)


async def test_an_index_in_a_store_search_cannot_open_is_a_failed_precondition() -> None:
    routed = _routed(_Registry({"ds_new": "vs-archive"}), _Store("default"))

    with pytest.raises(FailedPrecondition, match="index 'ds_new' lives in vector store 'vs-archive'"):
        await routed.search("ds_new", _QUERY)
