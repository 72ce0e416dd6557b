"""Index jobs in the shared ``jobs`` table (kind ``index``) and the file listing they read.

Kind-specific fields live in ``params`` (index, model, concurrency,
activation) and ``counts`` (total/embedded/deleted/failed/skipped); the
checkpoint is ``{"after_file_id": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from viewfinder_embedder.adapters.catalogue import activate_in_transaction
from viewfinder_embedder.domain.index_jobs import (
    RECENT_ERRORS,
    IndexJob,
    IndexJobStore,
    ItemFailure,
    JobCounts,
    JobMode,
    JobState,
    VersionFile,
)

_KIND = "index"
_COLUMNS = """
    id::text AS id, mode, state, dataset_id::text AS dataset_id, version_id::text AS version_id,
    params, counts, checkpoint, error, cancel_requested, recent_errors, resume_count,
    created_at, started_at, updated_at, finished_at
"""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _failure_to_json(failure: ItemFailure) -> dict[str, str]:
    return {
        "file_id": failure.file_id,
        "uri": failure.uri,
        "reason": failure.reason,
        "occur_time": failure.occur_time.isoformat(),
    }


def _failure_from_json(item: Mapping[str, str]) -> ItemFailure:
    return ItemFailure(
        file_id=item.get("file_id", ""),
        uri=item.get("uri", ""),
        reason=item.get("reason", ""),
        occur_time=datetime.fromisoformat(item["occur_time"]),
    )


def _job(row: Mapping[str, Any]) -> IndexJob:
    params = _json(row["params"]) or {}
    counts = _json(row["counts"]) or {}
    checkpoint = _json(row["checkpoint"]) or {}
    return IndexJob(
        id=row["id"],
        mode=JobMode(row["mode"]),
        state=JobState(row["state"]),
        dataset_id=row["dataset_id"] or "",
        dataset_version_id=row["version_id"] or "",
        index_name=params.get("index_name", ""),
        model_connection=params.get("model_connection", ""),
        model_id=params.get("model_id", ""),
        model_version=params.get("model_version", ""),
        max_concurrency=int(params.get("max_concurrency", 1)),
        activate_on_success=bool(params.get("activate_on_success", False)),
        counts=JobCounts(
            total=int(counts.get("total", 0)),
            embedded=int(counts.get("embedded", 0)),
            deleted=int(counts.get("deleted", 0)),
            failed=int(counts.get("failed", 0)),
            skipped=int(counts.get("skipped", 0)),
        ),
        cancel_requested=row["cancel_requested"],
        error=row["error"] or "",
        recent_errors=[_failure_from_json(item) for item in (_json(row["recent_errors"]) or [])],
        after_file_id=str(checkpoint.get("after_file_id", "")),
        resume_count=row["resume_count"],
        create_time=row["created_at"],
        start_time=row["started_at"],
        update_time=row["updated_at"],
        end_time=row["finished_at"],
    )


def _counts_json(counts: JobCounts) -> str:
    return json.dumps(
        {
            "total": counts.total,
            "embedded": counts.embedded,
            "deleted": counts.deleted,
            "failed": counts.failed,
            "skipped": counts.skipped,
        }
    )


class PgIndexJobStore(IndexJobStore):
    """``IndexJobStore`` over the catalogue's PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, job: IndexJob) -> IndexJob:
        """Inserts a PENDING index job."""
        row = await self._pool.fetchrow(
            f"""
            INSERT INTO jobs (kind, mode, state, dataset_id, version_id, params, counts)
            VALUES ($1, $2, 'pending', $3::uuid, $4::uuid, $5::jsonb, $6::jsonb)
            RETURNING {_COLUMNS}
            """,  # noqa: S608 (constant column list)
            _KIND,
            job.mode.value,
            job.dataset_id,
            job.dataset_version_id,
            json.dumps(
                {
                    "index_name": job.index_name,
                    "model_connection": job.model_connection,
                    "model_id": job.model_id,
                    "model_version": job.model_version,
                    "max_concurrency": job.max_concurrency,
                    "activate_on_success": job.activate_on_success,
                }
            ),
            _counts_json(job.counts),
        )
        assert row is not None
        return _job(row)

    async def get(self, job_id: str) -> IndexJob | None:
        """An index job by id (None for another kind of job)."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM jobs WHERE id = $1::uuid AND kind = $2",  # noqa: S608
            job_id,
            _KIND,
        )
        return _job(row) if row else None

    async def active_job_for_index(self, index_name: str) -> IndexJob | None:
        """A pending or running job writing to the index."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM jobs WHERE kind = $1 AND state IN ('pending', 'running') "  # noqa: S608
            "AND params ->> 'index_name' = $2 ORDER BY created_at LIMIT 1",
            _KIND,
            index_name,
        )
        return _job(row) if row else None

    async def claim_next(self, stale_after_s: float) -> IndexJob | None:
        """The oldest pending job (or a running one nobody reported on for ``stale_after_s``), now RUNNING."""
        row = await self._pool.fetchrow(
            f"""
            UPDATE jobs SET state = 'running', started_at = coalesce(started_at, now()), updated_at = now()
            WHERE id = (
                SELECT id FROM jobs
                WHERE kind = $1 AND (
                    (state = 'pending')
                    OR (state = 'running' AND updated_at < now() - make_interval(secs => $2))
                )
                ORDER BY created_at
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            RETURNING {_COLUMNS}
            """,  # noqa: S608
            _KIND,
            stale_after_s,
        )
        return _job(row) if row else None

    async def save_progress(
        self, job_id: str, counts: JobCounts, failures: Sequence[ItemFailure], after_file_id: str
    ) -> bool:
        """Stores counts, the checkpoint and the newest failures; returns whether cancel was requested."""
        new_errors = json.dumps([_failure_to_json(f) for f in reversed(failures[-RECENT_ERRORS:])])
        requested = await self._pool.fetchval(
            """
            UPDATE jobs SET
                counts = $2::jsonb,
                progress = CASE WHEN ($2::jsonb ->> 'total')::bigint > 0
                    THEN least(1.0, (($2::jsonb ->> 'embedded')::bigint + ($2::jsonb ->> 'failed')::bigint
                                    + ($2::jsonb ->> 'skipped')::bigint)::float8 / ($2::jsonb ->> 'total')::bigint)
                    ELSE 0 END,
                checkpoint = jsonb_build_object('after_file_id', $3::text),
                recent_errors = (
                    SELECT coalesce(jsonb_agg(e), '[]'::jsonb) FROM (
                        SELECT e FROM jsonb_array_elements($4::jsonb || recent_errors) WITH ORDINALITY AS t(e, n)
                        ORDER BY n LIMIT $5
                    ) AS newest
                ),
                updated_at = now()
            WHERE id = $1::uuid
            RETURNING cancel_requested
            """,
            job_id,
            _counts_json(counts),
            after_file_id,
            new_errors,
            RECENT_ERRORS,
        )
        return bool(requested)

    async def finish(self, job_id: str, state: JobState, error: str = "") -> None:
        """Moves the job to a terminal state."""
        await self._pool.execute(
            "UPDATE jobs SET state = $2, error = nullif($3, ''), cancel_requested = false, "
            "finished_at = now(), updated_at = now(), progress = CASE WHEN $2 = 'succeeded' THEN 1 ELSE progress END "
            "WHERE id = $1::uuid",
            job_id,
            state.value,
            error,
        )

    async def requeue(self, job_id: str) -> None:
        """RUNNING → PENDING (a stopping worker hands its job back; the checkpoint stays)."""
        await self._pool.execute(
            "UPDATE jobs SET state = 'pending', updated_at = now() WHERE id = $1::uuid AND state = 'running'",
            job_id,
        )

    async def request_cancel(self, job_id: str) -> IndexJob | None:
        """PENDING → CANCELLED at once; RUNNING → cancel requested (the worker stops after its page)."""
        row = await self._pool.fetchrow(
            f"""
            UPDATE jobs SET
                state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE state END,
                finished_at = CASE WHEN state = 'pending' THEN now() ELSE finished_at END,
                cancel_requested = (state = 'running'),
                updated_at = now()
            WHERE id = $1::uuid AND kind = $2 AND state IN ('pending', 'running')
            RETURNING {_COLUMNS}
            """,  # noqa: S608
            job_id,
            _KIND,
        )
        return _job(row) if row else await self.get(job_id)

    async def resume(self, job_id: str, *, rescan: bool = False) -> IndexJob | None:
        """FAILED or CANCELLED → PENDING with its checkpoint (or, with ``rescan``, INCREMENTAL from the start)."""
        row = await self._pool.fetchrow(
            f"""
            UPDATE jobs SET state = 'pending', error = NULL, cancel_requested = false, finished_at = NULL,
                resume_count = resume_count + 1, updated_at = now(),
                mode = CASE WHEN $3 THEN 'incremental' ELSE mode END,
                checkpoint = CASE WHEN $3 THEN '{{}}'::jsonb ELSE checkpoint END,
                counts = CASE WHEN $3 THEN $4::jsonb ELSE counts END,
                progress = CASE WHEN $3 THEN 0 ELSE progress END
            WHERE id = $1::uuid AND kind = $2 AND state IN ('failed', 'cancelled')
            RETURNING {_COLUMNS}
            """,  # noqa: S608
            job_id,
            _KIND,
            rescan,
            _counts_json(JobCounts()),
        )
        return _job(row) if row else None

    async def succeed_and_activate(self, job_id: str, index_name: str) -> bool:
        """Unless cancellation was requested: the job SUCCEEDED and its index active, in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            # The row lock orders this against CancelIndexJob's update of the same row.
            requested = await conn.fetchval(
                "SELECT cancel_requested FROM jobs WHERE id = $1::uuid FOR UPDATE", job_id
            )
            if requested is None or requested:
                return False
            await activate_in_transaction(conn, index_name)
            await conn.execute(
                "UPDATE jobs SET state = 'succeeded', error = NULL, finished_at = now(), updated_at = now(), "
                "progress = 1 WHERE id = $1::uuid",
                job_id,
            )
        return True

    async def activation_jobs(self, dataset_id: str) -> list[IndexJob]:
        """The dataset's pending or running jobs that activate their index on success."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM jobs WHERE kind = $1 AND dataset_id = $2::uuid "  # noqa: S608
            "AND state IN ('pending', 'running') AND (params ->> 'activate_on_success')::boolean "
            "ORDER BY created_at",
            _KIND,
            dataset_id,
        )
        return [_job(row) for row in rows]

    async def dataset_of_version(self, dataset_version_id: str) -> str | None:
        """The version's dataset id, or None if the version does not exist."""
        value = await self._pool.fetchval(
            "SELECT dataset_id::text FROM dataset_versions WHERE id = $1::uuid", dataset_version_id
        )
        return str(value) if value is not None else None

    async def count_active_files(self, dataset_version_id: str) -> int:
        """ACTIVE files of the version."""
        count = await self._pool.fetchval(
            "SELECT count(*) FROM files WHERE version_id = $1::uuid AND status = 'active'", dataset_version_id
        )
        return int(count or 0)

    async def active_files_page(
        self, dataset_version_id: str, after_file_id: str, limit: int
    ) -> list[VersionFile]:
        """The next ACTIVE files after ``after_file_id`` in file id order."""
        rows = await self._pool.fetch(
            """
            SELECT id::text AS id, bucket, key, uri, etag, size, last_modified FROM files
            WHERE version_id = $1::uuid AND status = 'active'
              AND ($2 = '' OR id > nullif($2, '')::uuid)
            ORDER BY id
            LIMIT $3
            """,
            dataset_version_id,
            after_file_id,
            limit,
        )
        return [
            VersionFile(
                file_id=row["id"],
                bucket=row["bucket"],
                key=row["key"],
                uri=row["uri"],
                etag=row["etag"],
                size=row["size"],
                last_modified=row["last_modified"],
            )
            for row in rows
        ]

    async def vanished_files(self, index_name: str, dataset_version_id: str) -> list[str]:
        """Files of the version with vectors in the index that are no longer ACTIVE."""
        rows = await self._pool.fetch(
            """
            SELECT e.file_id::text AS file_id FROM embedding_index_files e
            LEFT JOIN files f ON f.id = e.file_id AND f.status = 'active'
            WHERE e.index_name = $1 AND e.dataset_version_id = $2::uuid AND f.id IS NULL
            """,
            index_name,
            dataset_version_id,
        )
        return [row["file_id"] for row in rows]
