"""Export jobs in the catalogue: the ``jobs`` rows of kind 'export' and their ``exports`` rows.

Any replica may run any job. A worker claims the oldest PENDING export (or a
RUNNING one whose worker stopped heartbeating for ``lease_s``) with
``FOR UPDATE SKIP LOCKED`` and writes its id into ``checkpoint->>'worker'``.
Every later write of the run (heartbeat, checkpoint, final state) is
conditional on that id, so a worker that stalled past its lease can never
overwrite the work of the worker that took over (it gets ``LeaseLost``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from google.protobuf import json_format

from viewfinder.v1 import export_pb2
from viewfinder_common.errors import FailedPrecondition, NotFound
from viewfinder_exporter.adapters.catalogue import parse_uuid
from viewfinder_exporter.domain.jobs import (
    JOB_KIND_EXPORT,
    ExportCheckpoint,
    ExportCounts,
    ExportOutputs,
    JobState,
)
from viewfinder_exporter.domain.runner import LeaseLost

_COLUMNS = """
    j.id, j.state, j.dataset_id, j.version_id, j.params, j.counts, j.checkpoint, j.error,
    j.cancel_requested, j.resume_count, j.created_at, j.started_at, j.finished_at, j.updated_at,
    e.target, e.manifest_uri, e.summary_uri, e.manifest_sha256, e.logical_dataset_id,
    e.logical_dataset_version_id
"""


@dataclass(frozen=True)
class ExportJobRecord:
    """One export job as stored."""

    id: str
    state: JobState
    dataset_id: str
    dataset_version_id: str
    request: export_pb2.StartExportRequest
    counts: ExportCounts
    checkpoint: ExportCheckpoint
    worker: str
    error: str
    cancel_requested: bool
    resume_count: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    outputs: ExportOutputs
    logical_dataset_id: str


def request_json(request: export_pb2.StartExportRequest) -> dict[str, Any]:
    """A StartExportRequest as protobuf JSON (how it is kept in ``jobs.params``)."""
    return json_format.MessageToDict(request, preserving_proto_field_name=True)


def _record(row: Any) -> ExportJobRecord:
    params = json.loads(row["params"])
    request = json_format.ParseDict(params["request"], export_pb2.StartExportRequest())
    checkpoint = json.loads(row["checkpoint"])
    return ExportJobRecord(
        id=str(row["id"]),
        state=JobState(row["state"]),
        dataset_id=str(row["dataset_id"]) if row["dataset_id"] else "",
        dataset_version_id=str(row["version_id"]) if row["version_id"] else "",
        request=request,
        counts=ExportCounts.from_json(json.loads(row["counts"])),
        checkpoint=ExportCheckpoint.from_json(checkpoint.get("export")),
        worker=str(checkpoint.get("worker", "")),
        error=row["error"] or "",
        cancel_requested=row["cancel_requested"],
        resume_count=row["resume_count"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        outputs=ExportOutputs(
            manifest_uri=row["manifest_uri"],
            summary_uri=row["summary_uri"],
            manifest_sha256=row["manifest_sha256"],
            logical_dataset_version_id=str(row["logical_dataset_version_id"] or ""),
        ),
        logical_dataset_id=str(row["logical_dataset_id"] or ""),
    )


class ExportJobs:
    """Creates, reads, cancels, resumes and claims export jobs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        *,
        request: export_pb2.StartExportRequest,
        dataset_id: str,
        dataset_version_id: str,
        total_items: int,
        logical_dataset_name: str = "",
    ) -> ExportJobRecord:
        """Stores a PENDING job (and creates the target logical dataset if it does not exist yet)."""
        target = "logical_dataset" if logical_dataset_name else "manifest"
        async with self._pool.acquire() as conn, conn.transaction():
            logical_dataset_id = None
            if logical_dataset_name:
                logical_dataset_id = await conn.fetchval(
                    """
                    INSERT INTO logical_datasets (name) VALUES ($1)
                    ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id
                    """,
                    logical_dataset_name,
                )
            job_id = await conn.fetchval(
                """
                INSERT INTO jobs (kind, mode, state, dataset_id, version_id, params, counts)
                VALUES ($1, 'full', 'pending', $2, $3, $4::jsonb, $5::jsonb) RETURNING id
                """,
                JOB_KIND_EXPORT,
                uuid.UUID(dataset_id),
                uuid.UUID(dataset_version_id),
                json.dumps({"request": request_json(request)}),
                json.dumps(ExportCounts(total_items=total_items).to_json()),
            )
            await conn.execute(
                "INSERT INTO exports (job_id, target, logical_dataset_id) VALUES ($1, $2, $3)",
                job_id,
                target,
                logical_dataset_id,
            )
        return await self.get(str(job_id))

    async def get(self, job_id: str) -> ExportJobRecord:
        """One export job; NOT_FOUND when there is none."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM jobs j JOIN exports e ON e.job_id = j.id WHERE j.id = $1",  # noqa: S608
            parse_uuid(job_id, "job_id"),
        )
        if row is None:
            raise NotFound(f"export job {job_id} does not exist")
        return _record(row)

    async def cancel(self, job_id: str) -> ExportJobRecord:
        """A PENDING job is CANCELLED at once; a RUNNING one is asked to stop; others are left alone."""
        await self._pool.execute(
            """
            UPDATE jobs SET
                state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE state END,
                finished_at = CASE WHEN state = 'pending' THEN now() ELSE finished_at END,
                cancel_requested = (state = 'running'),
                updated_at = now()
            WHERE id = $1 AND kind = $2 AND state IN ('pending', 'running')
            """,
            parse_uuid(job_id, "job_id"),
            JOB_KIND_EXPORT,
        )
        return await self.get(job_id)

    async def resume(self, job_id: str) -> ExportJobRecord:
        """Puts a FAILED or CANCELLED job back to PENDING; FAILED_PRECONDITION for any other state."""
        status = await self._pool.execute(
            """
            UPDATE jobs SET state = 'pending', cancel_requested = false, error = NULL, finished_at = NULL,
                resume_count = resume_count + 1, updated_at = now()
            WHERE id = $1 AND kind = $2 AND state IN ('failed', 'cancelled')
            """,
            parse_uuid(job_id, "job_id"),
            JOB_KIND_EXPORT,
        )
        job = await self.get(job_id)
        if status.endswith(" 0"):
            raise FailedPrecondition(
                f"export job {job_id} is {job.state.value.upper()}; only FAILED or CANCELLED jobs can be resumed"
            )
        return job

    async def claim(self, *, worker_id: str, lease_s: float) -> ExportJobRecord | None:
        """Takes the oldest PENDING export, or a RUNNING one whose worker stopped heartbeating."""
        row = await self._pool.fetchrow(
            """
            UPDATE jobs SET state = 'running', started_at = coalesce(started_at, now()), updated_at = now(),
                checkpoint = checkpoint || jsonb_build_object('worker', $2::text)
            WHERE id = (
                SELECT id FROM jobs
                WHERE kind = $1 AND (state = 'pending'
                      OR (state = 'running' AND updated_at < now() - make_interval(secs => $3)))
                ORDER BY created_at
                FOR UPDATE SKIP LOCKED
                LIMIT 1)
            RETURNING id
            """,
            JOB_KIND_EXPORT,
            worker_id,
            lease_s,
        )
        return await self.get(str(row["id"])) if row else None

    def lease(self, job_id: str, worker_id: str) -> JobLeaseStore:
        """The writes of one run of one job by one worker."""
        return JobLeaseStore(self._pool, uuid.UUID(job_id), worker_id)


class JobLeaseStore:
    """``JobLease`` and ``CheckpointStore`` of one run: every write checks that the worker still holds the job."""

    def __init__(self, pool: asyncpg.Pool, job_id: uuid.UUID, worker_id: str) -> None:
        self._pool = pool
        self.job_id = job_id
        self.worker_id = worker_id

    async def heartbeat(self, counts: ExportCounts) -> bool:
        """Writes progress; True when cancellation was requested."""
        row = await self._pool.fetchrow(
            """
            UPDATE jobs SET counts = $3::jsonb, progress = $4, updated_at = now()
            WHERE id = $1 AND state = 'running' AND checkpoint->>'worker' = $2
            RETURNING cancel_requested
            """,
            self.job_id,
            self.worker_id,
            json.dumps(counts.to_json()),
            counts.progress,
        )
        if row is None:
            raise LeaseLost
        return bool(row["cancel_requested"])

    async def save_checkpoint(self, checkpoint: ExportCheckpoint, conn: Any = None) -> None:
        """Makes ``checkpoint`` the resume point (on ``conn`` when inside a caller's transaction)."""
        status = await (conn or self._pool).execute(
            """
            UPDATE jobs SET checkpoint = jsonb_build_object('worker', $2::text, 'export', $3::jsonb),
                updated_at = now()
            WHERE id = $1 AND state = 'running' AND checkpoint->>'worker' = $2
            """,
            self.job_id,
            self.worker_id,
            json.dumps(checkpoint.to_json()),
        )
        if status.endswith(" 0"):
            raise LeaseLost

    async def succeed(self, outputs: ExportOutputs, counts: ExportCounts) -> None:
        """SUCCEEDED, with the outputs in ``exports``."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._finish(conn, JobState.SUCCEEDED, counts, "")
            await conn.execute(
                """
                UPDATE exports SET manifest_uri = $2, summary_uri = $3, manifest_sha256 = $4,
                    logical_dataset_version_id = $5
                WHERE job_id = $1
                """,
                self.job_id,
                outputs.manifest_uri,
                outputs.summary_uri,
                outputs.manifest_sha256,
                uuid.UUID(outputs.logical_dataset_version_id) if outputs.logical_dataset_version_id else None,
            )

    async def fail(self, reason: str, counts: ExportCounts) -> None:
        """FAILED with a reason."""
        await self._finish(self._pool, JobState.FAILED, counts, reason)

    async def cancelled(self, counts: ExportCounts) -> None:
        """CANCELLED."""
        await self._finish(self._pool, JobState.CANCELLED, counts, "")

    async def release(self, counts: ExportCounts) -> None:
        """Back to PENDING (shutdown), so that the next worker goes on at once."""
        await self._pool.execute(
            """
            UPDATE jobs SET state = 'pending', counts = $3::jsonb, progress = $4, updated_at = now()
            WHERE id = $1 AND state = 'running' AND checkpoint->>'worker' = $2
            """,
            self.job_id,
            self.worker_id,
            json.dumps(counts.to_json()),
            counts.progress,
        )

    async def _finish(self, conn: Any, state: JobState, counts: ExportCounts, error: str) -> None:
        status = await conn.execute(
            """
            UPDATE jobs SET state = $3, counts = $4::jsonb, progress = $5, error = nullif($6, ''),
                finished_at = now(), updated_at = now(), cancel_requested = false
            WHERE id = $1 AND state = 'running' AND checkpoint->>'worker' = $2
            """,
            self.job_id,
            self.worker_id,
            state.value,
            json.dumps(counts.to_json()),
            1.0 if state is JobState.SUCCEEDED else counts.progress,
            error,
        )
        if status.endswith(" 0"):
            raise LeaseLost
