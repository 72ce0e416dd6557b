"""The DashScope and PAI-EAS models behind the embedder's EmbeddingModel interface (fake servers)."""

from __future__ import annotations

import contextlib
import uuid

import asyncpg
import numpy as np
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from pymilvus import AsyncMilvusClient

from viewfinder_common.connections.models import ConnectionKind, ConnectionSpec, SecretSpec
from viewfinder_common.connections.secrets import SecretVault
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.settings import MilvusSettings
from viewfinder_common.testing.fake_dashscope import FakeDashScopeServer
from viewfinder_common.testing.fake_pai_eas import FakePaiEasServer
from viewfinder_common.testing.fake_search_engine import Dialect, FakeSearchEngine
from viewfinder_common.vectorstore import (
    INDEX_PREFIX,
    IndexSchema,
    VectorField,
    VectorFilter,
    VectorQuery,
    VectorRow,
    VectorStore,
)
from viewfinder_common.vectorstore.elasticsearch import ElasticsearchSettings, ElasticsearchVectorStore
from viewfinder_common.vectorstore.milvus import MilvusVectorStore
from viewfinder_common.vectorstore.pgvector import PgVectorStore
from viewfinder_embedder.adapters.registries import ModelRegistry, stored_model_loader
from viewfinder_embedder.adapters.remote_models import (
    FIELD_NAME,
    RemoteEmbeddingModel,
    connect_dashscope,
    connect_model,
    connect_pai_eas,
)
from viewfinder_embedder.config import OfflineModelSettings
from viewfinder_embedder.domain.model import ModelError, QueryKind


def _pixels(value: int, side: int = 32) -> np.ndarray:
    image = np.zeros((side, side, 3), dtype=np.uint8)
    image[..., 0] = value
    image[: side // 2, :, 2] = 255 - value
    return image


async def test_dashscope_model_learns_its_dimension_and_embeds_both_kinds() -> None:
    async with FakeDashScopeServer(api_key="k", models={"tongyi-embedding-vision-plus": 1152}) as fake:
        model = await connect_dashscope(
            api_key="k", model="tongyi-embedding-vision-plus", base_url=fake.base_url
        )
        try:
            (field,) = model.fields
            assert (field.name, field.dimension) == (FIELD_NAME, 1152)
            assert field.query_kinds == frozenset({QueryKind.TEXT, QueryKind.IMAGE})
            assert model.identity.id == "dashscope:tongyi-embedding-vision-plus"
            images = await model.embed_images([_pixels(10), _pixels(200), _pixels(10)])
            texts = await model.embed_texts(["red", "blue"])
        finally:
            await model.close()
    assert images[FIELD_NAME].shape == (3, 1152)
    assert images[FIELD_NAME].dtype == np.float32
    assert np.allclose(np.linalg.norm(images[FIELD_NAME], axis=1), 1.0, atol=1e-5)
    assert np.array_equal(images[FIELD_NAME][0], images[FIELD_NAME][2])  # same pixels, same vector
    assert not np.array_equal(images[FIELD_NAME][0], images[FIELD_NAME][1])
    assert texts[FIELD_NAME].shape == (2, 1152)


async def test_pai_eas_model_survives_partial_failures() -> None:
    async with FakePaiEasServer(token="t", dimension=1536) as fake:
        model = await connect_pai_eas(endpoint=fake.endpoint, token="t")
        try:
            fake.flaky_items = {"text:b": 1}
            vectors = await model.embed_texts(["a", "b", "c"])
            assert vectors[FIELD_NAME].shape == (3, 1536)
            assert model.identity.version == "api-1536d"
            fake.flaky_items = {"text:z": 99}
            with pytest.raises(ModelError, match="partial attempts"):
                await model.embed_texts(["z"])
        finally:
            await model.close()


@pytest.mark.parametrize("backend", ["dashscope", "pai-eas"])
async def test_a_small_dataset_indexed_through_a_remote_model_gives_the_same_top_k_in_every_store(
    backend: str, catalogue_db_url: str, unique_name: str
) -> None:
    """Six images embedded through the fake service, written into pgvector and Milvus (real
    servers) and Elasticsearch (contract fake); text and image queries agree everywhere."""
    async with contextlib.AsyncExitStack() as stack:
        if backend == "dashscope":
            dashscope = await stack.enter_async_context(FakeDashScopeServer(api_key="k"))
            model: RemoteEmbeddingModel = await connect_dashscope(
                api_key="k", model="multimodal-embedding-v1", base_url=dashscope.base_url
            )
        else:
            eas = await stack.enter_async_context(FakePaiEasServer(token="t", dimension=1536))
            model = await connect_pai_eas(endpoint=eas.endpoint, token="t")
        stack.push_async_callback(model.close)
        (field,) = model.fields
        images = [_pixels(value) for value in (0, 40, 80, 120, 160, 200)]
        vectors = (await model.embed_images(images))[FIELD_NAME]
        query_text = (await model.embed_texts(["a red photo"]))[FIELD_NAME][0]

        pool = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=2)
        stack.push_async_callback(pool.close)
        milvus_admin = AsyncMilvusClient(uri=MilvusSettings().uri, dedicated=True)

        async def drop_collection() -> None:
            if await milvus_admin.has_collection(INDEX_PREFIX + unique_name):
                await milvus_admin.drop_collection(INDEX_PREFIX + unique_name)
            await milvus_admin.close()

        stack.push_async_callback(drop_collection)
        elastic = await stack.enter_async_context(FakeSearchEngine(Dialect.ELASTICSEARCH))
        stores: dict[str, VectorStore] = {
            "pgvector": PgVectorStore(pool),
            "milvus": MilvusVectorStore(MilvusSettings()),
            "elasticsearch": ElasticsearchVectorStore(
                ElasticsearchSettings(
                    uri=elastic.url, username=elastic.username, password=SecretStr(elastic.password)
                )
            ),
        }
        for store in stores.values():
            stack.push_async_callback(store.close)
        version = str(uuid.uuid4())
        file_ids = [str(uuid.uuid4()) for _ in images]
        rows = [
            VectorRow(
                file_id=file_id, dataset_version_id=version, etag="e", vectors={FIELD_NAME: vector.tolist()}
            )
            for file_id, vector in zip(file_ids, vectors, strict=True)
        ]
        schema = IndexSchema(name=unique_name, fields=[VectorField(FIELD_NAME, field.dimension)])
        results: dict[str, list[list[str]]] = {}
        for name, store in stores.items():
            await store.ensure_index(schema)
            await store.upsert(unique_name, rows)
            hits = []
            for query in (query_text, vectors[2]):
                found = await store.search(
                    unique_name,
                    VectorQuery(
                        FIELD_NAME, query.tolist(), top_k=3, filter=VectorFilter(version), exact=True
                    ),
                )
                hits.append([hit.file_id for hit in found])
            results[name] = hits
    assert results["pgvector"][1][0] == file_ids[2]  # an image finds itself first
    assert len(results["pgvector"][0]) == 3
    assert results["milvus"] == results["pgvector"]
    assert results["elasticsearch"] == results["pgvector"]


async def test_connect_model_builds_the_model_of_a_stored_connection_kind() -> None:
    async with FakeDashScopeServer(api_key="k") as fake:
        model = await connect_model(
            "dashscope_embedding", {"model": "tongyi-embedding-vision-plus", "base_url": fake.base_url}, "k"
        )
        assert [f.dimension for f in model.fields] == [1152]
        await model.close()
    with pytest.raises(ValueError, match="not a remote or directory embedding model"):
        await connect_model("milvus", {"uri": "http://m:19530"}, None)


async def test_the_model_registry_loads_a_connection_stored_through_connection_service(
    catalogue_db_url: str,
) -> None:
    pool = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with FakeDashScopeServer(api_key="k-stored") as fake:
            settings = ConnectionSettings(secret_key=SecretStr(Fernet.generate_key().decode()))
            vault = SecretVault(settings)
            spec = ConnectionSpec(
                name="vision-plus",
                kind=ConnectionKind.DASHSCOPE_EMBEDDING,
                config={"model": "tongyi-embedding-vision-plus", "base_url": fake.base_url},
            )
            ciphertext, reference = vault.seal(SecretSpec(value="k-stored"))
            await ConnectionStore(pool).create(spec, secret_ciphertext=ciphertext, secret_reference=reference)
            registry = ModelRegistry({}, OfflineModelSettings(), stored=stored_model_loader(pool, settings))
            model = await registry.model("vision-plus")
            assert [f.dimension for f in model.fields] == [1152]
            assert await registry.model("vision-plus") is model  # loaded once
            with pytest.raises(KeyError):
                await registry.model("no-such-connection")
            await registry.close()
    finally:
        await pool.close()
