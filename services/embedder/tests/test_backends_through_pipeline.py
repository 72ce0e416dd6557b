"""Every embedding backend into every vector store, through the embedder's real file-discovered pipeline.

Connections are stored the way ConnectionService stores them (validated,
secret sealed with the configured key) and datasets pick them by name in
their indexing settings. Embedding backends: the DashScope multimodal-embedding
fake and the PAI-EAS GME fake (real HTTP servers), a tiny random CLIP
directory in the transformers layout and one in the open_clip layout, and the
offline default. Vector stores: pgvector and the Milvus Lite server (real),
Elasticsearch, OpenSearch and Lindorm (the contract-checking HTTP fake) and
Hologres (its SQL shim on the real PostgreSQL).

One embedder run (one consumer-group join) indexes a dataset per (backend,
store) pair from ``file-discovered`` events. Then every file has exactly one
row in its store, and an image query and a text query give the same top-k,
in the same order with the same scores, through every store: the top-k that
a brute-force cosine over the backend's own vectors (from EmbedService)
gives. Four more datasets name connections that cannot serve them (an
unknown model, a model connection as vector store, a DashScope key the service
refuses, a missing CLIP directory): their files are dead-lettered with the
reason, which shows no secret. A last test checks how the store registry
resolves names (the configured kind, stored connections, unknown names).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from pymilvus import MilvusClient

from viewfinder.v1 import embedding_pb2, events_pb2
from viewfinder_common.connections.models import ConnectionKind, ConnectionSpec, SecretSpec, validate_spec
from viewfinder_common.connections.secrets import SecretVault
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.errors import NotFound
from viewfinder_common.events import decode_event
from viewfinder_common.kafka import DLQ_REASON
from viewfinder_common.settings import MilvusSettings
from viewfinder_common.testing import hologres_shim
from viewfinder_common.testing.fake_dashscope import FakeDashScopeServer
from viewfinder_common.testing.fake_pai_eas import FakePaiEasServer
from viewfinder_common.testing.fake_search_engine import Dialect, FakeSearchEngine
from viewfinder_common.vectorstore import INDEX_PREFIX, VectorFilter, VectorQuery, VectorStore
from viewfinder_common.vectorstore.factory import VectorStoreSettings, stored_vector_store_opener
from viewfinder_common.vectorstore.registry import VectorStoreRegistry
from viewfinder_embedder.domain.indexes import default_index_name

pytestmark = pytest.mark.stack

MODELS = ["dashscope", "pai-eas-gme", "clip-transformers", "clip-open-clip", "offline-default"]
STORES = ["pgvector", "milvus", "elasticsearch", "opensearch", "lindorm", "hologres"]
IMAGES = 4
TOP_K = 3
QUERY_TEXT = "a photo of red cat"
DASHSCOPE_KEY = "sk-dashscope-pipeline-key"
EAS_TOKEN = "eas-pipeline-token"
WRONG_KEY = "sk-not-the-dashscope-key"
HOLOGRES_SECRET = "hologres-access-key-secret"  # the shim's PostgreSQL trusts loopback: any value logs in


@dataclasses.dataclass
class Backends:
    """The running fakes and the settings that open the stored connections' secrets."""

    connections: ConnectionSettings
    engines: dict[str, FakeSearchEngine]
    model_ids: dict[str, str]
    secrets: list[str]


@dataclasses.dataclass
class Indexed:
    """One dataset of the matrix: its catalogue rows and its files in image order."""

    catalogue: Any
    file_ids: list[str]

    @property
    def index(self) -> str:
        """The default index the pipeline creates for the dataset."""
        return default_index_name(self.catalogue.dataset_id)


async def _add_dataset(catalogue: Any, name: str, indexing: dict[str, str]) -> Any:
    """A dataset with one version and the given indexing settings, sharing the test's bucket."""
    (dataset,) = await catalogue.fetch(
        "INSERT INTO datasets (name, bucket, indexing) VALUES ($1, $2, $3::jsonb) RETURNING id::text AS id",
        name,
        catalogue.bucket,
        json.dumps(indexing),
    )
    (version,) = await catalogue.fetch(
        "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1::uuid, 1) RETURNING id::text AS id",
        dataset["id"],
    )
    return dataclasses.replace(catalogue, dataset_id=dataset["id"], version_id=version["id"])


async def _store_connections(
    url: str, settings: ConnectionSettings, specs: list[tuple[ConnectionSpec, str | None]]
) -> None:
    """Stores connections as ConnectionService.CreateConnection does: validate, seal, insert."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    vault, store = SecretVault(settings), ConnectionStore(pool)
    try:
        for spec, secret in specs:
            secret_spec = SecretSpec(value=secret) if secret else None
            ciphertext, reference = vault.seal(secret_spec) if secret_spec else (None, None)
            await store.create(
                validate_spec(spec, secret_spec), secret_ciphertext=ciphertext, secret_reference=reference
            )
    finally:
        await pool.close()


@asynccontextmanager
async def _backends(
    catalogue: Any, directory: Path, helpers: Any, offline_id: str
) -> AsyncIterator[Backends]:
    """Starts the fakes, writes both CLIP directories, installs the Hologres shim in the test
    database, and stores one connection per backend (named as in MODELS) and per store
    (``vs-<kind>``: the service's own ``pgvector`` / ``milvus`` names would shadow them)."""
    clip_dir, open_clip_dir = directory / "clip-hf", directory / "clip-oc"
    clip_dir.mkdir()
    open_clip_dir.mkdir()
    await asyncio.to_thread(helpers.save_tiny_clip, clip_dir)
    await asyncio.to_thread(helpers.save_tiny_open_clip, open_clip_dir)
    conn = await asyncpg.connect(catalogue.url)
    try:
        await hologres_shim.install(conn)
    finally:
        await conn.close()
    database = urlsplit(catalogue.url)
    postgres = {
        "host": database.hostname,
        "port": database.port or 5432,
        "database": database.path.lstrip("/"),
    }
    settings = ConnectionSettings(secret_key=SecretStr(Fernet.generate_key().decode()))
    async with AsyncExitStack() as stack:
        dashscope = await stack.enter_async_context(FakeDashScopeServer(api_key=DASHSCOPE_KEY))
        eas = await stack.enter_async_context(FakePaiEasServer(token=EAS_TOKEN))
        engines = {
            kind: await stack.enter_async_context(FakeSearchEngine(Dialect(kind)))
            for kind in ("elasticsearch", "opensearch", "lindorm")
        }
        kinds = ConnectionKind
        specs: list[tuple[ConnectionSpec, str | None]] = [
            (
                ConnectionSpec(
                    "dashscope",
                    kinds.DASHSCOPE_EMBEDDING,
                    {"model": "tongyi-embedding-vision-plus", "base_url": dashscope.base_url},
                ),
                DASHSCOPE_KEY,
            ),
            (ConnectionSpec("pai-eas-gme", kinds.PAI_EAS, {"endpoint": eas.endpoint}), EAS_TOKEN),
            (ConnectionSpec("clip-transformers", kinds.LOCAL_MODEL_DIRECTORY, {"path": str(clip_dir)}), None),
            (
                ConnectionSpec("clip-open-clip", kinds.LOCAL_MODEL_DIRECTORY, {"path": str(open_clip_dir)}),
                None,
            ),
            (ConnectionSpec("offline-default", kinds.OFFLINE_DEFAULT), None),
            (
                ConnectionSpec(
                    "dashscope-wrong-key",
                    kinds.DASHSCOPE_EMBEDDING,
                    {"model": "tongyi-embedding-vision-plus", "base_url": dashscope.base_url},
                ),
                WRONG_KEY,
            ),
            (
                ConnectionSpec(
                    "missing-directory", kinds.LOCAL_MODEL_DIRECTORY, {"path": str(directory / "missing")}
                ),
                None,
            ),
            (ConnectionSpec("vs-pgvector", kinds.PGVECTOR, {**postgres, "user": database.username}), None),
            (ConnectionSpec("vs-milvus", kinds.MILVUS, {"uri": MilvusSettings().uri}), None),
            (
                ConnectionSpec(
                    "vs-hologres", kinds.HOLOGRES, {**postgres, "access_key_id": database.username}
                ),
                HOLOGRES_SECRET,
            ),
            *[
                (
                    ConnectionSpec(f"vs-{kind}", kinds(kind), {"uri": fake.url, "username": fake.username}),
                    fake.password,
                )
                for kind, fake in engines.items()
            ],
        ]
        await _store_connections(catalogue.url, settings, specs)
        yield Backends(
            settings,
            engines,
            model_ids={
                "dashscope": "dashscope:tongyi-embedding-vision-plus",
                "pai-eas-gme": "pai-eas:pai-multimodal-embedding-v1",
                "clip-transformers": f"clip-directory:{clip_dir.name}",
                "clip-open-clip": f"open-clip-directory:{open_clip_dir.name}",
                "offline-default": offline_id,
            },
            secrets=[
                DASHSCOPE_KEY,
                EAS_TOKEN,
                HOLOGRES_SECRET,
                *(fake.password for fake in engines.values()),
            ],
        )


@dataclasses.dataclass
class Query:
    """A query vector in one field, and the top-k a brute-force cosine gives over the model's vectors."""

    kind: str
    field: str
    vector: list[float]
    expected: list[tuple[int, float]]  # (image number, cosine), best first


async def _queries(embedder: Any, indexed: Indexed, keys: list[str]) -> list[Query]:
    """An image query (the first image) and a text query, with the model's own vectors of every image."""
    bucket = indexed.catalogue.bucket
    dataset_id = indexed.catalogue.dataset_id

    async def image_vectors(key: str, fields: list[str]) -> dict[str, list[float]]:
        reply = await embedder.stub.EmbedImage(
            embedding_pb2.EmbedImageRequest(
                dataset_id=dataset_id, image_uri=f"s3://{bucket}/{key}", vector_fields=fields
            ),
            timeout=60,
        )
        return {named.field: list(named.values) for named in reply.vectors}

    text = await embedder.stub.EmbedText(
        embedding_pb2.EmbedTextRequest(dataset_id=dataset_id, text=QUERY_TEXT), timeout=60
    )
    (text_vector,) = text.vectors
    (image_field, image_query), *_ = (await image_vectors(keys[0], [])).items()
    fields = sorted({image_field, text_vector.field})
    per_image = [await image_vectors(key, fields) for key in keys]
    queries = []
    for kind, field, vector in [
        ("image", image_field, image_query),
        ("text", text_vector.field, list(text_vector.values)),
    ]:
        matrix = np.asarray([vectors[field] for vectors in per_image], dtype=np.float64)
        query = np.asarray(vector, dtype=np.float64)
        cosine = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
        order = np.argsort(-cosine)[:TOP_K]
        queries.append(Query(kind, field, vector, [(int(i), float(cosine[i])) for i in order]))
    return queries


async def _drop_milvus_collections(names: list[str]) -> None:
    """The Milvus Lite server is shared: leave no collection behind."""

    def drop() -> None:
        client = MilvusClient(uri=MilvusSettings().uri)
        try:
            for name in names:
                if client.has_collection(name):
                    client.drop_collection(name)
        finally:
            client.close()

    await asyncio.to_thread(drop)


async def test_every_backend_indexes_into_every_store_through_the_pipeline_with_the_same_top_k(
    catalogue: Any,
    bucket: Any,
    start_embedder: Any,
    helpers: Any,
    offline_model: Any,
    tmp_path: Path,
) -> None:
    keys = [f"matrix/{n}.png" for n in range(IMAGES)]
    etags = [await bucket(key, helpers.image_bytes(40 + n)) for n, key in enumerate(keys)]
    key_of_image = {key: n for n, key in enumerate(keys)}
    matrix: dict[tuple[str, str], Indexed] = {}
    milvus_collections: list[str] = []
    async with _backends(catalogue, tmp_path, helpers, offline_model.identity.id) as backends:
        events = []
        for model in MODELS:
            for store in STORES:
                dataset = await _add_dataset(
                    catalogue,
                    f"{model}-{store}",
                    {"model_connection": model, "vector_store_connection": f"vs-{store}"},
                )
                file_ids = await dataset.add_files(list(zip(keys, etags, strict=True)))
                matrix[model, store] = indexed = Indexed(dataset, file_ids)
                if store == "milvus":
                    milvus_collections.append(INDEX_PREFIX + indexed.index)
                events += [
                    helpers.discovered(dataset, file_id, key, etag)
                    for file_id, key, etag in zip(file_ids, keys, etags, strict=True)
                ]
        refused = []
        expected_reasons = {}  # file id -> the dead letter's reason
        for model, store, reason in [
            (
                "no-such-model",
                "vs-pgvector",
                r"no model connection named 'no-such-model' is configured or stored",
            ),
            (
                "dashscope",
                "dashscope",
                r"connection 'dashscope' is a dashscope_embedding connection, not a vector store",
            ),
            (
                "dashscope-wrong-key",
                "vs-pgvector",
                r"model connection 'dashscope-wrong-key' was refused by its service: .*401.*",
            ),
            (
                "missing-directory",
                "vs-pgvector",
                r"model connection 'missing-directory' cannot be loaded: model directory .*/missing does not exist",
            ),
        ]:
            dataset = await _add_dataset(
                catalogue, f"refused-{model}", {"model_connection": model, "vector_store_connection": store}
            )
            (file_id,) = await dataset.add_files([(keys[0], etags[0])])
            refused.append(helpers.discovered(dataset, file_id, keys[0], etags[0]))
            expected_reasons[file_id] = reason

        pool = await asyncpg.create_pool(catalogue.url, min_size=1, max_size=4)
        assert pool is not None
        open_store = stored_vector_store_opener(pool, backends.connections, VectorStoreSettings())
        stores: dict[str, VectorStore] = {}
        try:
            async with start_embedder(connections=backends.connections) as embedder:
                await embedder.publish([*events, *refused])
                embedded = [
                    decode_event(events_pb2.FileEmbedded, record.value)
                    for record in await helpers.read_topic(
                        embedder.embedded_topic, len(events), timeout_s=240
                    )
                ]
                dead = await helpers.read_topic(embedder.dlq_topic, len(refused), timeout_s=30)

                # Every file of every pair was embedded once, with the pair's model, into its index.
                assert len(embedded) == len(events)
                by_dataset: dict[str, list[events_pb2.FileEmbedded]] = {}
                for event in embedded:
                    by_dataset.setdefault(event.dataset_id, []).append(event)
                for (model, store), indexed in matrix.items():
                    got = by_dataset.get(indexed.catalogue.dataset_id, [])
                    assert sorted(e.file_id for e in got) == sorted(indexed.file_ids), (model, store)
                    assert {e.index_name for e in got} == {indexed.index}, (model, store)
                    assert {e.model_id for e in got} == {backends.model_ids[model]}, (model, store)
                    fields = ("visual", "semantic") if model == "offline-default" else ("embedding",)
                    assert {tuple(e.vector_fields) for e in got} == {fields}, (model, store)

                # Datasets naming connections that cannot serve them: dead letters with the reason.
                reasons = {
                    record.key.decode(): {k: v.decode() for k, v in record.headers or []}[DLQ_REASON]
                    for record in dead
                }
                assert len(dead) == len(refused)
                assert set(reasons) == set(expected_reasons)
                for file_id, reason in reasons.items():
                    assert re.fullmatch(expected_reasons[file_id], reason), reason
                    assert not any(secret in reason for secret in backends.secrets)

                queries = {
                    model: await _queries(embedder, matrix[model, "pgvector"], keys) for model in MODELS
                }

            for store in STORES:
                stores[store] = await open_store(f"vs-{store}")
            for (model, store), indexed in matrix.items():
                version = VectorFilter(dataset_version_id=indexed.catalogue.version_id)
                key_of = dict(zip(indexed.file_ids, keys, strict=True))
                assert await stores[store].count(indexed.index, version) == IMAGES, (model, store)
                for query in queries[model]:
                    hits = await stores[store].search(
                        indexed.index, VectorQuery(query.field, query.vector, TOP_K, version)
                    )
                    found = [(key_of_image[key_of[hit.file_id]], hit.score) for hit in hits]
                    where = (model, store, query.kind)
                    assert [n for n, _ in found] == [n for n, _ in query.expected], where
                    assert np.allclose([s for _, s in found], [s for _, s in query.expected], atol=2e-3), (
                        where
                    )
                everything = await stores[store].search(
                    indexed.index,
                    VectorQuery(queries[model][0].field, queries[model][0].vector, 10, version, exact=True),
                )
                assert sorted(hit.file_id for hit in everything) == sorted(indexed.file_ids), (model, store)
            # An image query finds that image first, whatever the backend.
            assert all(q[0].expected[0][0] == 0 and q[0].expected[0][1] > 0.999 for q in queries.values())
            for kind, engine in backends.engines.items():
                assert engine.rejections == [], f"the {kind} adapter sent requests the vendor's API rejects"
        finally:
            for store_client in stores.values():
                await store_client.close()
            await pool.close()
            await _drop_milvus_collections(milvus_collections)


async def test_the_configured_store_kind_is_a_connection_and_unknown_names_are_not_found(
    catalogue_db_url: str,
) -> None:
    pool = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=1)
    assert pool is not None
    try:
        # VIEWFINDER_VECTORSTORE_KIND=elasticsearch makes "elasticsearch" the default store connection.
        registry = VectorStoreRegistry(VectorStoreSettings(kind="elasticsearch"), pool)
        assert registry.has_connection("elasticsearch")
        assert registry.has_connection("pgvector")
        assert not registry.has_connection("vs-elasticsearch")  # no stored connections to look in
        with pytest.raises(NotFound, match="no vector store connection named 'vs-elasticsearch'"):
            await registry.store("vs-elasticsearch")
        await registry.close()

        opener = stored_vector_store_opener(pool, ConnectionSettings(), VectorStoreSettings())
        stored = VectorStoreRegistry(VectorStoreSettings(), pool, stored=opener)
        assert stored.has_connection("vs-anything")  # stored connections are found on first use
        with pytest.raises(
            NotFound, match="no vector store connection named 'vs-anything' is configured or stored"
        ):
            await stored.store("vs-anything")
        await stored.close()
    finally:
        await pool.close()
