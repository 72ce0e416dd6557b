"""Switching a dataset's indexing connections, on the real stack.

Ingest (the harness), the embedder and search run in this process against
the local stack's PostgreSQL + pgvector, tansu, moto S3 and Milvus Lite. A
dataset indexed in pgvector switches to Milvus: the update starts an index
job into a new index, search keeps answering from the old index during the
build, a file that arrives during the build reaches the new index through the
pipeline, and search answers from the new index once the job has made it active.

The build is held at a chosen point with a real database lock, so the test
decides what "during the build" is: a ``FOR KEY SHARE`` lock on the dataset
row lets every write through except the activation (which locks the row
``FOR UPDATE``); a ``SHARE`` lock on ``embedding_index_files`` stops the job
at its first page.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageDraw

from viewfinder.v1 import (
    common_pb2,
    dataset_pb2,
    embedding_pb2,
    embedding_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from viewfinder_common.app import run_service
from viewfinder_common.connections.models import ConnectionKind, ConnectionSpec
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.settings import DatabaseSettings, KafkaSettings
from viewfinder_common.testing.kafka import create_topics, free_port
from viewfinder_common.testing.polling import eventually
from viewfinder_common.vectorstore import INDEX_PREFIX
from viewfinder_common.vectorstore.factory import VectorStoreSettings
from viewfinder_embedder.adapters.offline_model import OfflineEmbeddingModel
from viewfinder_embedder.config import EmbedderSettings, default_model_cache_dir
from viewfinder_embedder.main import serve as serve_embedder
from viewfinder_ingest.adapters.embedder import EmbedderIndexes
from viewfinder_ingest.handlers.grpc_dataset import DatasetServicer
from viewfinder_search.config import SearchSettings
from viewfinder_search.main import build as build_search

pytestmark = pytest.mark.stack

TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}


@pytest.fixture(scope="module")
def offline_model() -> OfflineEmbeddingModel:
    """The offline model, loaded once for this module's embedder runs."""
    return OfflineEmbeddingModel.load(default_model_cache_dir())


def picture(seed: int) -> bytes:
    """A PNG of coloured shapes, distinct per seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (80, 64), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        box = (x, y, x + int(rng.integers(10, 40)), y + int(rng.integers(10, 30)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@contextlib.asynccontextmanager
async def running(start: Callable[[asyncio.Event], Awaitable[None]], port: int) -> AsyncIterator[None]:
    """Runs a service until the block ends, once its health service says SERVING."""
    stop = asyncio.Event()
    task = asyncio.create_task(start(stop))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            if task.done():
                task.result()
                raise AssertionError("the service stopped during startup")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
            return False

        await eventually(serving, "SERVING")
        yield
    finally:
        stop.set()
        await channel.close()
        await asyncio.wait_for(task, 60)


@dataclass
class System:
    """Ingest, embedder and search on one test database and one bucket."""

    harness: Any
    embed: embedding_pb2_grpc.EmbedServiceStub
    search: search_pb2_grpc.SearchServiceStub
    db_url: str

    async def indexed_dataset(self, name: str, count: int) -> tuple[dataset_pb2.Dataset, str, dict[str, str]]:
        """A dataset of ``count`` pictures, synced and embedded into its first (pgvector) index.

        Returns the dataset, its version id and the file ids by key.
        """
        await self.harness.put_many({f"pics/{n}.png": picture(n) for n in range(count)})
        created = await self.harness.create_dataset(name)
        job = await self.harness.sync(created.dataset.id, common_pb2.JOB_MODE_FULL)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
        await eventually(
            lambda: self.active_rows(created.dataset.id, count), f"{count} files in the first index"
        )
        files = await self.harness.all_files(created.version.id)
        return created.dataset, created.version.id, {f.key: f.id for f in files}

    async def indexes(self, dataset_id: str) -> list[embedding_pb2.Index]:
        """The dataset's indexes, the active one first."""
        reply = await self.embed.ListIndexes(
            embedding_pb2.ListIndexesRequest(dataset_id=dataset_id), timeout=10
        )
        return list(reply.indexes)

    async def active_rows(self, dataset_id: str, count: int) -> bool:
        indexes = await self.indexes(dataset_id)
        return bool(indexes) and indexes[0].active and indexes[0].row_count == count

    async def job(self, job_id: str) -> embedding_pb2.IndexJob:
        """An index job as the embedder reports it."""
        return (await self.embed.GetIndexJob(embedding_pb2.GetIndexJobRequest(job_id=job_id), timeout=10)).job

    async def dataset(self, dataset_id: str) -> dataset_pb2.Dataset:
        reply = await self.harness.stub.GetDataset(
            dataset_pb2.GetDatasetRequest(dataset_id=dataset_id), timeout=10
        )
        return reply.dataset

    async def switch(self, dataset_id: str, **indexing: str) -> dataset_pb2.Dataset:
        """UpdateDataset of the named indexing settings."""
        reply = await self.harness.stub.UpdateDataset(
            dataset_pb2.UpdateDatasetRequest(
                dataset=dataset_pb2.Dataset(id=dataset_id, indexing=dataset_pb2.IndexingSettings(**indexing)),
                update_mask=FieldMask(paths=[f"indexing.{name}" for name in indexing]),
            ),
            timeout=30,
        )
        return reply.dataset

    async def top_hit(self, version_id: str, image: bytes) -> search_pb2.SearchResult:
        """The best image→image match through SearchService."""
        reply = await self.search.Search(
            search_pb2.SearchRequest(dataset_version_id=version_id, image_bytes=image, top_k=3), timeout=30
        )
        assert reply.results, "search found nothing"
        return reply.results[0]

    async def indexed_files(self, index_name: str) -> set[str]:
        """Files whose vectors the embedder recorded in the index."""
        conn = await asyncpg.connect(self.db_url)
        try:
            rows = await conn.fetch(
                "SELECT file_id::text AS id FROM embedding_index_files WHERE index_name = $1", index_name
            )
        finally:
            await conn.close()
        return {row["id"] for row in rows}


@pytest.fixture
async def system(
    make_harness: Any,
    catalogue_db_url: str,
    unique_name: str,
    offline_model: OfflineEmbeddingModel,
    isolated_logging: None,
) -> AsyncIterator[System]:
    embedder_port, search_port = free_port(), free_port()
    harness = await make_harness(embedder_target=f"127.0.0.1:{embedder_port}")
    kafka = KafkaSettings(
        topic_file_discovered=harness.settings.kafka.topic_file_discovered,
        topic_file_embedded=f"{unique_name}.file-embedded",
    )
    await create_topics({kafka.topic_file_embedded: 1, f"{kafka.topic_file_discovered}.dlq.embedder": 1})
    db = DatabaseSettings(url=catalogue_db_url)
    embedder_settings = EmbedderSettings.model_validate(
        {
            "grpc_port": embedder_port,
            "db": db,
            "kafka": kafka,
            "vector_store": VectorStoreSettings(kind="pgvector"),
            "consumer_group": f"{unique_name}-embedder",
            "decode_workers": 1,
            "fetch_concurrency": 4,
            "retry_backoff_s": 0.5,
            "job_poll_interval_s": 0.3,
            "job_page_size": 2,
            "shutdown_grace_s": 1.0,
            "log_json": False,
        }
    )
    search_settings = SearchSettings(
        grpc_port=search_port,
        db=db,
        kafka=kafka,
        embedder_target=f"127.0.0.1:{embedder_port}",
        vectorstore=VectorStoreSettings(kind="pgvector"),
        shutdown_grace_s=1.0,
        log_json=False,
    )

    def embedder(stop: asyncio.Event) -> Awaitable[None]:
        return serve_embedder(stop, embedder_settings, preloaded={"offline": offline_model})

    def search(stop: asyncio.Event) -> Awaitable[None]:
        return run_service(search_settings, build_search, stop)

    async with running(embedder, embedder_port), running(search, search_port):
        embed_channel = grpc.aio.insecure_channel(f"127.0.0.1:{embedder_port}")
        search_channel = grpc.aio.insecure_channel(f"127.0.0.1:{search_port}")
        try:
            yield System(
                harness,
                embedding_pb2_grpc.EmbedServiceStub(embed_channel),
                search_pb2_grpc.SearchServiceStub(search_channel),
                catalogue_db_url,
            )
        finally:
            await embed_channel.close()
            await search_channel.close()


def drop_milvus_collection(index_name: str) -> None:
    """Removes a test's collection from the shared Milvus Lite server."""
    from pymilvus import MilvusClient  # noqa: PLC0415

    client = MilvusClient(uri=VectorStoreSettings().milvus.uri)
    try:
        client.drop_collection(f"{INDEX_PREFIX}{index_name}")
    finally:
        client.close()


async def test_switching_to_milvus_builds_a_new_index_and_search_flips_when_it_is_complete(
    system: System, unique_name: str
) -> None:
    dataset, version_id, file_ids = await system.indexed_dataset(unique_name, 6)
    [old] = await system.indexes(dataset.id)
    assert (old.vector_store_connection, old.row_count) == ("pgvector", 6)
    assert (await system.top_hit(version_id, picture(0))).file_id == file_ids["pics/0.png"]

    gate = await asyncpg.connect(system.db_url)
    held = gate.transaction()
    await held.start()
    new_name = ""
    try:
        # The build may do everything but become active while this lock is held.
        await gate.execute("SELECT 1 FROM datasets WHERE id = $1 FOR KEY SHARE", uuid.UUID(dataset.id))
        switched = await system.switch(dataset.id, vector_store_connection="milvus")
        job_id = switched.indexing.switch_job_id
        assert job_id
        assert (switched.indexing.vector_store_connection, switched.indexing.active_index) == (
            "milvus",
            old.name,
        )

        # Every file is in the new index, but the job has not made it active.
        job = await eventually(
            lambda: _job_with(system, job_id, embedded=6), "the build to embed the six files"
        )
        new_name = job.index_name
        assert job.job.state == common_pb2.JOB_STATE_RUNNING
        assert job.model_connection == old.model_connection
        during = await system.indexes(dataset.id)
        assert [(i.name, i.active, i.vector_store_connection) for i in during] == [
            (old.name, True, "pgvector"),
            (new_name, False, "milvus"),
        ]
        # Search still answers from the old index.
        assert (await system.top_hit(version_id, picture(1))).file_id == file_ids["pics/1.png"]

        # A file that arrives during the build goes into both indexes (the pipeline, not the job).
        await system.harness.put_many({"pics/6.png": picture(6)})
        synced = await system.harness.sync(dataset.id, common_pb2.JOB_MODE_INCREMENTAL)
        assert synced.counts.added == 1
        late = {f.key: f.id for f in await system.harness.all_files(version_id)}["pics/6.png"]

        async def in_both() -> bool:
            return late in await system.indexed_files(old.name) and late in await system.indexed_files(
                new_name
            )

        await eventually(in_both, "the late file in the old and the new index")
        assert (await system.job(job_id)).job.state == common_pb2.JOB_STATE_RUNNING
        assert (await system.top_hit(version_id, picture(6))).file_id == late
    finally:
        await held.rollback()
        await gate.close()

    try:
        done = await eventually(lambda: _terminal(system, job_id), "the switch job to finish")
        assert done.job.state == common_pb2.JOB_STATE_SUCCEEDED, done.job.error
        after = await system.indexes(dataset.id)
        assert [(i.name, i.active, i.vector_store_connection, i.row_count) for i in after] == [
            (new_name, True, "milvus", 7),
            (old.name, False, "pgvector", 7),
        ]
        assert await system.indexed_files(new_name) == await system.indexed_files(old.name)
        shown = await system.dataset(dataset.id)
        assert (shown.indexing.active_index, shown.indexing.switch_job_id) == (new_name, job_id)
        # Search now answers from Milvus: the new index exists nowhere else.
        for seed, expected in ((2, file_ids["pics/2.png"]), (6, late)):
            hit = await system.top_hit(version_id, picture(seed))
            assert hit.file_id == expected
            assert hit.score > 0.99
        # Setting the same connections again changes nothing and starts nothing.
        again = await system.switch(dataset.id, vector_store_connection="milvus")
        assert again.indexing.switch_job_id == job_id
        assert len(await system.indexes(dataset.id)) == 2
    finally:
        if new_name:
            drop_milvus_collection(new_name)


async def test_switching_back_cancels_the_build_and_refused_switches_change_nothing(
    system: System, unique_name: str
) -> None:
    dataset, _, _ = await system.indexed_dataset(unique_name, 4)
    [old] = await system.indexes(dataset.id)
    before = await system.dataset(dataset.id)

    # Connections of the wrong kind, an unknown model connection, an unreachable embedder.
    store = ConnectionStore(system.harness.pool)
    await store.create(
        ConnectionSpec(
            name=f"{unique_name}-db", kind=ConnectionKind.MILVUS, config={"uri": "http://127.0.0.1:1"}
        ),
        secret_ciphertext=None,
        secret_reference=None,
    )
    await store.create(
        ConnectionSpec(
            name=f"{unique_name}-chat",
            kind=ConnectionKind.OPENAI_CHAT,
            config={"base_url": "http://127.0.0.1:1", "model": "qwen-vl-max"},
        ),
        secret_ciphertext=None,
        secret_reference=None,
    )
    for indexing, code, text in [
        (
            {"model_connection": f"{unique_name}-db"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "is a milvus connection",
        ),
        ({"model_connection": f"{unique_name}-chat"}, grpc.StatusCode.INVALID_ARGUMENT, "embedding model"),
        (
            {"vector_store_connection": f"{unique_name}-chat"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "must name a vector database",
        ),
        ({"model_connection": "no-such-model"}, grpc.StatusCode.INVALID_ARGUMENT, "no-such-model"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await system.switch(dataset.id, **indexing)
        assert refused.value.code() == code, refused.value.details()
        assert text in (refused.value.details() or "")
    unreachable = DatasetServicer(
        system.harness.parts.catalogue,
        system.harness.parts.store,
        system.harness.parts.runner,
        version_file_limit=100,
        stored_connections=store,
        indexes=EmbedderIndexes(
            grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}"), target="nowhere", deadline_s=2
        ),
    )
    with pytest.raises(Exception, match="could not list the dataset's indexes") as down:
        await unreachable.UpdateDataset(
            dataset_pb2.UpdateDatasetRequest(
                dataset=dataset_pb2.Dataset(
                    id=dataset.id, indexing=dataset_pb2.IndexingSettings(vector_store_connection="milvus")
                ),
                update_mask=FieldMask(paths=["indexing.vector_store_connection"]),
            ),
            None,
        )
    assert getattr(down.value, "status", None) == grpc.StatusCode.UNAVAILABLE
    assert (await system.dataset(dataset.id)).indexing == before.indexing
    assert [i.name for i in await system.indexes(dataset.id)] == [old.name]

    # A switch whose job is held at its first page, then a switch back.
    gate = await asyncpg.connect(system.db_url)
    held = gate.transaction()
    await held.start()
    new_name = ""
    try:
        await gate.execute("LOCK TABLE embedding_index_files IN SHARE MODE")
        switched = await system.switch(dataset.id, vector_store_connection="milvus")
        job_id = switched.indexing.switch_job_id
        running_job = await eventually(
            lambda: _job_in(system, job_id, common_pb2.JOB_STATE_RUNNING), "the switch job to start"
        )
        new_name = running_job.index_name
        back = await system.switch(dataset.id, vector_store_connection="pgvector")
        assert (back.indexing.vector_store_connection, back.indexing.switch_job_id) == ("pgvector", "")
        assert (await system.job(job_id)).job.state == common_pb2.JOB_STATE_CANCELLING
    finally:
        await held.rollback()
        await gate.close()
    try:
        done = await eventually(lambda: _terminal(system, job_id), "the cancelled job to stop")
        assert done.job.state == common_pb2.JOB_STATE_CANCELLED
        after = await system.indexes(dataset.id)
        assert [(i.name, i.active) for i in after] == [(old.name, True), (new_name, False)]
        assert (await system.dataset(dataset.id)).indexing.active_index == old.name
        # The abandoned build no longer receives new files.
        conn = await asyncpg.connect(system.db_url)
        try:
            state = await conn.fetchval("SELECT state FROM embedding_indexes WHERE name = $1", new_name)
        finally:
            await conn.close()
        assert state == "failed"
    finally:
        if new_name:
            drop_milvus_collection(new_name)


async def _job_with(system: System, job_id: str, *, embedded: int) -> embedding_pb2.IndexJob | None:
    job = await system.job(job_id)
    return job if job.counts.embedded + job.counts.skipped >= embedded else None


async def _job_in(system: System, job_id: str, state: int) -> embedding_pb2.IndexJob | None:
    job = await system.job(job_id)
    return job if job.job.state == state else None


async def _terminal(system: System, job_id: str) -> embedding_pb2.IndexJob | None:
    job = await system.job(job_id)
    return job if job.job.state in TERMINAL else None
