"""Export jobs in PostgreSQL: claiming, leases, take-over of stalled jobs, cancel while running."""

from __future__ import annotations

import asyncpg
import pytest

from viewfinder.v1 import common_pb2, export_pb2, search_pb2
from viewfinder_exporter.adapters.jobs import ExportJobs
from viewfinder_exporter.domain.jobs import ExportCheckpoint, ExportCounts, JobState
from viewfinder_exporter.domain.runner import LeaseLost
from viewfinder_exporter.handlers.messages import export_job_message
from viewfinder_exporter.testing import FileRow, insert_dataset

pytestmark = pytest.mark.stack


@pytest.fixture
async def jobs(pool: asyncpg.Pool) -> ExportJobs:
    return ExportJobs(pool)


@pytest.fixture
async def job_id(pool: asyncpg.Pool, jobs: ExportJobs) -> str:
    async with pool.acquire() as conn:
        source = await insert_dataset(conn, bucket="b", files=[FileRow(key="a.png")])
    job = await jobs.create(
        request=export_pb2.StartExportRequest(
            search=search_pb2.SearchRequest(dataset_version_id=source.version_id),
            manifest=export_pb2.ManifestTarget(bucket="b", prefix="p"),
        ),
        dataset_id=source.dataset_id,
        dataset_version_id=source.version_id,
        total_items=1,
    )
    return job.id


async def test_a_stalled_worker_loses_its_job_to_the_next_one(
    pool: asyncpg.Pool, jobs: ExportJobs, job_id: str
) -> None:
    claimed = await jobs.claim(worker_id="worker-a", lease_s=60)
    assert claimed is not None
    assert (claimed.id, claimed.state, claimed.worker) == (job_id, JobState.RUNNING, "worker-a")
    lease_a = jobs.lease(job_id, "worker-a")
    checkpoint = ExportCheckpoint(cursor="page-7", records_written=700, processed_items=700)
    await lease_a.save_checkpoint(checkpoint)
    assert await jobs.claim(worker_id="worker-b", lease_s=60) is None  # A holds a fresh lease

    await pool.execute("UPDATE jobs SET updated_at = now() - interval '10 minutes'")
    taken = await jobs.claim(worker_id="worker-b", lease_s=60)
    assert taken is not None
    assert taken.worker == "worker-b"
    assert taken.checkpoint == checkpoint  # B goes on from A's checkpoint

    with pytest.raises(LeaseLost):
        await lease_a.heartbeat(ExportCounts(total_items=1))
    with pytest.raises(LeaseLost):
        await lease_a.save_checkpoint(ExportCheckpoint(cursor="stale"))
    with pytest.raises(LeaseLost):
        await lease_a.fail("late", ExportCounts())
    assert (await jobs.get(job_id)).checkpoint == checkpoint


async def test_cancel_reaches_a_running_job_through_its_heartbeat(jobs: ExportJobs, job_id: str) -> None:
    await jobs.claim(worker_id="w", lease_s=60)
    lease = jobs.lease(job_id, "w")
    assert await lease.heartbeat(ExportCounts(total_items=1)) is False

    cancelling = await jobs.cancel(job_id)
    assert cancelling.state is JobState.RUNNING
    assert export_job_message(cancelling).job.state == common_pb2.JOB_STATE_CANCELLING
    assert await lease.heartbeat(ExportCounts(total_items=1, processed_items=1)) is True

    await lease.cancelled(ExportCounts(total_items=1))
    done = await jobs.get(job_id)
    assert export_job_message(done).job.state == common_pb2.JOB_STATE_CANCELLED
    assert done.finished_at is not None
    assert not done.cancel_requested


async def test_shutdown_hands_a_running_job_back_at_once(jobs: ExportJobs, job_id: str) -> None:
    await jobs.claim(worker_id="w", lease_s=60)
    await jobs.lease(job_id, "w").release(ExportCounts(total_items=1, processed_items=0))
    assert (await jobs.get(job_id)).state is JobState.PENDING
    again = await jobs.claim(worker_id="other", lease_s=60)
    assert again is not None
    assert again.id == job_id
