"""The catalogue in PostgreSQL (asyncpg): datasets, versions, files and sync jobs.

Batched writes use one multi-row ``INSERT ... SELECT FROM unnest(...)``
statement per page or batch. Key ranges are compared with ``COLLATE "C"``,
the byte order S3 lists keys in (an index of migration 0008 serves it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from viewfinder_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from viewfinder_ingest.domain.models import (
    CatalogueFile,
    Dataset,
    DatasetVersion,
    FileStatus,
    FileWrite,
    ItemError,
    JobState,
    PartitionProgress,
    SyncCounts,
    SyncJob,
    SyncMode,
)
from viewfinder_ingest.domain.ports import DatasetTarget, NotificationWrite, SyncPageWrite
from viewfinder_ingest.domain.sync_plan import DIRECT_PARTITION, KeyRange

# How many item errors a job keeps (newest first).
RECENT_ERRORS = 20

_FILE_COLUMNS = (
    "id, dataset_id, version_id, bucket, key, uri, size, etag, last_modified, format, width, height, "
    "frames, mode, status, error, sequencer, created_at, updated_at"
)
# Labeling settings live in the tagger's table (migration 0009); no row means "off".
_DATASET_SELECT = """
    SELECT d.*, (SELECT max(v.number) FROM dataset_versions v WHERE v.dataset_id = d.id) AS latest_version,
           l.automatic AS labeling_automatic, l.definition_id AS labeling_definition_id,
           l.definition_version AS labeling_definition_version, l.model_connection AS labeling_model_connection
    FROM datasets d LEFT JOIN dataset_labeling_settings l ON l.dataset_id = d.id
"""
_SAVE_LABELING = """
    INSERT INTO dataset_labeling_settings (dataset_id, automatic, definition_id, definition_version, model_connection)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (dataset_id) DO UPDATE SET automatic = EXCLUDED.automatic, definition_id = EXCLUDED.definition_id,
        definition_version = EXCLUDED.definition_version, model_connection = EXCLUDED.model_connection,
        updated_at = now()
"""
_VERSION_SELECT = """
    SELECT v.*,
        (SELECT count(*) FROM files f WHERE f.version_id = v.id) AS file_count,
        (SELECT count(*) FROM files f WHERE f.version_id = v.id AND f.status = 'active') AS active_file_count,
        (SELECT j.id FROM jobs j WHERE j.version_id = v.id AND j.kind = 'sync'
            ORDER BY j.created_at DESC LIMIT 1) AS last_sync_job_id
    FROM dataset_versions v
"""
_JOB_SELECT = """
    SELECT j.*, (j.state IN ('pending', 'running') AND j.updated_at < now() - make_interval(secs => $2))
        AS stale
    FROM jobs j
"""
# Rows of a page, one array per column (unnest keeps them aligned).
_UNNEST_FILES = """
    FROM unnest($4::uuid[], $5::text[], $6::bigint[], $7::text[], $8::timestamptz[], $9::text[],
                $10::int[], $11::int[], $12::int[], $13::text[], $14::text[], $15::text[], $16::text[])
        AS u(id, key, size, etag, last_modified, format, width, height, frames, mode, status, error, sequencer)
"""
_UPSERT_FILES = (
    """
    INSERT INTO files AS f (id, dataset_id, version_id, bucket, key, uri, size, etag, last_modified,
                            format, width, height, frames, mode, status, error, sequencer)
    SELECT u.id, $1, $2, $3, u.key, 's3://' || $3 || '/' || u.key, u.size, u.etag, u.last_modified,
           u.format, u.width, u.height, u.frames, u.mode, u.status, u.error, u.sequencer
    """
    + _UNNEST_FILES
    + """
    ON CONFLICT (version_id, key) DO UPDATE SET
        size = EXCLUDED.size, etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified,
        format = EXCLUDED.format, width = EXCLUDED.width, height = EXCLUDED.height,
        frames = EXCLUDED.frames, mode = EXCLUDED.mode, status = EXCLUDED.status,
        error = EXCLUDED.error, sequencer = EXCLUDED.sequencer, updated_at = now()
    """
)
# A listing never overwrites a row a notification made newer than the listed object.
_SYNC_GUARD = """
    WHERE f.last_modified IS NULL OR EXCLUDED.last_modified IS NULL
       OR f.last_modified <= EXCLUDED.last_modified
"""
# S3 sequencers order after left-padding to equal length; an older one never wins.
_SEQUENCER_NEWER = """
    (f.sequencer IS NULL OR {new} IS NULL
     OR lpad(upper(f.sequencer), 64, '0') <= lpad(upper({new}), 64, '0'))
"""

_DELETE_NOTIFIED = """
    UPDATE files AS f SET status = 'deleted', error = NULL,
           sequencer = coalesce(d.sequencer, f.sequencer), updated_at = now()
    FROM unnest($1::uuid[], $2::text[]) AS d(id, sequencer)
    WHERE f.id = d.id AND
""" + _SEQUENCER_NEWER.format(new="d.sequencer")  # noqa: S608 - constant fragments

_INSERT_TOMBSTONES = """
    INSERT INTO files AS f (id, dataset_id, version_id, bucket, key, uri, status, sequencer)
    SELECT md5($2::uuid::text || '/' || t.key)::uuid, $1, $2, $3, t.key,
           's3://' || $3 || '/' || t.key, 'deleted', t.sequencer
    FROM unnest($4::text[], $5::text[]) AS t(key, sequencer)
    ON CONFLICT (version_id, key) DO UPDATE SET sequencer = EXCLUDED.sequencer,
           updated_at = now()
    WHERE f.status = 'deleted' AND
""" + _SEQUENCER_NEWER.format(new="EXCLUDED.sequencer")  # noqa: S608 - constant fragments

_ADVANCE_SEQUENCERS = """
    UPDATE files AS f SET sequencer = s.sequencer
    FROM unnest($2::text[], $3::text[]) AS s(key, sequencer)
    WHERE f.version_id = $1 AND f.key = s.key AND
""" + _SEQUENCER_NEWER.format(new="s.sequencer")  # noqa: S608 - constant fragments


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string (code-point order) above every string starting with ``prefix``."""
    trimmed = prefix.rstrip("\U0010ffff")
    if not trimmed:
        return None
    return trimmed[:-1] + chr(ord(trimmed[-1]) + 1)


def _dataset(row: asyncpg.Record) -> Dataset:
    return Dataset(
        id=str(row["id"]),
        name=row["name"],
        description=row["description"],
        storage_connection=row["storage_connection"],
        bucket=row["bucket"],
        prefix=row["prefix"],
        version_file_limit=row["version_file_limit"],
        labeling=_labeling(row),
        indexing=_load(row["indexing"]) or {},
        latest_version=row["latest_version"] or 0,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _labeling(row: asyncpg.Record) -> dict[str, Any]:
    """LabelingSettings as a proto-JSON dict (default values left out, like MessageToDict)."""
    values = {
        "automatic": row.get("labeling_automatic") or False,
        "tag_definition_id": str(row.get("labeling_definition_id") or ""),
        "tag_definition_version": row.get("labeling_definition_version") or 0,
        "model_connection": row.get("labeling_model_connection") or "",
    }
    return {name: value for name, value in values.items() if value}


async def _save_labeling(conn: asyncpg.Connection, dataset_id: Any, labeling: dict[str, Any]) -> None:
    try:
        await conn.execute(
            _SAVE_LABELING,
            dataset_id,
            bool(labeling.get("automatic", False)),
            labeling.get("tag_definition_id") or None,
            int(labeling.get("tag_definition_version", 0)),
            labeling.get("model_connection", ""),
        )
    except asyncpg.ForeignKeyViolationError:
        raise InvalidArgument(
            f"labeling.tag_definition_id {labeling.get('tag_definition_id')} is not a tag definition"
        ) from None
    except asyncpg.CheckViolationError:
        raise InvalidArgument("labeling.tag_definition_version must not be negative") from None


def _version(row: asyncpg.Record) -> DatasetVersion:
    return DatasetVersion(
        id=str(row["id"]),
        dataset_id=str(row["dataset_id"]),
        number=row["number"],
        name=row["name"],
        description=row["description"],
        active_file_count=row["active_file_count"],
        file_count=row["file_count"],
        last_sync_job_id=str(row["last_sync_job_id"] or ""),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _file(row: asyncpg.Record) -> CatalogueFile:
    return CatalogueFile(
        id=str(row["id"]),
        dataset_id=str(row["dataset_id"]),
        version_id=str(row["version_id"]),
        bucket=row["bucket"],
        key=row["key"],
        uri=row["uri"],
        size=row["size"],
        etag=row["etag"],
        last_modified=row["last_modified"],
        status=FileStatus(row["status"]),
        format=row["format"],
        width=row["width"],
        height=row["height"],
        frames=row["frames"],
        mode=row["mode"],
        error=row["error"],
        sequencer=row["sequencer"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _job(row: asyncpg.Record) -> SyncJob:
    checkpoint = _load(row["checkpoint"]) or {}
    partitions = {
        name: PartitionProgress(after=state.get("after"), done=bool(state.get("done")))
        for name, state in (checkpoint.get("partitions") or {}).items()
    }
    state = JobState(row["state"])
    error = row["error"]
    if row["stale"]:
        state = JobState.FAILED
        error = "the worker stopped reporting progress (crashed or restarted); resume the job to continue"
    return SyncJob(
        id=str(row["id"]),
        dataset_id=str(row["dataset_id"]),
        version_id=str(row["version_id"]),
        mode=SyncMode(row["mode"]),
        state=state,
        cancel_requested=row["cancel_requested"],
        counts=SyncCounts.from_dict(_load(row["counts"]) or {}),
        checkpoint=checkpoint,
        error=error,
        recent_errors=[
            ItemError(
                uri=item.get("uri", ""),
                reason=item.get("reason", ""),
                occurred_at=datetime.fromisoformat(item["at"]) if item.get("at") else row["updated_at"],
                file_id=item.get("file_id", ""),
            )
            for item in _load(row["recent_errors"]) or []
        ],
        resume_count=row["resume_count"],
        trace_id=row["trace_id"] or "",
        created_at=row["created_at"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        partitions=partitions,
    )


def _file_arrays(writes: Sequence[FileWrite]) -> list[list[Any]]:
    """Column arrays for ``_UNNEST_FILES`` ($4 … $16)."""
    return [
        [w.id for w in writes],
        [w.key for w in writes],
        [w.size for w in writes],
        [w.etag for w in writes],
        [w.last_modified for w in writes],
        [w.info.format for w in writes],
        [w.info.width for w in writes],
        [w.info.height for w in writes],
        [w.info.frames for w in writes],
        [w.info.mode for w in writes],
        [str(w.info.status) for w in writes],
        [w.info.error for w in writes],
        [w.sequencer for w in writes],
    ]


def _error_items(errors: Iterable[ItemError]) -> str:
    items = [
        {"uri": e.uri, "reason": e.reason[:500], "at": e.occurred_at.isoformat(), "file_id": e.file_id}
        for e in errors
    ]
    return _json(list(reversed(items))[:RECENT_ERRORS])


class Catalogue:
    """All catalogue reads and writes of the ingest service."""

    def __init__(self, pool: asyncpg.Pool, *, job_stale_after_s: float = 60.0) -> None:
        self._pool = pool
        self._stale_s = job_stale_after_s

    # Datasets -------------------------------------------------------------------------------

    async def create_dataset(
        self,
        *,
        name: str,
        description: str,
        storage_connection: str,
        bucket: str,
        prefix: str,
        version_file_limit: int,
        labeling: dict[str, Any],
        indexing: dict[str, Any],
    ) -> tuple[Dataset, DatasetVersion]:
        """Creates a dataset and its empty v1; AlreadyExists if the name is taken."""
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    """
                    INSERT INTO datasets (name, description, storage_connection, bucket, prefix,
                                          version_file_limit, indexing)
                    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
                    RETURNING id
                    """,
                    name,
                    description,
                    storage_connection,
                    bucket,
                    prefix,
                    version_file_limit,
                    _json(indexing),
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(f"a dataset named {name!r} exists already") from None
            except asyncpg.CheckViolationError as exc:
                raise InvalidArgument(f"dataset rejected by the catalogue: {exc.constraint_name}") from None
            dataset_id = row["id"]
            if labeling:
                await _save_labeling(conn, dataset_id, labeling)
            version_id = await conn.fetchval(
                "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset_id
            )
            dataset = _dataset(await conn.fetchrow(_DATASET_SELECT + " WHERE d.id = $1", dataset_id))
            version = _version(await conn.fetchrow(_VERSION_SELECT + " WHERE v.id = $1", version_id))
        return dataset, version

    async def get_dataset(self, dataset_id: str) -> Dataset:
        """A dataset by id; NotFound if there is none."""
        row = await self._pool.fetchrow(_DATASET_SELECT + " WHERE d.id = $1", dataset_id)
        if row is None:
            raise NotFound(f"dataset {dataset_id} does not exist")
        return _dataset(row)

    async def get_dataset_by_name(self, name: str) -> Dataset:
        """A dataset by name; NotFound if there is none."""
        row = await self._pool.fetchrow(_DATASET_SELECT + " WHERE d.name = $1", name)
        if row is None:
            raise NotFound(f"no dataset is named {name!r}")
        return _dataset(row)

    async def list_datasets(self, *, after_name: str | None, limit: int) -> list[Dataset]:
        """Datasets ordered by name, after ``after_name``, at most ``limit``."""
        rows = await self._pool.fetch(
            _DATASET_SELECT + ' WHERE d.name COLLATE "C" > $1 ORDER BY d.name COLLATE "C" LIMIT $2',
            after_name or "",
            limit,
        )
        return [_dataset(row) for row in rows]

    async def update_dataset(
        self, dataset_id: str, *, description: str, labeling: dict[str, Any], indexing: dict[str, Any]
    ) -> Dataset:
        """Stores the mutable fields of a dataset (labeling in the tagger's settings table)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                UPDATE datasets SET description = $2, updated_at = now(),
                    -- active_index is the embedder's to write (it may flip meanwhile)
                    indexing = ($3::jsonb - 'active_index')
                        || jsonb_strip_nulls(jsonb_build_object('active_index', indexing -> 'active_index'))
                WHERE id = $1 RETURNING id
                """,
                dataset_id,
                description,
                _json(indexing),
            )
            if row is None:
                raise NotFound(f"dataset {dataset_id} does not exist")
            await _save_labeling(conn, row["id"], labeling)
        return await self.get_dataset(dataset_id)

    async def targets_for_buckets(self, buckets: Sequence[str]) -> dict[str, list[DatasetTarget]]:
        """Datasets registered on each bucket, each with its latest version."""
        if not buckets:
            return {}
        rows = await self._pool.fetch(
            """
            SELECT d.*, v.number AS latest_version, v.id AS version_id
            FROM datasets d
            JOIN LATERAL (SELECT id, number FROM dataset_versions
                          WHERE dataset_id = d.id ORDER BY number DESC LIMIT 1) v ON true
            WHERE d.bucket = ANY($1::text[])
            """,
            list(buckets),
        )
        targets: dict[str, list[DatasetTarget]] = {}
        for row in rows:
            dataset = _dataset(row)
            targets.setdefault(dataset.bucket, []).append(
                DatasetTarget(
                    dataset=dataset,
                    version_id=str(row["version_id"]),
                    version_number=row["latest_version"],
                    version_file_limit=dataset.version_file_limit,
                )
            )
        return targets

    # Versions -------------------------------------------------------------------------------

    async def create_version(
        self, dataset_id: str, *, description: str, base_version_id: str | None
    ) -> DatasetVersion:
        """Creates vN+1, empty or with the live files of ``base_version_id``."""
        async with self._pool.acquire() as conn, conn.transaction():
            # Locks the dataset row so that two concurrent calls get different numbers.
            dataset = await conn.fetchrow(
                "SELECT id, version_file_limit FROM datasets WHERE id = $1 FOR UPDATE", dataset_id
            )
            if dataset is None:
                raise NotFound(f"dataset {dataset_id} does not exist")
            if base_version_id:
                base_dataset = await conn.fetchval(
                    "SELECT dataset_id FROM dataset_versions WHERE id = $1", base_version_id
                )
                if base_dataset is None:
                    raise NotFound(f"base version {base_version_id} does not exist")
                if str(base_dataset) != dataset_id:
                    raise InvalidArgument(f"base version {base_version_id} belongs to another dataset")
                live = await conn.fetchval(
                    "SELECT count(*) FROM files WHERE version_id = $1 AND status <> 'deleted'",
                    base_version_id,
                )
                if live > dataset["version_file_limit"]:
                    raise FailedPrecondition(
                        f"base version holds {live} files, more than the limit of "
                        f"{dataset['version_file_limit']} files per version"
                    )
            version_id = await conn.fetchval(
                """
                INSERT INTO dataset_versions (dataset_id, number, description)
                SELECT $1, coalesce(max(number), 0) + 1, $2 FROM dataset_versions WHERE dataset_id = $1
                RETURNING id
                """,
                dataset_id,
                description,
            )
            if base_version_id:
                # Same derived ids as file_id_for(); sequencers carry over so that
                # notifications keep their order in the new version.
                await conn.execute(
                    """
                    INSERT INTO files (id, dataset_id, version_id, bucket, key, uri, size, etag, last_modified,
                                       format, width, height, frames, mode, status, error, sequencer)
                    SELECT md5($2::uuid::text || '/' || key)::uuid, dataset_id, $2, bucket, key, uri, size, etag,
                           last_modified, format, width, height, frames, mode, status, error, sequencer
                    FROM files WHERE version_id = $1 AND status <> 'deleted'
                    """,
                    base_version_id,
                    version_id,
                )
            return _version(await conn.fetchrow(_VERSION_SELECT + " WHERE v.id = $1", version_id))

    async def get_version(self, version_id: str) -> DatasetVersion:
        """A version with its counts; NotFound if there is none."""
        row = await self._pool.fetchrow(_VERSION_SELECT + " WHERE v.id = $1", version_id)
        if row is None:
            raise NotFound(f"dataset version {version_id} does not exist")
        return _version(row)

    async def latest_version_id(self, dataset_id: str) -> str:
        """The id of the dataset's newest version; NotFound if the dataset does not exist."""
        value = await self._pool.fetchval(
            "SELECT id FROM dataset_versions WHERE dataset_id = $1 ORDER BY number DESC LIMIT 1", dataset_id
        )
        if value is None:
            raise NotFound(f"dataset {dataset_id} does not exist")
        return str(value)

    async def list_versions(
        self, dataset_id: str, *, before_number: int | None, limit: int
    ) -> list[DatasetVersion]:
        """Versions newest first, below ``before_number``, at most ``limit``."""
        rows = await self._pool.fetch(
            _VERSION_SELECT + " WHERE v.dataset_id = $1 AND v.number < $2 ORDER BY v.number DESC LIMIT $3",
            dataset_id,
            before_number if before_number is not None else 2**31 - 1,
            limit,
        )
        return [_version(row) for row in rows]

    async def count_live_files(self, version_id: str) -> int:
        """Rows that count toward the version's file limit (all but DELETED)."""
        count: int = await self._pool.fetchval(
            "SELECT count(*) FROM files WHERE version_id = $1 AND status <> 'deleted'", version_id
        )
        return count

    # Files ----------------------------------------------------------------------------------

    async def get_file(self, file_id: str) -> CatalogueFile:
        """One file; NotFound if there is none."""
        row = await self._pool.fetchrow(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = $1", file_id)  # noqa: S608 - constant column list
        if row is None:
            raise NotFound(f"file {file_id} does not exist")
        return _file(row)

    async def list_files(
        self,
        version_id: str,
        *,
        statuses: Sequence[FileStatus],
        key_prefix: str,
        after_key: str | None,
        limit: int,
    ) -> list[CatalogueFile]:
        """Files of a version in key (byte) order, filtered, after ``after_key``."""
        lower = max(after_key or "", key_prefix) if after_key else key_prefix
        lower_op = ">" if after_key and after_key >= key_prefix else ">="
        upper = prefix_upper_bound(key_prefix)
        sql = (
            f"SELECT {_FILE_COLUMNS} FROM files WHERE version_id = $1 AND status = ANY($2::text[]) "  # noqa: S608 - constant fragments
            f'AND key COLLATE "C" {lower_op} $3 '
            + ('AND key COLLATE "C" < $5 ' if upper is not None else "AND $5::text IS NULL ")
            + 'ORDER BY key COLLATE "C" LIMIT $4'
        )
        rows = await self._pool.fetch(sql, version_id, [str(s) for s in statuses], lower, limit, upper)
        return [_file(row) for row in rows]

    async def files_in_range(self, version_id: str, key_range: KeyRange) -> dict[str, CatalogueFile]:
        """The version's rows inside one listing page's key range, by key."""
        partition_prefix = (
            key_range.dataset_prefix if key_range.partition == DIRECT_PARTITION else key_range.partition
        )
        lower, lower_op = (key_range.after, ">") if key_range.after is not None else (partition_prefix, ">=")
        upper: str | None = key_range.through
        upper_op = "<="
        if upper is None:
            upper, upper_op = prefix_upper_bound(partition_prefix), "<"
        sql = (
            f"SELECT {_FILE_COLUMNS} FROM files WHERE version_id = $1 "  # noqa: S608 - constant fragments
            f'AND key COLLATE "C" {lower_op} $2 AND starts_with(key, $3) '
            + (f'AND key COLLATE "C" {upper_op} $4 ' if upper is not None else "AND $4::text IS NULL ")
            + (
                "AND strpos(substr(key, $5), '/') = 0"
                if key_range.partition == DIRECT_PARTITION
                else "AND $5::int > 0"
            )
        )
        rows = await self._pool.fetch(
            sql, version_id, lower, partition_prefix, upper, len(partition_prefix) + 1
        )
        return {row["key"]: _file(row) for row in rows}

    async def files_by_key(self, version_id: str, keys: Sequence[str]) -> dict[str, CatalogueFile]:
        """The version's rows for these keys."""
        rows = await self._pool.fetch(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE version_id = $1 AND key = ANY($2::text[])",  # noqa: S608 - constant column list
            version_id,
            list(keys),
        )
        return {row["key"]: _file(row) for row in rows}

    async def apply_notifications(self, writes: Sequence[NotificationWrite]) -> None:
        """Writes a notification batch in one transaction; an older sequencer never overwrites a newer one."""
        async with self._pool.acquire() as conn, conn.transaction():
            for write in writes:
                head = (write.dataset_id, write.version_id, write.bucket)
                if write.upserts:
                    await conn.execute(
                        _UPSERT_FILES + " WHERE " + _SEQUENCER_NEWER.format(new="EXCLUDED.sequencer"),
                        *head,
                        *_file_arrays(write.upserts),
                    )
                if write.deletions:
                    await conn.execute(
                        _DELETE_NOTIFIED,
                        [row.id for row, _ in write.deletions],
                        [sequencer for _, sequencer in write.deletions],
                    )
                if write.tombstones:
                    await conn.execute(
                        _INSERT_TOMBSTONES,
                        *head,
                        [key for key, _ in write.tombstones],
                        [sequencer for _, sequencer in write.tombstones],
                    )
                if write.sequencers:
                    await conn.execute(
                        _ADVANCE_SEQUENCERS,
                        write.version_id,
                        [key for key, _ in write.sequencers],
                        [sequencer for _, sequencer in write.sequencers],
                    )
                if write.upserts or write.deletions:
                    await conn.execute(
                        "UPDATE dataset_versions SET updated_at = now() WHERE id = $1", write.version_id
                    )

    # Sync jobs ------------------------------------------------------------------------------

    async def create_sync_job(
        self, dataset_id: str, version_id: str, mode: SyncMode, trace_id: str
    ) -> SyncJob:
        """A PENDING sync job; FailedPrecondition if the version has an active sync already."""
        async with self._pool.acquire() as conn, conn.transaction():
            # A sync whose worker died counts as failed, so it does not block new ones forever.
            await conn.execute(
                """
                UPDATE jobs SET state = 'failed', finished_at = now(), updated_at = now(),
                       error = 'the worker stopped reporting progress (crashed or restarted)'
                WHERE kind = 'sync' AND version_id = $1 AND state IN ('pending', 'running')
                  AND updated_at < now() - make_interval(secs => $2)
                """,
                version_id,
                self._stale_s,
            )
            try:
                # A savepoint, so the transaction can still report the job in the way.
                async with conn.transaction():
                    job_id = await conn.fetchval(
                        """
                    INSERT INTO jobs (kind, mode, state, dataset_id, version_id, trace_id, checkpoint)
                    VALUES ('sync', $1, 'pending', $2, $3, $4, '{"partitions": {}}')
                    RETURNING id
                    """,
                        str(mode),
                        dataset_id,
                        version_id,
                        trace_id,
                    )
            except asyncpg.UniqueViolationError:
                active = await conn.fetchval(
                    "SELECT id FROM jobs WHERE kind = 'sync' AND version_id = $1 AND state IN ('pending', 'running')",
                    version_id,
                )
                raise FailedPrecondition(
                    f"a sync of this version is already pending or running (job {active}); "
                    "wait for it or cancel it first"
                ) from None
            return _job(await conn.fetchrow(_JOB_SELECT + " WHERE j.id = $1", job_id, self._stale_s))

    async def get_sync_job(self, job_id: str) -> SyncJob:
        """A sync job; NotFound if there is no sync job with this id."""
        row = await self._pool.fetchrow(
            _JOB_SELECT + " WHERE j.id = $1 AND j.kind = 'sync'", job_id, self._stale_s
        )
        if row is None:
            raise NotFound(f"sync job {job_id} does not exist")
        return _job(row)

    async def cancel_sync_job(self, job_id: str) -> SyncJob:
        """Cancels a pending (or dead) job at once, asks a running one to stop; terminal jobs stay."""
        row = await self._pool.fetchrow(
            """
            UPDATE jobs SET
                state = CASE WHEN state = 'pending'
                               OR (state = 'running' AND updated_at < now() - make_interval(secs => $2))
                             THEN 'cancelled' ELSE state END,
                finished_at = CASE WHEN state = 'pending'
                                     OR (state = 'running' AND updated_at < now() - make_interval(secs => $2))
                                   THEN now() ELSE finished_at END,
                cancel_requested = cancel_requested OR state = 'running',
                updated_at = CASE WHEN state IN ('pending', 'running') THEN now() ELSE updated_at END
            WHERE id = $1 AND kind = 'sync'
            RETURNING id
            """,
            job_id,
            self._stale_s,
        )
        if row is None:
            raise NotFound(f"sync job {job_id} does not exist")
        return await self.get_sync_job(job_id)

    async def resume_sync_job(self, job_id: str) -> SyncJob:
        """Puts a FAILED, CANCELLED or dead job back to PENDING, keeping its checkpoint."""
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    """
                    UPDATE jobs SET state = 'pending', error = NULL, finished_at = NULL,
                           cancel_requested = false, resume_count = resume_count + 1, updated_at = now()
                    WHERE id = $1 AND kind = 'sync'
                      AND (state IN ('failed', 'cancelled')
                           OR (state IN ('pending', 'running') AND updated_at < now() - make_interval(secs => $2)))
                    RETURNING id
                    """,
                    job_id,
                    self._stale_s,
                )
            except asyncpg.UniqueViolationError:
                raise FailedPrecondition(
                    "another sync of this version is pending or running; wait for it or cancel it first"
                ) from None
            if row is None:
                current = await conn.fetchrow(
                    _JOB_SELECT + " WHERE j.id = $1 AND j.kind = 'sync'", job_id, self._stale_s
                )
                if current is None:
                    raise NotFound(f"sync job {job_id} does not exist")
                state = _job(current).state
                if current["cancel_requested"] and state is JobState.RUNNING:
                    raise FailedPrecondition(
                        "the job is still being cancelled; resume it once it is CANCELLED"
                    )
                raise FailedPrecondition(
                    f"the job is {state.name}; only FAILED or CANCELLED jobs can be resumed"
                )
            return _job(await conn.fetchrow(_JOB_SELECT + " WHERE j.id = $1", job_id, self._stale_s))

    async def claim_sync_job(self, job_id: str) -> SyncJob | None:
        """PENDING → RUNNING; None if the job is not pending (claimed elsewhere, cancelled)."""
        row = await self._pool.fetchrow(
            """
            UPDATE jobs SET state = 'running', started_at = coalesce(started_at, now()), updated_at = now()
            WHERE id = $1 AND state = 'pending' AND NOT cancel_requested
            RETURNING id
            """,
            job_id,
        )
        if row is None:
            return None
        return await self.get_sync_job(job_id)

    async def heartbeat(self, job_id: str) -> bool:
        """Marks the job alive; True if it should stop (cancel requested, or no longer ours)."""
        cancel = await self._pool.fetchval(
            "UPDATE jobs SET updated_at = now() WHERE id = $1 AND state = 'running' RETURNING cancel_requested",
            job_id,
        )
        return cancel is None or bool(cancel)

    async def add_partitions(self, job_id: str, partitions: Sequence[str]) -> None:
        """Records discovered partitions (existing progress is kept)."""
        await self._pool.execute(
            """
            UPDATE jobs SET checkpoint = jsonb_set(checkpoint, '{partitions}',
                   $2::jsonb || coalesce(checkpoint -> 'partitions', '{}'::jsonb)), updated_at = now()
            WHERE id = $1
            """,
            job_id,
            _json({name: {} for name in partitions}),
        )

    async def commit_sync_page(self, page: SyncPageWrite) -> bool:
        """Writes a page's rows, counters, errors and checkpoint at once; True if cancel was requested."""
        async with self._pool.acquire() as conn, conn.transaction():
            head = (page.dataset_id, page.version_id, page.bucket)
            if page.writes:
                await conn.execute(_UPSERT_FILES + _SYNC_GUARD, *head, *_file_arrays(page.writes))
            if page.deletions:
                await conn.execute(
                    """
                    UPDATE files SET status = 'deleted', error = NULL, updated_at = now()
                    WHERE id = ANY($1::uuid[]) AND status <> 'deleted' AND updated_at <= $2
                    """,
                    [row.id for row in page.deletions],
                    page.listed_at,
                )
            if page.writes or page.deletions:
                await conn.execute(
                    "UPDATE dataset_versions SET updated_at = now() WHERE id = $1", page.version_id
                )
            # Right-hand side wins in jsonb ||: discovered partitions never reset
            # progress, and this page's progress always lands.
            discovered: dict[str, dict[str, object]] = {name: {} for name in page.new_partitions}
            progress = {page.partition: {"after": page.progress.after, "done": page.progress.done}}
            cancel = await conn.fetchval(
                """
                UPDATE jobs SET
                    counts = (SELECT jsonb_object_agg(k, coalesce((counts ->> k)::bigint, 0) + v::bigint)
                              FROM jsonb_each_text($2::jsonb) AS c(k, v)),
                    checkpoint = jsonb_set(checkpoint, '{partitions}',
                        $3::jsonb || coalesce(checkpoint -> 'partitions', '{}'::jsonb) || $5::jsonb),
                    recent_errors = CASE WHEN jsonb_array_length($4::jsonb) = 0 THEN recent_errors
                        ELSE jsonb_path_query_array($4::jsonb || recent_errors, '$[0 to 19]') END,
                    updated_at = now()
                WHERE id = $1
                RETURNING cancel_requested
                """,
                page.job_id,
                _json(page.counts.as_dict()),
                _json(discovered),
                _error_items(page.errors),
                _json(progress),
            )
        return bool(cancel)

    async def finish_job(self, job_id: str, state: JobState, error: str | None = None) -> None:
        """Moves a job to a terminal state."""
        await self._pool.execute(
            """
            UPDATE jobs SET state = $2, error = $3, finished_at = now(), updated_at = now()
            WHERE id = $1 AND state IN ('pending', 'running')
            """,
            job_id,
            str(state),
            error,
        )
