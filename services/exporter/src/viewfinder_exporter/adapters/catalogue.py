"""Catalogue reads of the exporter: dataset versions, and files selected by id.

A selection of explicit file ids (a multi-select in the gallery) is read
from the catalogue directly: SearchService has no file-id condition, and a
page of ids needs nothing but the rows and their tags.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from viewfinder_common.errors import InvalidArgument, NotFound
from viewfinder_common.tags_sql import TAGS_IN_EFFECT_BY_FILE
from viewfinder_exporter.domain.records import ExportRecord, TagSnapshot
from viewfinder_exporter.domain.runner import SourcePage

# Most file ids one FileSelection may name (export.proto).
MAX_SELECTED_FILES = 100_000
_PAGE_SIZE = 1000


@dataclass(frozen=True)
class SourceVersion:
    """The dataset version a selection reads, and how its objects are read."""

    dataset_id: str
    dataset_version_id: str
    storage_connection: str


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """A UUID, or INVALID_ARGUMENT naming the field."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{what} {value!r} is not a valid id") from None


class ExporterCatalogue:
    """Reads of the catalogue that selections need."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def source_version(self, dataset_version_id: str) -> SourceVersion:
        """The version with its dataset's storage connection; NOT_FOUND when it does not exist."""
        if not dataset_version_id:
            raise InvalidArgument("dataset_version_id is required")
        row = await self._pool.fetchrow(
            """
            SELECT v.id, v.dataset_id, d.storage_connection
            FROM dataset_versions v JOIN datasets d ON d.id = v.dataset_id
            WHERE v.id = $1
            """,
            parse_uuid(dataset_version_id, "dataset_version_id"),
        )
        if row is None:
            raise NotFound(f"dataset version {dataset_version_id} does not exist")
        return SourceVersion(str(row["dataset_id"]), str(row["id"]), row["storage_connection"])

    async def check_file_selection(self, dataset_version_id: str, file_ids: Sequence[str]) -> list[str]:
        """The ids without repeats, in the given order; INVALID_ARGUMENT for ids outside the version."""
        if not file_ids:
            raise InvalidArgument("files.file_ids is empty; select at least one file")
        if len(file_ids) > MAX_SELECTED_FILES:
            raise InvalidArgument(
                f"at most {MAX_SELECTED_FILES} file ids can be exported, got {len(file_ids)}"
            )
        unique = list(dict.fromkeys(str(parse_uuid(file_id, "file id")) for file_id in file_ids))
        rows = await self._pool.fetch(
            """
            SELECT wanted.id FROM unnest($2::uuid[]) AS wanted (id)
            WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.id = wanted.id AND f.version_id = $1)
            LIMIT 5
            """,
            parse_uuid(dataset_version_id, "dataset_version_id"),
            [uuid.UUID(file_id) for file_id in unique],
        )
        if rows:
            outside = ", ".join(str(row["id"]) for row in rows)
            raise InvalidArgument(f"file ids not in dataset version {dataset_version_id}: {outside}")
        return unique

    async def records(
        self, file_ids: Sequence[str], storage_connection: str
    ) -> tuple[list[ExportRecord], int]:
        """Records of the active files among ``file_ids`` in that order, and how many were left out."""
        ids = [uuid.UUID(file_id) for file_id in file_ids]
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT id, dataset_id, version_id, uri, bucket, key, size, etag, last_modified,
                       format, width, height, frames, mode
                FROM files WHERE id = ANY($1::uuid[]) AND status = 'active'
                """,
                ids,
            )
            tag_rows = await conn.fetch(TAGS_IN_EFFECT_BY_FILE, ids)
        tags: dict[uuid.UUID, list[TagSnapshot]] = {}
        for row in tag_rows:
            tags.setdefault(row["file_id"], []).append(
                TagSnapshot(
                    name=row["tag"],
                    value=row["value"],
                    source=row["source"],
                    confidence=row["confidence"],
                    model=row["model"] or "",
                    definition_id=str(row["definition_id"]) if row["definition_id"] else "",
                    definition_version=row["definition_version"] or 0,
                )
            )
        by_id = {row["id"]: row for row in rows}
        records = [
            _record(by_id[file_id], tags.get(file_id, []), storage_connection)
            for file_id in ids
            if file_id in by_id
        ]
        return records, len(ids) - len(records)


def _record(row: Any, tags: list[TagSnapshot], storage_connection: str) -> ExportRecord:
    return ExportRecord(
        file_id=str(row["id"]),
        dataset_id=str(row["dataset_id"]),
        dataset_version_id=str(row["version_id"]),
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
        tags=tuple(tags),
        score=None,
        storage_connection=storage_connection,
    )


class FileSelectionSource:
    """``RecordSource`` over an explicit list of file ids; the cursor is the offset into the list."""

    def __init__(
        self,
        catalogue: ExporterCatalogue,
        file_ids: Sequence[str],
        *,
        storage_connection: str,
        page_size: int = _PAGE_SIZE,
    ) -> None:
        self._catalogue = catalogue
        self._file_ids = list(file_ids)
        self._storage_connection = storage_connection
        self._page_size = page_size

    async def pages(self, cursor: str) -> AsyncGenerator[SourcePage, None]:
        """Pages of ``page_size`` ids from offset ``cursor``; files no longer active are skipped."""
        offset = int(cursor) if cursor else 0
        while True:
            chunk = self._file_ids[offset : offset + self._page_size]
            offset += len(chunk)
            records, skipped = await self._catalogue.records(chunk, self._storage_connection)
            next_cursor = str(offset) if offset < len(self._file_ids) else ""
            yield SourcePage(records, skipped, next_cursor)
            if not next_cursor:
                return
