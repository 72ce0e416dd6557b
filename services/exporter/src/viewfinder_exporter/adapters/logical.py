"""Logical datasets in the catalogue: reads for the RPCs, and the writes of an export run.

A version is built in state 'building' (invisible) and made 'ready' in one
transaction that also numbers it; see ``0006_exports.sql``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from viewfinder_common.errors import FailedPrecondition, InvalidArgument, NotFound
from viewfinder_exporter.adapters.catalogue import parse_uuid
from viewfinder_exporter.adapters.jobs import JobLeaseStore
from viewfinder_exporter.domain.jobs import ExportCheckpoint
from viewfinder_exporter.domain.manifest import version_checksum_line
from viewfinder_exporter.domain.page_tokens import decode_page_token, encode_page_token
from viewfinder_exporter.domain.records import ExportRecord, TagSnapshot
from viewfinder_exporter.domain.targets import check_logical_dataset_name, parse_version_name

_ITEM_COLUMNS = (
    "file_id",
    "dataset_id",
    "dataset_version_id",
    "storage_connection",
    "uri",
    "bucket",
    "key",
    "size",
    "etag",
    "last_modified",
    "format",
    "width",
    "height",
    "frames",
    "mode",
    "tags",
    "score",
)
_ITEM_SELECT = "i.position, " + ", ".join(f"i.{column}" for column in _ITEM_COLUMNS)
_DATASET_SELECT = """
    SELECT d.id, d.name, d.description, d.created_at, d.updated_at,
        coalesce(max(v.number), 0) AS latest_version, count(v.id) AS version_count
    FROM logical_datasets d
    LEFT JOIN logical_dataset_versions v ON v.logical_dataset_id = d.id AND v.state = 'ready'
"""
_VERSION_SELECT = """
    SELECT v.id, v.logical_dataset_id, v.number, v.name, v.description, v.item_count, v.export_job_id,
        v.checksum, v.created_at
    FROM logical_dataset_versions v
"""
# Items of the target version missing from the base (change 1, ADDED) and
# items of the base missing from the target (change 2, REMOVED). Items match
# when file id, etag and tags are equal, so a file whose content or labels
# changed between the versions shows as its old snapshot REMOVED and its new
# one ADDED: for training data a label change is a change. $1 base, $2 target.
_DIFF_SQL = """
    WITH diff AS (
        SELECT 1 AS change, i.* FROM logical_dataset_items i
        WHERE i.version_id = $2 AND NOT EXISTS (
            SELECT 1 FROM logical_dataset_items b
            WHERE b.version_id = $1 AND b.file_id = i.file_id AND b.etag = i.etag AND b.tags = i.tags)
        UNION ALL
        SELECT 2 AS change, i.* FROM logical_dataset_items i
        WHERE i.version_id = $1 AND NOT EXISTS (
            SELECT 1 FROM logical_dataset_items t
            WHERE t.version_id = $2 AND t.file_id = i.file_id AND t.etag = i.etag AND t.tags = i.tags)
    )
"""


@dataclass(frozen=True)
class LogicalDatasetRecord:
    """A logical dataset with the numbers of its ready versions."""

    id: str
    name: str
    description: str
    latest_version: int
    version_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class LogicalVersionRecord:
    """A ready version of a logical dataset."""

    id: str
    logical_dataset_id: str
    number: int
    name: str
    description: str
    item_count: int
    export_job_id: str
    checksum: str
    created_at: datetime


@dataclass(frozen=True)
class ItemRecord:
    """One item of a version."""

    position: int
    record: ExportRecord


@dataclass(frozen=True)
class DiffPage:
    """One page of a diff and the totals."""

    entries: list[tuple[int, ItemRecord]]
    next_page_token: str
    added: int
    removed: int


def _dataset(row: Any) -> LogicalDatasetRecord:
    return LogicalDatasetRecord(
        id=str(row["id"]),
        name=row["name"],
        description=row["description"],
        latest_version=int(row["latest_version"]),
        version_count=int(row["version_count"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _version(row: Any) -> LogicalVersionRecord:
    return LogicalVersionRecord(
        id=str(row["id"]),
        logical_dataset_id=str(row["logical_dataset_id"]),
        number=row["number"],
        name=row["name"],
        description=row["description"],
        item_count=row["item_count"],
        export_job_id=str(row["export_job_id"] or ""),
        checksum=row["checksum"],
        created_at=row["created_at"],
    )


def _item(row: Any) -> ItemRecord:
    return ItemRecord(
        position=row["position"],
        record=ExportRecord(
            file_id=str(row["file_id"]),
            dataset_id=str(row["dataset_id"]),
            dataset_version_id=str(row["dataset_version_id"]),
            uri=row["uri"],
            bucket=row["bucket"],
            key=row["key"],
            size=row["size"],
            etag=row["etag"],
            last_modified=row["last_modified"],
            format=row["format"] or "",
            width=row["width"] or 0,
            height=row["height"] or 0,
            frames=row["frames"] or 0,
            mode=row["mode"] or "",
            tags=tuple(TagSnapshot.from_json(tag) for tag in json.loads(row["tags"])),
            score=row["score"],
            storage_connection=row["storage_connection"],
        ),
    )


def _item_tuple(version_id: uuid.UUID, position: int, record: ExportRecord) -> tuple[Any, ...]:
    return (
        version_id,
        position,
        uuid.UUID(record.file_id),
        uuid.UUID(record.dataset_id),
        uuid.UUID(record.dataset_version_id),
        record.storage_connection,
        record.uri,
        record.bucket,
        record.key,
        record.size,
        record.etag,
        record.last_modified,
        record.format or None,
        record.width or None,
        record.height or None,
        record.frames or None,
        record.mode or None,
        json.dumps([tag.to_json() for tag in record.tags], separators=(",", ":")),
        record.score,
    )


class LogicalDatasets:
    """Reads and deletes of logical datasets, versions and items."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def list_datasets(
        self, *, page_size: int, page_token: str
    ) -> tuple[list[LogicalDatasetRecord], str]:
        """A page of logical datasets ordered by name."""
        after = decode_page_token("logical-datasets", page_token)
        rows = await self._pool.fetch(
            f"{_DATASET_SELECT} WHERE ($1::text IS NULL OR d.name > $1) GROUP BY d.id ORDER BY d.name LIMIT $2",
            after[0] if after else None,
            page_size + 1,
        )
        page = [_dataset(row) for row in rows[:page_size]]
        token = encode_page_token("logical-datasets", [page[-1].name]) if len(rows) > page_size else ""
        return page, token

    async def get_dataset(self, *, dataset_id: str = "", name: str = "") -> LogicalDatasetRecord:
        """A logical dataset by id or by name; NOT_FOUND when there is none."""
        if dataset_id:
            row = await self._pool.fetchrow(
                f"{_DATASET_SELECT} WHERE d.id = $1 GROUP BY d.id",
                parse_uuid(dataset_id, "logical_dataset_id"),
            )
        elif name:
            row = await self._pool.fetchrow(f"{_DATASET_SELECT} WHERE d.name = $1 GROUP BY d.id", name)
        else:
            raise InvalidArgument("give a logical_dataset_id or a name")
        if row is None:
            raise NotFound(f"logical dataset {dataset_id or name!r} does not exist")
        return _dataset(row)

    async def delete_dataset(self, dataset_id: str) -> int:
        """Deletes a logical dataset with its versions; returns how many ready versions went with it."""
        async with self._pool.acquire() as conn, conn.transaction():
            # The statement's snapshot still sees the versions the cascade deletes.
            row = await conn.fetchrow(
                """
                WITH gone AS (DELETE FROM logical_datasets WHERE id = $1 RETURNING id)
                SELECT (SELECT count(*) FROM gone) AS datasets,
                       count(v.id) FILTER (WHERE v.state = 'ready') AS versions
                FROM gone LEFT JOIN logical_dataset_versions v ON v.logical_dataset_id = gone.id
                """,
                parse_uuid(dataset_id, "logical_dataset_id"),
            )
        if row is None or row["datasets"] == 0:
            raise NotFound(f"logical dataset {dataset_id} does not exist")
        return int(row["versions"])

    async def list_versions(
        self, dataset_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[LogicalVersionRecord], str]:
        """A page of ready versions, newest first."""
        await self.get_dataset(dataset_id=dataset_id)
        after = decode_page_token("logical-versions", page_token)
        rows = await self._pool.fetch(
            f"""{_VERSION_SELECT}
            WHERE v.logical_dataset_id = $1 AND v.state = 'ready' AND ($2::integer IS NULL OR v.number < $2)
            ORDER BY v.number DESC LIMIT $3""",
            uuid.UUID(dataset_id),
            int(after[0]) if after else None,
            page_size + 1,
        )
        page = [_version(row) for row in rows[:page_size]]
        token = encode_page_token("logical-versions", [page[-1].number]) if len(rows) > page_size else ""
        return page, token

    async def get_version(self, version_id: str) -> LogicalVersionRecord:
        """A ready version by id; NOT_FOUND otherwise."""
        row = await self._pool.fetchrow(
            f"{_VERSION_SELECT} WHERE v.id = $1 AND v.state = 'ready'",
            parse_uuid(version_id, "logical_dataset_version_id"),
        )
        if row is None:
            raise NotFound(f"logical dataset version {version_id} does not exist")
        return _version(row)

    async def get_version_by_name(self, name: str, version: str) -> LogicalVersionRecord:
        """A ready version by dataset name and "vN" (or "latest"/empty for the newest)."""
        check_logical_dataset_name(name)
        number = parse_version_name(version)
        row = await self._pool.fetchrow(
            f"""{_VERSION_SELECT} JOIN logical_datasets d ON d.id = v.logical_dataset_id
            WHERE d.name = $1 AND v.state = 'ready' AND ($2::integer IS NULL OR v.number = $2)
            ORDER BY v.number DESC LIMIT 1""",
            name,
            number,
        )
        if row is None:
            what = f"version {version}" if number is not None else "any version"
            raise NotFound(f"logical dataset {name!r} has no {what}")
        return _version(row)

    async def delete_version(self, version_id: str) -> LogicalVersionRecord:
        """Deletes a ready version; returns it as it was."""
        version = await self.get_version(version_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM logical_dataset_versions WHERE id = $1", uuid.UUID(version_id))
            await conn.execute(
                "UPDATE logical_datasets SET updated_at = now() WHERE id = $1",
                uuid.UUID(version.logical_dataset_id),
            )
        return version

    async def list_items(
        self, version_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[ItemRecord], str]:
        """A page of a ready version's items in export order."""
        await self.get_version(version_id)
        after = decode_page_token("logical-items", page_token)
        rows = await self._pool.fetch(
            f"""SELECT {_ITEM_SELECT} FROM logical_dataset_items i
            WHERE i.version_id = $1 AND ($2::bigint IS NULL OR i.position > $2)
            ORDER BY i.position LIMIT $3""",  # noqa: S608
            uuid.UUID(version_id),
            int(after[0]) if after else None,
            page_size + 1,
        )
        page = [_item(row) for row in rows[:page_size]]
        token = encode_page_token("logical-items", [page[-1].position]) if len(rows) > page_size else ""
        return page, token

    async def diff(self, base_id: str, target_id: str, *, page_size: int, page_token: str) -> DiffPage:
        """Items added to and removed from ``base`` in ``target``: ADDED first, each in export order."""
        base = await self.get_version(base_id)
        target = await self.get_version(target_id)
        if base.logical_dataset_id != target.logical_dataset_id:
            raise InvalidArgument("base and target versions belong to different logical datasets")
        after = decode_page_token("logical-diff", page_token)
        base_uuid, target_uuid = uuid.UUID(base_id), uuid.UUID(target_id)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"""{_DIFF_SQL}
                SELECT i.change, {_ITEM_SELECT} FROM diff i
                WHERE ($3::integer IS NULL OR (i.change, i.position) > ($3, $4::bigint))
                ORDER BY i.change, i.position LIMIT $5""",  # noqa: S608
                base_uuid,
                target_uuid,
                int(after[0]) if after else None,
                int(after[1]) if after else None,
                page_size + 1,
            )
            totals = await conn.fetchrow(
                f"""{_DIFF_SQL}
                SELECT count(*) FILTER (WHERE change = 1) AS added, count(*) FILTER (WHERE change = 2) AS removed
                FROM diff""",  # noqa: S608
                base_uuid,
                target_uuid,
            )
        assert totals is not None
        entries = [(int(row["change"]), _item(row)) for row in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            change, last = entries[-1]
            token = encode_page_token("logical-diff", [change, last.position])
        return DiffPage(entries, token, int(totals["added"]), int(totals["removed"]))


class LogicalVersionWriter:
    """``LogicalDatasetStore`` of one export run: writes only while the worker holds the job."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        lease: JobLeaseStore,
        *,
        dataset_name: str,
        description: str,
        append: bool,
    ) -> None:
        self._pool = pool
        self._lease = lease
        self._dataset_name = dataset_name
        self._description = description
        self._append = append

    async def start_version(self, checkpoint: ExportCheckpoint) -> ExportCheckpoint:
        """Creates the building version (and the logical dataset, if it was deleted since StartExport)."""
        async with self._pool.acquire() as conn, conn.transaction():
            dataset_id = await conn.fetchval(
                """
                INSERT INTO logical_datasets (name) VALUES ($1)
                ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id
                """,
                self._dataset_name,
            )
            version_id = await conn.fetchval(
                """
                INSERT INTO logical_dataset_versions (logical_dataset_id, description, export_job_id)
                VALUES ($1, $2, $3) RETURNING id
                """,
                dataset_id,
                self._description,
                self._lease.job_id,
            )
            await conn.execute(
                "UPDATE exports SET logical_dataset_id = $2 WHERE job_id = $1", self._lease.job_id, dataset_id
            )
            stored = replace(checkpoint, logical_version_id=str(version_id))
            await self._lease.save_checkpoint(stored, conn)
        return stored

    async def version_building_or_ready(self, version_id: str) -> bool:
        """Whether the version still exists."""
        found = await self._pool.fetchval(
            "SELECT 1 FROM logical_dataset_versions WHERE id = $1", uuid.UUID(version_id)
        )
        return found is not None

    async def append_items(
        self,
        version_id: str,
        first_position: int,
        records: Sequence[ExportRecord],
        checkpoint: ExportCheckpoint,
    ) -> None:
        """Copies the page's items in and stores the checkpoint, in one transaction."""
        version = uuid.UUID(version_id)
        async with self._pool.acquire() as conn, conn.transaction():
            if records:
                await conn.copy_records_to_table(
                    "logical_dataset_items",
                    records=[
                        _item_tuple(version, first_position + offset, record)
                        for offset, record in enumerate(records)
                    ],
                    columns=["version_id", "position", *_ITEM_COLUMNS],
                )
            await self._lease.save_checkpoint(checkpoint, conn)

    async def complete_version(self, version_id: str) -> str:
        """Carries over the previous version's items (append), checksums, numbers and readies the version."""
        version = uuid.UUID(version_id)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT state, logical_dataset_id FROM logical_dataset_versions WHERE id = $1 FOR UPDATE",
                version,
            )
            if row is None:
                raise FailedPrecondition(
                    "the logical dataset was deleted while the export ran; start a new export"
                )
            if row["state"] == "ready":
                return version_id
            dataset_id = row["logical_dataset_id"]
            # Serialises numbering (and the choice of the version an append builds on) per dataset.
            await conn.execute("SELECT 1 FROM logical_datasets WHERE id = $1 FOR UPDATE", dataset_id)
            if self._append:
                await self._carry_over_previous(conn, dataset_id, version)
            count, checksum = await self._checksum(conn, version)
            number = await conn.fetchval(
                """
                UPDATE logical_datasets SET last_version_number = last_version_number + 1, updated_at = now()
                WHERE id = $1 RETURNING last_version_number
                """,
                dataset_id,
            )
            await conn.execute(
                """
                UPDATE logical_dataset_versions
                SET state = 'ready', number = $2, item_count = $3, checksum = $4, created_at = now()
                WHERE id = $1
                """,
                version,
                number,
                count,
                checksum,
            )
        return version_id

    @staticmethod
    async def _carry_over_previous(conn: Any, dataset_id: uuid.UUID, version: uuid.UUID) -> None:
        """Copies the newest ready version's items that the new selection does not hold, before it."""
        previous = await conn.fetchval(
            """
            SELECT id FROM logical_dataset_versions
            WHERE logical_dataset_id = $1 AND state = 'ready' ORDER BY number DESC LIMIT 1
            """,
            dataset_id,
        )
        if previous is None:
            return
        columns = ", ".join(_ITEM_COLUMNS)
        carried = ", ".join(f"p.{column}" for column in _ITEM_COLUMNS)
        await conn.execute(
            f"""
            INSERT INTO logical_dataset_items (version_id, position, {columns})
            SELECT $2, p.position - (SELECT max(position) FROM logical_dataset_items WHERE version_id = $1) - 1,
                   {carried}
            FROM logical_dataset_items p
            WHERE p.version_id = $1 AND NOT EXISTS (
                SELECT 1 FROM logical_dataset_items n WHERE n.version_id = $2 AND n.file_id = p.file_id)
            """,  # noqa: S608
            previous,
            version,
        )

    @staticmethod
    async def _checksum(conn: Any, version: uuid.UUID) -> tuple[int, str]:
        digest = hashlib.sha256()
        count = 0
        async for row in conn.cursor(
            "SELECT file_id, etag FROM logical_dataset_items WHERE version_id = $1 ORDER BY position",
            version,
            prefetch=5000,
        ):
            digest.update(version_checksum_line(str(row["file_id"]), row["etag"]))
            count += 1
        return count, digest.hexdigest()
