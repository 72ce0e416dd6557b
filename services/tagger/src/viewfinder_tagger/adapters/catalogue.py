"""The tagger's reads and writes of the PostgreSQL catalogue.

Tables (migrations 0002, 0003, 0009): ``tag_definitions`` and
``tag_definition_versions`` (owned), ``file_tags`` and ``file_label_runs``
(owned), ``dataset_labeling_settings`` (owned), ``jobs`` rows of kind
``label`` (owned), and ``datasets``/``dataset_versions``/``files`` (read).

Storing a file's labels is one transaction: its AI tags of the definition are
replaced, user rows are never touched, and the run is recorded in
``file_label_runs`` — so a file is either fully labeled or not at all, which
is what makes cancel/resume and redelivered events safe.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from viewfinder_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from viewfinder_common.tags_sql import tag_in_effect
from viewfinder_tagger.domain.answers import ValidatedTag
from viewfinder_tagger.domain.definitions import (
    DefinitionContent,
    TagDefinition,
    groups_from_json,
    groups_to_json,
    tags_from_json,
    tags_to_json,
)
from viewfinder_tagger.domain.jobs import JOB_KIND_LABEL, JobMode, JobParams, JobState, LabelJobCounts

# S608 is silenced below where only module constants (column lists) are
# interpolated into SQL; every value is a bind parameter.
SOURCE_AI = "ai"
SOURCE_USER = "user"


def parse_id(what: str, value: str) -> uuid.UUID:
    """``value`` as a UUID, or INVALID_ARGUMENT naming ``what``."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"{what} {value!r} is not a valid id (a UUID)") from exc


def encode_page_token(data: dict[str, Any]) -> str:
    """An opaque page token."""
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_page_token(token: str) -> dict[str, Any]:
    """Inverse of ``encode_page_token``; INVALID_ARGUMENT for a token we did not issue."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not a token this service issued") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("page_token is not a token this service issued")
    return data


@dataclass(frozen=True)
class FileRow:
    """The catalogue facts about one file that labeling needs."""

    id: str
    dataset_id: str
    version_id: str
    bucket: str
    key: str
    uri: str
    etag: str
    size: int
    last_modified: datetime | None
    status: str


@dataclass(frozen=True)
class TagRow:
    """One tag of a file, with its provenance."""

    name: str
    value: str
    source: str
    confidence: float | None
    model: str
    definition_id: str
    definition_version: int


@dataclass(frozen=True)
class LabelingSettings:
    """A dataset's automatic labeling settings (``dataset_labeling_settings``)."""

    dataset_id: str
    automatic: bool
    definition_id: str | None
    definition_version: int
    model_connection: str


@dataclass(frozen=True)
class JobRecord:
    """A label job row."""

    id: str
    mode: JobMode
    state: JobState
    dataset_id: str
    version_id: str
    params: JobParams
    counts: LabelJobCounts
    error: str
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class JobScope:
    """How a job's files split at the start of a run."""

    total: int
    finished: int
    skipped: int


_FILE_COLUMNS = (
    "f.id, f.dataset_id, f.version_id, f.bucket, f.key, f.uri, f.etag, f.size, f.last_modified, f.status"
)


def _file(row: asyncpg.Record) -> FileRow:
    return FileRow(
        id=str(row["id"]),
        dataset_id=str(row["dataset_id"]),
        version_id=str(row["version_id"]),
        bucket=row["bucket"],
        key=row["key"],
        uri=row["uri"],
        etag=row["etag"],
        size=row["size"],
        last_modified=row["last_modified"],
        status=row["status"],
    )


def _definition(row: asyncpg.Record) -> TagDefinition:
    return TagDefinition(
        id=str(row["id"]),
        name=row["name"],
        version=row["version"],
        content=DefinitionContent(
            description=row["description"],
            guide_prompt=row["guide_prompt"],
            tags=tags_from_json(json.loads(row["tags"])),
            groups=groups_from_json(json.loads(row["groups"])),
        ),
        created_at=row["created_at"],
    )


def _job(row: asyncpg.Record) -> JobRecord:
    return JobRecord(
        id=str(row["id"]),
        mode=JobMode(row["mode"]),
        state=JobState(row["state"]),
        dataset_id=str(row["dataset_id"]) if row["dataset_id"] else "",
        version_id=str(row["version_id"]) if row["version_id"] else "",
        params=JobParams.from_json(json.loads(row["params"])),
        counts=LabelJobCounts.from_json(json.loads(row["counts"])),
        error=row["error"] or "",
        cancel_requested=row["cancel_requested"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
    )


def _tag(row: asyncpg.Record) -> TagRow:
    return TagRow(
        name=row["tag"],
        value=row["value"],
        source=row["source"],
        confidence=row["confidence"],
        model=row["model"] or "",
        definition_id=str(row["definition_id"]) if row["definition_id"] else "",
        definition_version=row["definition_version"] or 0,
    )


_DEFINITION_SELECT = """
    SELECT d.id, d.name, v.version, v.description, v.guide_prompt, v.tags::text AS tags,
           v.groups::text AS groups, v.created_at
    FROM tag_definitions d JOIN tag_definition_versions v ON v.definition_id = d.id
"""

# The file's ($1) tags in effect, of one source ($2) or all (NULL).
_TAGS_IN_EFFECT = (
    "SELECT t.tag, t.value, t.source, t.confidence, t.model, t.definition_id, t.definition_version "  # noqa: S608 (constants only)
    f"FROM file_tags t WHERE t.file_id = $1 AND ($2::text IS NULL OR t.source = $2) AND {tag_in_effect('t')} "
    "ORDER BY t.tag, t.source"
)

_JOB_COLUMNS = """
    id, mode, state, dataset_id, version_id, params::text AS params, counts::text AS counts, error,
    cancel_requested, created_at, started_at, finished_at, updated_at
"""


class Catalogue:
    """SQL of the tagger, over an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- tag definitions ----------------------------------------------------------

    async def create_definition(self, name: str, content: DefinitionContent) -> TagDefinition:
        """Stores a new definition at version 1; ALREADY_EXISTS if the name is taken."""
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                definition_id = await conn.fetchval(
                    "INSERT INTO tag_definitions (name, description) VALUES ($1, $2) RETURNING id",
                    name,
                    content.description,
                )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(f"a tag definition named {name!r} exists already") from exc
            await self._insert_version(conn, definition_id, 1, content)
            return await self._get_definition(conn, definition_id, 1)

    async def create_definition_version(
        self, definition_id: str, content: DefinitionContent
    ) -> TagDefinition:
        """Stores the next version; NOT_FOUND for an unknown definition."""
        did = parse_id("tag_definition_id", definition_id)
        async with self._pool.acquire() as conn, conn.transaction():
            # The row lock serialises concurrent edits, so version numbers never collide.
            exists = await conn.fetchval("SELECT true FROM tag_definitions WHERE id = $1 FOR UPDATE", did)
            if not exists:
                raise NotFound(f"tag definition {definition_id} does not exist")
            latest = await conn.fetchval(
                "SELECT max(version) FROM tag_definition_versions WHERE definition_id = $1", did
            )
            version = int(latest or 0) + 1
            await self._insert_version(conn, did, version, content)
            await conn.execute(
                "UPDATE tag_definitions SET description = $2 WHERE id = $1", did, content.description
            )
            return await self._get_definition(conn, did, version)

    @staticmethod
    async def _insert_version(
        conn: asyncpg.Connection, definition_id: uuid.UUID, version: int, content: DefinitionContent
    ) -> None:
        await conn.execute(
            """
            INSERT INTO tag_definition_versions
                (definition_id, version, guide_prompt, tags, groups, description)
            VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)
            """,
            definition_id,
            version,
            content.guide_prompt,
            json.dumps(tags_to_json(content.tags)),
            json.dumps(groups_to_json(content.groups)),
            content.description,
        )

    @staticmethod
    async def _get_definition(
        conn: asyncpg.Connection, definition_id: uuid.UUID, version: int
    ) -> TagDefinition:
        row = await conn.fetchrow(
            _DEFINITION_SELECT + " WHERE d.id = $1 AND v.version = $2", definition_id, version
        )
        assert row is not None
        return _definition(row)

    async def get_definition(
        self, *, definition_id: str | None = None, name: str | None = None, version: int = 0
    ) -> TagDefinition:
        """One version (0: the latest) by id or name; NOT_FOUND if either does not exist."""
        if version < 0:
            raise InvalidArgument(f"version must be 0 (latest) or positive; got {version}")
        key: uuid.UUID | str
        if definition_id:
            where, key, what = (
                "d.id = $1",
                parse_id("tag_definition_id", definition_id),
                f"id {definition_id}",
            )
        elif name:
            where, key, what = "d.name = $1", name, f"name {name!r}"
        else:
            raise InvalidArgument("give tag_definition_id or name")
        version_clause = (
            "v.version = $2"
            if version
            else "v.version = (SELECT max(version) FROM tag_definition_versions WHERE definition_id = d.id)"
        )
        args: list[Any] = [key, version] if version else [key]
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(f"{_DEFINITION_SELECT} WHERE {where} AND {version_clause}", *args)
            if row is None:
                exists = await conn.fetchval(f"SELECT true FROM tag_definitions d WHERE {where}", key)  # noqa: S608
                if exists:
                    raise NotFound(f"tag definition with {what} has no version {version}")
                raise NotFound(f"no tag definition with {what}")
        return _definition(row)

    async def list_definitions(self, *, page_size: int, after_name: str | None) -> list[TagDefinition]:
        """Definitions at their latest versions, ordered by name, after ``after_name``."""
        rows = await self._pool.fetch(
            f"""{_DEFINITION_SELECT}
            WHERE v.version = (SELECT max(version) FROM tag_definition_versions WHERE definition_id = d.id)
              AND ($1::text IS NULL OR d.name > $1)
            ORDER BY d.name LIMIT $2
            """,  # noqa: S608
            after_name,
            page_size,
        )
        return [_definition(r) for r in rows]

    async def list_definition_versions(
        self, definition_id: str, *, page_size: int, before_version: int | None
    ) -> list[TagDefinition]:
        """Versions newest first, older than ``before_version``; NOT_FOUND for an unknown definition."""
        did = parse_id("tag_definition_id", definition_id)
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT true FROM tag_definitions WHERE id = $1", did):
                raise NotFound(f"tag definition {definition_id} does not exist")
            rows = await conn.fetch(
                _DEFINITION_SELECT
                + " WHERE d.id = $1 AND ($2::int IS NULL OR v.version < $2) ORDER BY v.version DESC LIMIT $3",
                did,
                before_version,
                page_size,
            )
        return [_definition(r) for r in rows]

    # -- files, tags and label runs -------------------------------------------------

    async def get_file(self, file_id: str) -> FileRow:
        """One file; NOT_FOUND if it does not exist."""
        row = await self._pool.fetchrow(
            f"SELECT {_FILE_COLUMNS} FROM files f WHERE f.id = $1",  # noqa: S608
            parse_id("file_id", file_id),
        )
        if row is None:
            raise NotFound(f"file {file_id} does not exist")
        return _file(row)

    async def has_current_run(
        self, file_id: str, definition_id: str, definition_version: int, etag: str
    ) -> bool:
        """Whether the file's content with this ETag was labeled with this definition version."""
        return bool(
            await self._pool.fetchval(
                """
                SELECT true FROM file_label_runs
                WHERE file_id = $1 AND definition_id = $2 AND definition_version = $3 AND etag = $4
                """,
                uuid.UUID(file_id),
                uuid.UUID(definition_id),
                definition_version,
                etag,
            )
        )

    async def store_labels(
        self,
        file: FileRow,
        definition: TagDefinition,
        model_id: str,
        tags: Sequence[ValidatedTag],
        *,
        before_commit: Callable[[list[TagRow]], Awaitable[None]] | None = None,
    ) -> list[TagRow]:
        """Replaces the file's AI tags of this definition and records the run; returns tags in effect.

        ``before_commit`` gets the tags in effect while the transaction is
        still open (used to publish FileTagged): if it raises, nothing is
        stored and the file stays unlabeled, so no labeled file ever lacks
        its event.
        """
        fid, did = uuid.UUID(file.id), uuid.UUID(definition.id)
        names = [t.name for t in tags]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                DELETE FROM file_tags
                WHERE file_id = $1 AND source = 'ai' AND definition_id = $2 AND NOT (tag = ANY($3::text[]))
                """,
                fid,
                did,
                names,
            )
            if tags:
                await conn.execute(
                    """
                    INSERT INTO file_tags (file_id, tag, source, value, confidence, model, definition_id,
                                           definition_version, etag)
                    SELECT $1, x.tag, 'ai', x.value, x.confidence, $2, $3, $4, $5
                    FROM unnest($6::text[], $7::text[], $8::real[]) AS x(tag, value, confidence)
                    ON CONFLICT (file_id, tag, source) DO UPDATE SET
                        value = EXCLUDED.value, confidence = EXCLUDED.confidence, model = EXCLUDED.model,
                        definition_id = EXCLUDED.definition_id,
                        definition_version = EXCLUDED.definition_version,
                        etag = EXCLUDED.etag, removed = false, updated_at = now()
                    """,
                    fid,
                    model_id,
                    did,
                    definition.version,
                    file.etag,
                    names,
                    [t.value for t in tags],
                    [t.confidence for t in tags],
                )
            await conn.execute(
                """
                INSERT INTO file_label_runs (file_id, definition_id, definition_version, etag, model)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (file_id, definition_id, definition_version) DO UPDATE SET
                    etag = EXCLUDED.etag, model = EXCLUDED.model, labeled_at = now()
                """,
                fid,
                did,
                definition.version,
                file.etag,
                model_id,
            )
            in_effect = [_tag(r) for r in await conn.fetch(_TAGS_IN_EFFECT, fid, None)]
            if before_commit is not None:
                await before_commit(in_effect)
        return in_effect

    async def remove_ai_labels(self, file_id: str) -> int:
        """Deletes a deleted file's AI tags and runs (user decisions stay); returns the tags removed."""
        fid = uuid.UUID(file_id)
        async with self._pool.acquire() as conn, conn.transaction():
            removed = await conn.fetchval(
                "WITH d AS (DELETE FROM file_tags WHERE file_id = $1 AND source = 'ai' RETURNING 1) "
                "SELECT count(*) FROM d",
                fid,
            )
            await conn.execute("DELETE FROM file_label_runs WHERE file_id = $1", fid)
        return int(removed)

    async def tags_in_effect(self, file_id: str, source: str | None = None) -> list[TagRow]:
        """The file's tags, user removals applied; NOT_FOUND for an unknown file."""
        fid = parse_id("file_id", file_id)
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT true FROM files WHERE id = $1", fid):
                raise NotFound(f"file {file_id} does not exist")
            rows = await conn.fetch(_TAGS_IN_EFFECT, fid, source)
        return [_tag(r) for r in rows]

    async def tags_in_effect_if_exists(self, file_id: str) -> list[TagRow]:
        """The file's tags in effect; empty when the file row is gone."""
        rows = await self._pool.fetch(_TAGS_IN_EFFECT, uuid.UUID(file_id), None)
        return [_tag(r) for r in rows]

    async def update_user_tags(
        self, file_id: str, add: Sequence[tuple[str, str]], remove: Sequence[tuple[str, str]]
    ) -> list[TagRow]:
        """Records a person's additions and removals as ``user`` rows; returns tags in effect."""
        fid = parse_id("file_id", file_id)
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT true FROM files WHERE id = $1 FOR SHARE", fid):
                raise NotFound(f"file {file_id} does not exist")
            for (name, value), removed in [*((a, False) for a in add), *((r, True) for r in remove)]:
                await conn.execute(
                    """
                    INSERT INTO file_tags (file_id, tag, source, value, removed)
                    VALUES ($1, $2, 'user', $3, $4)
                    ON CONFLICT (file_id, tag, source) DO UPDATE SET
                        value = EXCLUDED.value, removed = EXCLUDED.removed, updated_at = now()
                    """,
                    fid,
                    name,
                    value,
                    removed,
                )
            rows = await conn.fetch(_TAGS_IN_EFFECT, fid, None)
        return [_tag(r) for r in rows]

    # -- dataset labeling settings ----------------------------------------------------

    async def labeling_settings(self, dataset_ids: Sequence[str]) -> dict[str, LabelingSettings]:
        """Settings of those datasets that have a row."""
        rows = await self._pool.fetch(
            """
            SELECT dataset_id, automatic, definition_id, definition_version, model_connection
            FROM dataset_labeling_settings WHERE dataset_id = ANY($1::uuid[])
            """,
            [uuid.UUID(d) for d in dataset_ids],
        )
        return {
            str(r["dataset_id"]): LabelingSettings(
                dataset_id=str(r["dataset_id"]),
                automatic=r["automatic"],
                definition_id=str(r["definition_id"]) if r["definition_id"] else None,
                definition_version=r["definition_version"],
                model_connection=r["model_connection"],
            )
            for r in rows
        }

    async def set_labeling_settings(self, settings: LabelingSettings) -> None:
        """Creates or replaces a dataset's labeling settings."""
        await self._pool.execute(
            """
            INSERT INTO dataset_labeling_settings
                (dataset_id, automatic, definition_id, definition_version, model_connection)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (dataset_id) DO UPDATE SET
                automatic = EXCLUDED.automatic, definition_id = EXCLUDED.definition_id,
                definition_version = EXCLUDED.definition_version,
                model_connection = EXCLUDED.model_connection, updated_at = now()
            """,
            uuid.UUID(settings.dataset_id),
            settings.automatic,
            uuid.UUID(settings.definition_id) if settings.definition_id else None,
            settings.definition_version,
            settings.model_connection,
        )

    # -- label jobs --------------------------------------------------------------------

    async def dataset_of_version(self, version_id: str) -> str:
        """The dataset id of a dataset version; NOT_FOUND if the version does not exist."""
        dataset_id = await self._pool.fetchval(
            "SELECT dataset_id FROM dataset_versions WHERE id = $1",
            parse_id("dataset_version_id", version_id),
        )
        if dataset_id is None:
            raise NotFound(f"dataset version {version_id} does not exist")
        return str(dataset_id)

    async def insert_job(
        self, *, dataset_id: str, version_id: str, mode: JobMode, params: JobParams, counts: LabelJobCounts
    ) -> JobRecord:
        """A new PENDING label job."""
        row = await self._pool.fetchrow(
            f"""
            INSERT INTO jobs (kind, mode, state, dataset_id, version_id, params, counts)
            VALUES ($1, $2, 'pending', $3, $4, $5::jsonb, $6::jsonb)
            RETURNING {_JOB_COLUMNS}
            """,  # noqa: S608
            JOB_KIND_LABEL,
            mode.value,
            uuid.UUID(dataset_id),
            uuid.UUID(version_id),
            json.dumps(params.to_json()),
            json.dumps(counts.to_json()),
        )
        assert row is not None
        return _job(row)

    async def get_job(self, job_id: str) -> JobRecord:
        """A label job; NOT_FOUND if there is no label job with that id."""
        row = await self._pool.fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1 AND kind = $2",  # noqa: S608
            parse_id("job_id", job_id),
            JOB_KIND_LABEL,
        )
        if row is None:
            raise NotFound(f"label job {job_id} does not exist")
        return _job(row)

    async def request_cancel(self, job_id: str) -> JobRecord:
        """PENDING jobs are cancelled at once; RUNNING ones are flagged for their worker."""
        jid = parse_id("job_id", job_id)
        row = await self._pool.fetchrow(
            f"""
            UPDATE jobs SET
                state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE state END,
                finished_at = CASE WHEN state = 'pending' THEN now() ELSE finished_at END,
                cancel_requested = CASE WHEN state IN ('pending', 'running') THEN true
                                        ELSE cancel_requested END,
                updated_at = now()
            WHERE id = $1 AND kind = $2
            RETURNING {_JOB_COLUMNS}
            """,  # noqa: S608
            jid,
            JOB_KIND_LABEL,
        )
        if row is None:
            raise NotFound(f"label job {job_id} does not exist")
        return _job(row)

    async def resume_job(self, job_id: str) -> JobRecord:
        """FAILED or CANCELLED → PENDING (resume_count + 1); FAILED_PRECONDITION otherwise."""
        jid = parse_id("job_id", job_id)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1 AND kind = $2 FOR UPDATE",  # noqa: S608
                jid,
                JOB_KIND_LABEL,
            )
            if row is None:
                raise NotFound(f"label job {job_id} does not exist")
            job = _job(row)
            if job.state not in {JobState.FAILED, JobState.CANCELLED}:
                raise FailedPrecondition(
                    f"label job {job_id} is {job.state.value}; only failed or cancelled jobs can be resumed"
                )
            counts = LabelJobCounts.from_json(json.loads(row["counts"]))
            counts_json = counts.to_json() | {"resume_count": counts.resume_count + 1}
            updated = await conn.fetchrow(
                f"""
                UPDATE jobs SET state = 'pending', cancel_requested = false, error = NULL,
                    finished_at = NULL, counts = $2::jsonb, updated_at = now()
                WHERE id = $1 RETURNING {_JOB_COLUMNS}
                """,  # noqa: S608
                jid,
                json.dumps(counts_json),
            )
        assert updated is not None
        return _job(updated)

    async def claim_job(self, *, worker_id: str, lease_s: float) -> JobRecord | None:
        """Takes the oldest PENDING label job, or a RUNNING one whose worker stopped heartbeating."""
        row = await self._pool.fetchrow(
            f"""
            UPDATE jobs SET state = 'running', started_at = coalesce(started_at, now()), updated_at = now(),
                checkpoint = jsonb_build_object('worker', $2::text)
            WHERE id = (
                SELECT id FROM jobs
                WHERE kind = $1 AND (state = 'pending'
                      OR (state = 'running' AND updated_at < now() - make_interval(secs => $3)))
                ORDER BY created_at
                FOR UPDATE SKIP LOCKED
                LIMIT 1)
            RETURNING {_JOB_COLUMNS}
            """,  # noqa: S608
            JOB_KIND_LABEL,
            worker_id,
            lease_s,
        )
        return _job(row) if row else None

    async def job_scope(self, job: JobRecord) -> JobScope:
        """How many active files the job covers, has finished, and (incremental) may skip."""
        row = await self._pool.fetchrow(
            """
            SELECT count(*) AS total,
                   count(*) FILTER (WHERE r.labeled_at >= $4) AS finished,
                   count(*) FILTER (WHERE r.labeled_at < $4) AS current_before
            FROM files f
            LEFT JOIN file_label_runs r ON r.file_id = f.id AND r.definition_id = $2
                 AND r.definition_version = $3 AND r.etag = f.etag
            WHERE f.version_id = $1 AND f.status = 'active'
            """,
            uuid.UUID(job.version_id),
            uuid.UUID(job.params.definition_id),
            job.params.definition_version,
            job.created_at,
        )
        assert row is not None
        skipped = row["current_before"] if job.mode is JobMode.INCREMENTAL else 0
        return JobScope(total=row["total"], finished=row["finished"], skipped=skipped)

    async def files_to_label(self, job: JobRecord, *, after_id: str | None, limit: int) -> list[FileRow]:
        """The next page (by file id) of active files this job still has to label."""
        rows = await self._pool.fetch(
            f"""
            SELECT {_FILE_COLUMNS}
            FROM files f
            LEFT JOIN file_label_runs r ON r.file_id = f.id AND r.definition_id = $2
                 AND r.definition_version = $3 AND r.etag = f.etag
            WHERE f.version_id = $1 AND f.status = 'active'
              AND ($5::uuid IS NULL OR f.id > $5)
              AND (r.file_id IS NULL OR ($6 AND r.labeled_at < $4))
            ORDER BY f.id
            LIMIT $7
            """,  # noqa: S608
            uuid.UUID(job.version_id),
            uuid.UUID(job.params.definition_id),
            job.params.definition_version,
            job.created_at,
            uuid.UUID(after_id) if after_id else None,
            job.mode is JobMode.FULL,
            limit,
        )
        return [_file(r) for r in rows]

    async def save_job_progress(
        self, job_id: str, *, worker_id: str, counts: LabelJobCounts
    ) -> tuple[bool, bool]:
        """Writes counts as a heartbeat; returns (still ours, cancel requested)."""
        row = await self._pool.fetchrow(
            """
            UPDATE jobs SET counts = $3::jsonb, progress = $4, updated_at = now()
            WHERE id = $1 AND state = 'running' AND checkpoint->>'worker' = $2
            RETURNING cancel_requested
            """,
            uuid.UUID(job_id),
            worker_id,
            json.dumps(counts.to_json()),
            counts.progress,
        )
        if row is None:
            return False, False
        return True, bool(row["cancel_requested"])

    async def finish_job(
        self, job_id: str, *, worker_id: str, state: JobState, counts: LabelJobCounts, error: str = ""
    ) -> bool:
        """Moves a running job to a terminal state; False if another worker owns it now."""
        status = await self._pool.execute(
            """
            UPDATE jobs SET state = $3, counts = $4::jsonb, progress = $5, error = nullif($6, ''),
                finished_at = now(), updated_at = now(), cancel_requested = false
            WHERE id = $1 AND state = 'running' AND checkpoint->>'worker' = $2
            """,
            uuid.UUID(job_id),
            worker_id,
            state.value,
            json.dumps(counts.to_json()),
            counts.progress,
            error,
        )
        return bool(status.endswith(" 1"))

    async def release_job(self, job_id: str, *, worker_id: str, counts: LabelJobCounts) -> None:
        """Hands a running job back (PENDING) at shutdown, so the next worker resumes it at once."""
        await self._pool.execute(
            """
            UPDATE jobs SET state = 'pending', counts = $3::jsonb, progress = $4, updated_at = now()
            WHERE id = $1 AND state = 'running' AND checkpoint->>'worker' = $2
            """,
            uuid.UUID(job_id),
            worker_id,
            json.dumps(counts.to_json()),
            counts.progress,
        )
