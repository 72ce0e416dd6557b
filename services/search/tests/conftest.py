"""Fixtures of the search tests: the fixture catalogue (``viewfinder_search.testing``)
in a fresh database, its vectors in pgvector, and a running SearchService.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import grpc
import pytest
from pymilvus import AsyncMilvusClient

from viewfinder.v1 import embedding_pb2_grpc, search_pb2_grpc
from viewfinder_common.grpc_server import GrpcServer
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import MilvusSettings, S3Settings
from viewfinder_common.vectorstore import INDEX_PREFIX, IndexSchema, VectorField, VectorRow, VectorStore
from viewfinder_common.vectorstore.milvus import MilvusVectorStore
from viewfinder_common.vectorstore.pgvector import PgVectorStore
from viewfinder_search.adapters.catalogue import SERVER_SETTINGS, PostgresCatalogue
from viewfinder_search.adapters.embedder import EmbedServiceClient
from viewfinder_search.adapters.previews import S3PreviewSigner
from viewfinder_search.domain.engine import Searcher
from viewfinder_search.domain.page_token import PageTokenCodec
from viewfinder_search.domain.planner import PlannerSettings
from viewfinder_search.handlers.grpc_search import SearchServicer
from viewfinder_search.testing import (
    DIM,
    FIELD,
    FILES,
    QUERY_VECTORS,
    SearchStack,
    VectorTableEmbedService,
    insert_catalogue,
)


@pytest.fixture
async def catalogue_pool(catalogue_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    # The connection settings of the service itself (planner costs).
    pool = await asyncpg.create_pool(
        catalogue_db_url, min_size=1, max_size=4, server_settings=SERVER_SETTINGS
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def running_stack(
    pool: asyncpg.Pool, store: VectorStore, unique_name: str
) -> AsyncIterator[SearchStack]:
    """The fixture catalogue in ``pool``, its vectors in ``store``, and a SearchService over them."""
    bucket = f"vf-{unique_name}"
    async with pool.acquire() as conn:
        catalogue = await insert_catalogue(conn, FILES, bucket)
    index = f"idx_{unique_name}"
    await store.ensure_index(IndexSchema(index, [VectorField(FIELD, DIM)]))
    await store.upsert(
        index,
        [
            VectorRow(
                catalogue.file_ids[name],
                catalogue.version_ids[spec.version],
                f"etag-{name}",
                {FIELD: spec.vector},
            )
            for name, spec in FILES.items()
        ],
    )
    embed = VectorTableEmbedService(index, dict(QUERY_VECTORS))
    embed_server = GrpcServer(
        host="127.0.0.1",
        port=0,
        service_names=["viewfinder.v1.EmbedService"],
        registrations=[lambda s: embedding_pb2_grpc.add_EmbedServiceServicer_to_server(embed, s)],
        shutdown_grace_s=0.1,
    )
    embed_port = await embed_server.start()
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{embed_port}") as embed_channel,
        s3_client(S3Settings()) as s3,
    ):
        searcher = Searcher(
            catalogue=PostgresCatalogue(pool),
            embedder=EmbedServiceClient(embed_channel, deadline_s=10),
            vector_store=store,
            signer=S3PreviewSigner(s3, ttl_s=600),
            page_tokens=PageTokenCodec(b"test-key-0123456789abcdef"),
            planner=PlannerSettings(),
        )
        servicer = SearchServicer(searcher)
        server = GrpcServer(
            host="127.0.0.1",
            port=0,
            service_names=["viewfinder.v1.SearchService"],
            registrations=[lambda s: search_pb2_grpc.add_SearchServiceServicer_to_server(servicer, s)],
            shutdown_grace_s=0.1,
        )
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield SearchStack(
                    search_pb2_grpc.SearchServiceStub(channel),
                    catalogue,
                    embed,
                    store,
                    index,
                    pool,
                    f"127.0.0.1:{embed_port}",
                )
        finally:
            await server.stop()
            await embed_server.stop()


@pytest.fixture
async def search_stack(catalogue_pool: asyncpg.Pool, unique_name: str) -> AsyncIterator[SearchStack]:
    """The stack over pgvector in the catalogue's PostgreSQL (the default store)."""
    async with running_stack(catalogue_pool, PgVectorStore(catalogue_pool), unique_name) as stack:
        yield stack


@pytest.fixture
async def milvus_store() -> AsyncIterator[MilvusVectorStore]:
    """A Milvus adapter on the local stack's Milvus Lite server; drops the test's collections."""
    store = MilvusVectorStore(MilvusSettings())
    client = AsyncMilvusClient(uri=MilvusSettings().uri, dedicated=True)
    before = set(await client.list_collections())
    try:
        yield store
    finally:
        await store.close()
        for name in set(await client.list_collections()) - before:
            if name.startswith(INDEX_PREFIX):
                await client.drop_collection(name)
        await client.close()


@pytest.fixture
async def milvus_search_stack(
    catalogue_pool: asyncpg.Pool, milvus_store: MilvusVectorStore, unique_name: str
) -> AsyncIterator[SearchStack]:
    """The same stack with its vectors in Milvus Lite."""
    async with running_stack(catalogue_pool, milvus_store, unique_name) as stack:
        yield stack
