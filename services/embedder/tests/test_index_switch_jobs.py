"""Jobs that switch a dataset to a new index, on the real catalogue and pgvector (no worker runs them).

* the newest switch supersedes an older one: the older job is cancelled and
  its index stops receiving new files (FAILED);
* resuming an abandoned build makes it a build again and rescans the version
  (INCREMENTAL, from the start), so files it missed meanwhile are caught up;
* activation and success are one step, refused when a cancel came in first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from viewfinder_common.vectorstore.factory import VectorStoreSettings
from viewfinder_common.vectorstore.registry import VectorStoreRegistry
from viewfinder_embedder.adapters.catalogue import PgIndexCatalogue
from viewfinder_embedder.adapters.jobs import PgIndexJobStore
from viewfinder_embedder.adapters.registries import ModelRegistry
from viewfinder_embedder.config import EmbedderSettings
from viewfinder_embedder.domain.index_jobs import JobMode, JobState
from viewfinder_embedder.domain.indexes import IndexDirectory
from viewfinder_embedder.domain.job_requests import IndexJobService, StartIndexJob
from viewfinder_embedder.domain.ports import IndexState

pytestmark = pytest.mark.stack


class IdleRunner:
    """The runner as IndexJobService sees it; no worker runs in these tests."""

    default_concurrency = 2

    def wake(self) -> None:
        pass


@dataclass
class Jobs:
    pool: asyncpg.Pool
    jobs: PgIndexJobStore
    catalogue: PgIndexCatalogue
    service: IndexJobService


@pytest.fixture
async def jobs(catalogue: Any, offline_model: Any) -> AsyncIterator[Jobs]:
    pool = await asyncpg.create_pool(catalogue.url, min_size=1, max_size=4)
    stores = VectorStoreRegistry(VectorStoreSettings(kind="pgvector"), pool)
    try:
        index_catalogue = PgIndexCatalogue(pool)
        directory = IndexDirectory(
            index_catalogue,
            ModelRegistry({}, EmbedderSettings().offline_model, preloaded={"offline": offline_model}),
            stores,
            default_model_connection="offline",
            default_store_connection="pgvector",
        )
        store = PgIndexJobStore(pool)
        yield Jobs(pool, store, index_catalogue, IndexJobService(store, IdleRunner(), directory, store))  # type: ignore[arg-type]
    finally:
        await stores.close()
        await pool.close()


def _switch(catalogue: Any, index_name: str) -> StartIndexJob:
    return StartIndexJob(
        dataset_version_id=catalogue.version_id,
        index_name=index_name,
        model_connection="",
        vector_store_connection="",
        mode=JobMode.INCREMENTAL,
        max_concurrency=0,
        activate_on_success=True,
    )


async def test_the_newest_switch_wins_and_a_resumed_build_rescans(catalogue: Any, jobs: Jobs) -> None:
    dataset_id = catalogue.dataset_id
    first = await jobs.service.start(_switch(catalogue, "build_a"))
    assert (await jobs.catalogue.get_index("build_a")).state is IndexState.BUILDING  # type: ignore[union-attr]

    second = await jobs.service.start(_switch(catalogue, "build_b"))
    assert (await jobs.service.get(first.id)).state is JobState.CANCELLED
    assert (await jobs.catalogue.get_index("build_a")).state is IndexState.FAILED  # type: ignore[union-attr]
    assert [j.id for j in await jobs.jobs.activation_jobs(dataset_id)] == [second.id]

    # The superseded build resumes as a build, rescanning from the start.
    await jobs.jobs.save_progress(
        first.id, (await jobs.service.get(first.id)).counts, [], "ffffffff-0000-4000-8000-000000000000"
    )
    resumed = await jobs.service.resume(first.id)
    assert (resumed.state, resumed.mode, resumed.after_file_id) == (JobState.PENDING, JobMode.INCREMENTAL, "")
    assert (await jobs.catalogue.get_index("build_a")).state is IndexState.BUILDING  # type: ignore[union-attr]


async def test_activation_is_refused_after_a_last_moment_cancel(catalogue: Any, jobs: Jobs) -> None:
    dataset_id = catalogue.dataset_id
    job = await jobs.service.start(_switch(catalogue, "build_c"))
    claimed = await jobs.jobs.claim_next(stale_after_s=300)
    assert claimed is not None
    assert claimed.id == job.id
    requested = await jobs.service.cancel(job.id)
    assert (requested.state, requested.cancel_requested) == (JobState.RUNNING, True)
    assert not await jobs.jobs.succeed_and_activate(job.id, "build_c")
    assert await jobs.catalogue.active_index(dataset_id) is None
    assert (await jobs.service.get(job.id)).state is JobState.RUNNING  # the runner records CANCELLED

    other = await jobs.service.start(_switch(catalogue, "build_d"))
    assert (await jobs.jobs.claim_next(stale_after_s=300)).id == other.id  # type: ignore[union-attr]
    assert await jobs.jobs.succeed_and_activate(other.id, "build_d")
    finished = await jobs.service.get(other.id)
    assert finished.state is JobState.SUCCEEDED
    index = await jobs.catalogue.get_index("build_d")
    assert index is not None
    assert (index.active, index.state) == (True, IndexState.READY)
    shown = await jobs.pool.fetchval(
        "SELECT indexing ->> 'active_index' FROM datasets WHERE id = $1::uuid", dataset_id
    )
    assert shown == "build_d"
