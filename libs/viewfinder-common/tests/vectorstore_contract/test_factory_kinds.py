"""The factory builds the contract-tested adapters from VIEWFINDER_VECTORSTORE_KIND and their own settings."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from viewfinder_common.settings import DatabaseSettings
from viewfinder_common.testing import hologres_shim
from viewfinder_common.testing.fake_search_engine import Dialect, FakeSearchEngine
from viewfinder_common.vectorstore import IndexSchema, VectorField, VectorFilter
from viewfinder_common.vectorstore.elasticsearch import ElasticsearchVectorStore
from viewfinder_common.vectorstore.factory import VectorStoreSettings, create_vector_store
from viewfinder_common.vectorstore.hologres import HologresVectorStore
from viewfinder_common.vectorstore.opensearch import LindormVectorStore, OpenSearchVectorStore


@pytest.mark.parametrize(
    ("kind", "prefix", "adapter"),
    [
        ("elasticsearch", "VIEWFINDER_ELASTICSEARCH_", ElasticsearchVectorStore),
        ("opensearch", "VIEWFINDER_OPENSEARCH_", OpenSearchVectorStore),
        ("lindorm", "VIEWFINDER_LINDORM_", LindormVectorStore),
    ],
)
async def test_factory_builds_search_engine_adapters_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, kind: str, prefix: str, adapter: type
) -> None:
    async with FakeSearchEngine(Dialect(kind)) as fake:
        monkeypatch.setenv("VIEWFINDER_VECTORSTORE_KIND", kind)
        monkeypatch.setenv("VIEWFINDER_VECTORSTORE_UPSERT_BATCH_SIZE", "2")
        monkeypatch.setenv(prefix + "URI", fake.url)
        monkeypatch.setenv(prefix + "USERNAME", fake.username)
        monkeypatch.setenv(prefix + "PASSWORD", fake.password)
        store = await create_vector_store(VectorStoreSettings())
        assert isinstance(store, adapter)
        await store.ensure_index(IndexSchema("factory", [VectorField("visual", 3)]))
        await store.close()
        assert "/vf_index_factory" in {r.path for r in fake.requests}
        assert fake.rejections == []


@pytest.mark.stack
async def test_factory_builds_hologres_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DatabaseSettings()
    base, _, _ = settings.url.rpartition("/")
    name = f"holo_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(settings.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(f"{base}/{name}")
        await hologres_shim.install(conn)
        await conn.close()
        user_host = base.split("//")[1]
        user, _, host_port = user_host.rpartition("@")
        host, _, port = host_port.partition(":")
        monkeypatch.setenv("VIEWFINDER_VECTORSTORE_KIND", "hologres")
        monkeypatch.setenv("VIEWFINDER_HOLOGRES_HOST", host)
        monkeypatch.setenv("VIEWFINDER_HOLOGRES_PORT", port)
        monkeypatch.setenv("VIEWFINDER_HOLOGRES_DATABASE", name)
        monkeypatch.setenv("VIEWFINDER_HOLOGRES_ACCESS_KEY_ID", user)
        store = await create_vector_store(VectorStoreSettings())
        assert isinstance(store, HologresVectorStore)
        await store.ensure_index(IndexSchema("factory", [VectorField("visual", 3)]))
        assert await store.count("factory", VectorFilter(str(uuid.uuid4()))) == 0
        await store.close()  # its own pool
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
