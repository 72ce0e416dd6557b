"""The factory picks the adapter from VIEWFINDER_VECTORSTORE_* and shares or owns the pool."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import asyncpg
import pytest
from pydantic import ValidationError

from viewfinder_common.vectorstore import IndexNotFound, IndexSchema, VectorField
from viewfinder_common.vectorstore.factory import (
    VectorStoreSettings,
    connect_vector_store,
    create_vector_store,
)
from viewfinder_common.vectorstore.hologres import HologresVectorStore
from viewfinder_common.vectorstore.milvus import MilvusVectorStore
from viewfinder_common.vectorstore.pgvector import PgVectorStore

pytestmark = pytest.mark.stack


async def test_factory_builds_pgvector_on_a_shared_pool_by_default(pool: asyncpg.Pool) -> None:
    store = await create_vector_store(VectorStoreSettings(), pool=pool)
    assert isinstance(store, PgVectorStore)
    await store.ensure_index(IndexSchema("factory", [VectorField("visual", 4)]))
    await store.close()  # not its pool to close
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT to_regclass('vf_index_factory') IS NOT NULL")


async def test_factory_opens_and_closes_its_own_pool(
    catalogue_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIEWFINDER_DB_URL", catalogue_db_url)
    store = await create_vector_store(VectorStoreSettings())
    assert isinstance(store, PgVectorStore)
    await store.ensure_index(IndexSchema("own_pool", [VectorField("visual", 4)]))
    assert await store.count("own_pool") == 0
    await store.close()


async def test_factory_reads_kind_and_milvus_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The running stack's Milvus (stack.env), which need not be on the default port.
    milvus_uri = os.environ.get("VIEWFINDER_MILVUS_URI", "http://127.0.0.1:19530")
    monkeypatch.setenv("VIEWFINDER_VECTORSTORE_KIND", "milvus")
    monkeypatch.setenv("VIEWFINDER_VECTORSTORE_UPSERT_BATCH_SIZE", "64")
    monkeypatch.setenv("VIEWFINDER_MILVUS_URI", milvus_uri)
    settings = VectorStoreSettings()
    assert (settings.kind, settings.upsert_batch_size, settings.milvus.uri) == ("milvus", 64, milvus_uri)
    store = await create_vector_store(settings)
    assert isinstance(store, MilvusVectorStore)
    try:
        with pytest.raises(IndexNotFound):  # it reached the server and asked
            await store.count("factory_never_created")
    finally:
        await store.close()


def test_an_unknown_kind_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWFINDER_VECTORSTORE_KIND", "faiss")
    with pytest.raises(ValidationError, match="pgvector"):
        VectorStoreSettings()


@pytest.mark.parametrize("kind", ["pgvector", "hologres"])
async def test_a_stored_connection_store_can_be_opened_on_one_connection(
    catalogue_db_url: str, kind: str
) -> None:
    """What a connection test asks for: at most one connection, none opened up front."""
    url = urlsplit(catalogue_db_url)
    user_key = "user" if kind == "pgvector" else "access_key_id"
    config = {
        "host": url.hostname,
        "port": url.port,
        "database": url.path.lstrip("/"),
        user_key: url.username,
    }
    settings = VectorStoreSettings()
    for pool_max_size, expected in ((1, (0, 1)), (None, (1, 10))):
        store = await connect_vector_store(kind, config, None, settings=settings, pool_max_size=pool_max_size)
        assert isinstance(store, PgVectorStore | HologresVectorStore)
        try:
            own_pool = store._pool  # the pool size is what this test is about
            assert (own_pool.get_min_size(), own_pool.get_max_size()) == expected
            assert await own_pool.fetchval("SELECT 1") == 1
        finally:
            await store.close()
