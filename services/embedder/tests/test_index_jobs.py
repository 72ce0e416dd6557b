"""Index job cancel and resume on the real catalogue, bucket and pgvector (worker driven step by step)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from viewfinder.v1 import events_pb2
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import S3Settings
from viewfinder_common.vectorstore import VectorFilter
from viewfinder_common.vectorstore.factory import VectorStoreSettings
from viewfinder_common.vectorstore.registry import VectorStoreRegistry
from viewfinder_embedder.adapters.catalogue import PgIndexCatalogue
from viewfinder_embedder.adapters.decode_pool import ProcessPoolDecoder
from viewfinder_embedder.adapters.jobs import PgIndexJobStore
from viewfinder_embedder.adapters.objects import S3ObjectReader
from viewfinder_embedder.adapters.registries import ModelRegistry
from viewfinder_embedder.config import EmbedderSettings
from viewfinder_embedder.domain.file_embedder import FileEmbedder
from viewfinder_embedder.domain.index_jobs import IndexJobRunner, JobMode, JobState
from viewfinder_embedder.domain.indexes import IndexDirectory, default_index_name
from viewfinder_embedder.domain.job_requests import IndexJobService, StartIndexJob
from viewfinder_embedder.domain.ports import DeadLetter

pytestmark = pytest.mark.stack


class RecordingSink:
    """Keeps published events; calls ``on_publish`` after each batch (to cancel mid-job)."""

    def __init__(self) -> None:
        self.embedded: list[events_pb2.FileEmbedded] = []
        self.on_publish: Any = None

    async def publish_embedded(self, events: Sequence[events_pb2.FileEmbedded]) -> None:
        self.embedded.extend(events)
        if self.on_publish is not None:
            await self.on_publish()

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        raise AssertionError("index jobs record failures on the job, not as dead letters")


@dataclass
class Worker:
    jobs: PgIndexJobStore
    runner: IndexJobRunner
    service: IndexJobService
    sink: RecordingSink
    directory: IndexDirectory


@pytest.fixture
async def worker(catalogue: Any, offline_model: Any) -> AsyncIterator[Worker]:
    settings = EmbedderSettings()
    pool = await asyncpg.create_pool(catalogue.url, min_size=1, max_size=4)
    decoder = ProcessPoolDecoder(workers=1, max_pixels=settings.max_image_pixels)
    stores = VectorStoreRegistry(VectorStoreSettings(kind="pgvector"), pool)
    try:
        async with s3_client(S3Settings()) as s3:
            directory = IndexDirectory(
                PgIndexCatalogue(pool),
                ModelRegistry({}, settings.offline_model, preloaded={"offline": offline_model}),
                stores,
                default_model_connection="offline",
                default_store_connection="pgvector",
            )
            sink = RecordingSink()
            jobs = PgIndexJobStore(pool)
            runner = IndexJobRunner(
                jobs,
                directory,
                FileEmbedder(S3ObjectReader(s3, max_bytes=1 << 20), decoder, batch_size=4),
                sink,
                page_size=2,
                default_concurrency=2,
                poll_interval_s=60,
                stale_after_s=300,
            )
            yield Worker(jobs, runner, IndexJobService(jobs, runner, directory, jobs), sink, directory)
    finally:
        await stores.close()
        decoder.close()
        await pool.close()


def _request(catalogue: Any, mode: JobMode = JobMode.FULL) -> StartIndexJob:
    return StartIndexJob(
        dataset_version_id=catalogue.version_id,
        index_name="",
        model_connection="",
        vector_store_connection="",
        mode=mode,
        max_concurrency=0,
        activate_on_success=False,
    )


async def test_cancelled_job_resumes_after_its_last_finished_page(
    catalogue: Any, bucket: Any, worker: Worker, helpers: Any
) -> None:
    keys = [f"k/{n}.png" for n in range(6)]
    etags = [await bucket(key, helpers.image_bytes(200 + n)) for n, key in enumerate(keys)]
    await catalogue.add_files(list(zip(keys, etags, strict=True)))

    # A pending job cancelled before any worker takes it: CANCELLED at once, nothing embedded.
    pending = await worker.service.start(_request(catalogue))
    assert pending.max_concurrency == 2  # the service default
    cancelled = await worker.service.cancel(pending.id)
    assert cancelled.state is JobState.CANCELLED
    assert not await worker.runner.run_next()

    # Resume it; cancel while its first page is being published.
    resumed = await worker.service.resume(pending.id)
    assert resumed.state is JobState.PENDING
    assert resumed.resume_count == 1

    async def cancel_once() -> None:
        worker.sink.on_publish = None
        requested = await worker.service.cancel(pending.id)
        assert requested.state is JobState.RUNNING
        assert requested.cancel_requested

    worker.sink.on_publish = cancel_once
    assert await worker.runner.run_next()
    job = await worker.service.get(pending.id)
    assert job.state is JobState.CANCELLED
    assert job.counts.embedded == 2  # one page of two
    first_page = {e.file_id for e in worker.sink.embedded}
    assert len(first_page) == 2

    # Resumed again: it goes on after the checkpoint and never re-embeds the first page.
    await worker.service.resume(pending.id)
    assert await worker.runner.run_next()
    job = await worker.service.get(pending.id)
    assert job.state is JobState.SUCCEEDED
    assert job.counts.embedded == 6
    assert job.counts.total == 6
    assert job.resume_count == 2
    assert len(worker.sink.embedded) == 6
    assert {e.index_job_id for e in worker.sink.embedded} == {pending.id}
    index = default_index_name(catalogue.dataset_id)
    store = await worker.directory.store_for(await worker.directory.active_or_default(catalogue.dataset_id))
    assert await store.count(index, VectorFilter(dataset_version_id=catalogue.version_id)) == 6

    # A file vanishes from the version: an INCREMENTAL job removes its vectors and skips the rest.
    rows = await catalogue.fetch(
        "UPDATE files SET status = 'deleted' WHERE key = $1 RETURNING id::text", keys[0]
    )
    incremental = await worker.service.start(_request(catalogue, JobMode.INCREMENTAL))
    assert await worker.runner.run_next()
    job = await worker.service.get(incremental.id)
    assert job.state is JobState.SUCCEEDED
    assert (job.counts.deleted, job.counts.skipped, job.counts.embedded, job.counts.total) == (1, 5, 0, 5)
    assert (
        await store.count(
            index, VectorFilter(dataset_version_id=catalogue.version_id, file_ids=[rows[0]["id"]])
        )
        == 0
    )
