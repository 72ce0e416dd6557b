"""Fixtures for the contract-fake adapters: Elasticsearch, OpenSearch, Lindorm and Hologres.

None of these servers can run here, so each adapter runs against a contract
fake: ``FakeSearchEngine`` (a real HTTP server that checks every request body
against the vendor's documented API and answers kNN with real cosine
arithmetic) for Elasticsearch / OpenSearch / Lindorm, and for Hologres the
real local PostgreSQL with ``hologres_shim`` (Hologres' documented Proxima
procedures and functions as argument-checking SQL shims).

``backend`` has the attributes the shared contract suite
(``tests/vectorstore/test_contract.py``) uses, so that suite runs unchanged
against these adapters (``test_contract_fakes.py``). After each test it asserts
that the fake rejected nothing: an adapter that sends a request the vendor's
docs do not allow fails the test that made it send it.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from viewfinder_common.settings import DatabaseSettings
from viewfinder_common.testing import hologres_shim
from viewfinder_common.testing.fake_search_engine import Dialect, FakeSearchEngine
from viewfinder_common.vectorstore import VectorStore
from viewfinder_common.vectorstore.elasticsearch import ElasticsearchSettings, ElasticsearchVectorStore
from viewfinder_common.vectorstore.hologres import HologresVectorStore
from viewfinder_common.vectorstore.opensearch import (
    LindormSettings,
    LindormVectorStore,
    OpenSearchSettings,
    OpenSearchVectorStore,
)

FAKE_KINDS = ["elasticsearch", "opensearch", "lindorm"]
ALL_KINDS = [*FAKE_KINDS, "hologres"]
_SHARED_SUITE = Path(__file__).parent.parent / "vectorstore"


def load_shared_module(name: str) -> ModuleType:
    """A module of the pgvector/Milvus contract suite (``tests/vectorstore``), loaded by path
    (test directories are not packages)."""
    module_name = f"_vectorstore_shared_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, _SHARED_SUITE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def make_store(kind: str, fake: FakeSearchEngine, **options: Any) -> VectorStore:
    """An adapter of ``kind`` pointed at ``fake`` with its credentials."""
    password = SecretStr(fake.password)
    if kind == "elasticsearch":
        return ElasticsearchVectorStore(
            ElasticsearchSettings(uri=fake.url, username=fake.username, password=password),
            upsert_batch_size=200,
        )
    if kind == "opensearch":
        return OpenSearchVectorStore(
            OpenSearchSettings(uri=fake.url, username=fake.username, password=password, **options),
            upsert_batch_size=200,
        )
    return LindormVectorStore(
        LindormSettings(uri=fake.url, username=fake.username, password=password, **options),
        upsert_batch_size=200,
    )


def dialect_of(kind: str) -> Dialect:
    """The fake's dialect for an adapter kind."""
    return Dialect(kind)


@dataclass
class Backend:
    """One adapter under test and what the shared suite needs around it."""

    kind: str
    store: VectorStore
    new_store: Callable[[], Awaitable[VectorStore]]
    fake: FakeSearchEngine | None = None
    pool: asyncpg.Pool | None = None
    created_indexes: list[str] = field(default_factory=list)
    extra_stores: list[VectorStore] = field(default_factory=list)

    async def settle(self, index: str) -> None:
        """Nothing to wait for: the fakes apply writes at once (refresh=wait_for), PostgreSQL commits."""

    async def other_store(self) -> VectorStore:
        """A second store instance (another replica), closed after the test."""
        store = await self.new_store()
        self.extra_stores.append(store)
        return store


async def _search_engine_backend(kind: str) -> AsyncIterator[Backend]:
    async with FakeSearchEngine(dialect_of(kind)) as fake:

        async def new_store() -> VectorStore:
            return make_store(kind, fake)

        backend = Backend(kind, await new_store(), new_store, fake=fake)
        try:
            yield backend
        finally:
            for store in [backend.store, *backend.extra_stores]:
                await store.close()
        assert fake.rejections == [], f"{kind} adapter sent requests the vendor's API rejects"


async def hologres_pool(url: str) -> asyncpg.Pool:
    """A pool on a catalogue database with the Hologres shim installed."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None
    async with pool.acquire() as conn:
        await hologres_shim.install(conn)
    return pool


@pytest.fixture(params=ALL_KINDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The store of one contract-fake adapter (the test runs once per adapter)."""
    if request.param in FAKE_KINDS:
        async for backend in _search_engine_backend(request.param):
            yield backend
        return
    async with scratch_database() as url:
        pool = await hologres_pool(url)

        async def new_store() -> VectorStore:
            return HologresVectorStore(pool, upsert_batch_size=200)

        backend = Backend("hologres", await new_store(), new_store, pool=pool)
        try:
            yield backend
        finally:
            for store in [backend.store, *backend.extra_stores]:
                await store.close()
            await pool.close()


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """URL of a fresh, empty PostgreSQL database on the local stack (Hologres' stand-in), dropped
    afterwards. Only the Hologres backend needs one, so the fixture does not take the catalogue's."""
    settings = DatabaseSettings()
    base, _, _ = settings.url.rpartition("/")
    name = f"holo_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(settings.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{base}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def index_name(backend: Backend) -> str:
    """A unique index name (the fake and the test database go away with the test)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    backend.created_indexes.append(name)
    return name


@pytest.fixture
def make_clustered() -> Callable[..., Any]:
    """``clustered(n, dim, clusters, seed, spread=0.35)`` from the shared suite's conftest."""
    return load_shared_module("conftest").clustered  # type: ignore[no-any-return]


@pytest.fixture
def cosine_reference() -> Callable[..., Any]:
    """``brute_force(query, vectors, candidate_rows)`` from the shared suite's conftest."""
    return load_shared_module("conftest").brute_force  # type: ignore[no-any-return]
