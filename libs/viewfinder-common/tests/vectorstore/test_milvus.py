"""What only the Milvus adapter has: collection validation, load state, the brute-force exact path."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from pymilvus import AsyncMilvusClient, DataType, MilvusClient

from viewfinder_common.settings import MilvusSettings
from viewfinder_common.vectorstore import (
    IndexSchema,
    InvalidVectorInput,
    SchemaMismatch,
    VectorField,
    VectorFilter,
    VectorQuery,
    VectorRow,
)
from viewfinder_common.vectorstore import milvus as milvus_adapter
from viewfinder_common.vectorstore.milvus import MilvusVectorStore, filter_expression, string_literal

pytestmark = pytest.mark.stack


@pytest.fixture
async def client() -> AsyncIterator[AsyncMilvusClient]:
    client = AsyncMilvusClient(uri=MilvusSettings().uri, dedicated=True)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def name(client: AsyncMilvusClient) -> AsyncIterator[str]:
    """A unique index name; its collection is dropped afterwards."""
    index = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield index
    finally:
        if await client.has_collection(f"vf_index_{index}"):
            await client.drop_collection(f"vf_index_{index}")


@pytest.fixture
async def store() -> AsyncIterator[MilvusVectorStore]:
    store = MilvusVectorStore(MilvusSettings(), upsert_batch_size=300)
    try:
        yield store
    finally:
        await store.close()


async def create_their_collection(
    client: AsyncMilvusClient,
    collection: str,
    *,
    etag_type: DataType = DataType.VARCHAR,
    own_primary_key: bool = False,
    metric: str | None = "COSINE",
) -> None:
    """A collection made outside viewfinder, optionally with an index of the given metric
    and with an auto-generated INT64 primary key of its own instead of ``file_id``."""
    schema = AsyncMilvusClient.create_schema(auto_id=own_primary_key, enable_dynamic_field=False)
    if own_primary_key:
        schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("file_id", DataType.VARCHAR, is_primary=not own_primary_key, max_length=64)
    schema.add_field("dataset_version_id", DataType.VARCHAR, max_length=64)
    if etag_type == DataType.VARCHAR:
        schema.add_field("etag", DataType.VARCHAR, max_length=256)
    else:
        schema.add_field("etag", etag_type)
    schema.add_field("visual", DataType.FLOAT_VECTOR, dim=8)
    await client.create_collection(collection, schema=schema)
    if metric is not None:
        params = MilvusClient.prepare_index_params()
        params.add_index(field_name="visual", index_type="HNSW", metric_type=metric, params={"M": 8})

        def create() -> None:
            sync_client = MilvusClient(uri=MilvusSettings().uri)
            try:
                sync_client.create_index(collection, params, sync=False)
            finally:
                sync_client.close()

        await asyncio.get_running_loop().run_in_executor(None, create)


def rows_of(vectors: Any, version: str) -> list[VectorRow]:
    return [VectorRow(str(uuid.uuid4()), version, "e", {"visual": list(map(float, v))}) for v in vectors]


def test_string_literals_are_escaped() -> None:
    assert string_literal('a"b') == '"a\\"b"'
    assert string_literal("a\\b\nc") == '"a\\\\b\\nc"'
    version = str(uuid.uuid4())
    assert filter_expression(version.upper(), [version]) == (
        f'dataset_version_id == "{version}" and file_id in ["{version}"]'
    )
    with pytest.raises(InvalidVectorInput, match="not a UUID"):
        filter_expression(version, ['x" or file_id != "'])


async def test_a_collection_indexed_with_another_metric_is_rejected(
    client: AsyncMilvusClient, store: MilvusVectorStore, name: str
) -> None:
    await create_their_collection(client, f"vf_index_{name}", metric="L2")
    with pytest.raises(SchemaMismatch, match=r"'visual' is indexed with metric L2"):
        await store.ensure_index(IndexSchema(name, [VectorField("visual", 8)]))


async def test_a_collection_with_other_fields_is_rejected_field_by_field(
    client: AsyncMilvusClient, store: MilvusVectorStore, name: str
) -> None:
    await create_their_collection(client, f"vf_index_{name}", etag_type=DataType.INT64, own_primary_key=True)
    with pytest.raises(SchemaMismatch) as caught:
        await store.ensure_index(IndexSchema(name, [VectorField("visual", 8), VectorField("semantic", 4)]))
    message = str(caught.value)
    for problem in (
        "field 'etag' is INT64, expected VARCHAR",
        "field 'semantic' is missing",
        "the primary key is ['id'], expected 'file_id'",
        "the primary key is auto-generated",
    ):
        assert problem in message


async def test_a_fitting_collection_without_an_index_gets_one_and_is_loaded(
    client: AsyncMilvusClient, store: MilvusVectorStore, name: str
) -> None:
    await create_their_collection(client, f"vf_index_{name}", metric=None)
    await store.ensure_index(IndexSchema(name, [VectorField("visual", 8)]))
    described = await client.describe_index(
        f"vf_index_{name}", (await client.list_indexes(f"vf_index_{name}"))[0]
    )
    assert described["metric_type"] == "COSINE"
    version = str(uuid.uuid4())
    rows = rows_of(np.eye(8), version)
    await store.upsert(name, rows)
    hits = await store.search(name, VectorQuery("visual", np.eye(8)[4].tolist(), 1, VectorFilter(version)))
    assert [h.file_id for h in hits] == [rows[4].file_id]


async def test_a_released_collection_is_loaded_again(
    client: AsyncMilvusClient, store: MilvusVectorStore, name: str
) -> None:
    """What a server restart looks like to a running service: the collection is not loaded."""
    await store.ensure_index(IndexSchema(name, [VectorField("visual", 8)]))
    version = str(uuid.uuid4())
    rows = rows_of(np.eye(8), version)
    await store.upsert(name, rows)
    await client.release_collection(f"vf_index_{name}")
    hits = await store.search(name, VectorQuery("visual", np.eye(8)[2].tolist(), 1, VectorFilter(version)))
    assert [h.file_id for h in hits] == [rows[2].file_id]
    assert (await client.get_load_state(f"vf_index_{name}"))["state"].name == "Loaded"


async def test_exact_search_never_asks_the_ann_index_and_pages_large_versions(
    store: MilvusVectorStore, name: str, monkeypatch: pytest.MonkeyPatch, cosine_reference: Any
) -> None:
    """A tiny query window forces the version scan to split by file-id prefix (twice)."""
    await store.ensure_index(IndexSchema(name, [VectorField("visual", 8)]))
    version = str(uuid.uuid4())
    vectors = np.random.default_rng(8).standard_normal((700, 8)).astype(np.float32)
    rows = rows_of(vectors, version) + rows_of(vectors[:50], str(uuid.uuid4()))
    await store.upsert(name, rows)
    monkeypatch.setattr(milvus_adapter, "QUERY_WINDOW", 30)
    ann_calls = 0
    real_search = store._client.search

    async def counting_search(*args: Any, **kwargs: Any) -> Any:
        nonlocal ann_calls
        ann_calls += 1
        return await real_search(*args, **kwargs)

    monkeypatch.setattr(store._client, "search", counting_search)
    target = np.random.default_rng(9).standard_normal(8)
    hits = await store.search(
        name, VectorQuery("visual", target.tolist(), 25, VectorFilter(version), exact=True)
    )
    truth = cosine_reference(target, vectors, np.arange(700))
    expected = sorted(truth, key=lambda i: -truth[i])[:25]
    assert [h.file_id for h in hits] == [rows[i].file_id for i in expected]
    assert [round(h.score, 6) for h in hits] == [round(truth[i], 6) for i in expected]
    assert ann_calls == 0


async def test_a_short_ann_answer_is_completed_by_the_exact_path(
    store: MilvusVectorStore, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus Lite's filtered HNSW did not come back short at test sizes, so the server's
    real answer is cut to what a post-filtered walk returns on a large collection."""
    await store.ensure_index(IndexSchema(name, [VectorField("visual", 8)]))
    version = str(uuid.uuid4())
    vectors = np.random.default_rng(10).standard_normal((300, 8))
    rows = rows_of(vectors, version)
    await store.upsert(name, rows)
    real_search = store._client.search

    async def short_search(*args: Any, **kwargs: Any) -> Any:
        result = await real_search(*args, **kwargs)
        return [hits[:3] for hits in result]

    monkeypatch.setattr(store._client, "search", short_search)
    query = VectorQuery("visual", vectors[0].tolist(), 20, VectorFilter(version))
    hits = await store.search(name, query)
    assert len(hits) == 20
    assert hits[0].file_id == rows[0].file_id
