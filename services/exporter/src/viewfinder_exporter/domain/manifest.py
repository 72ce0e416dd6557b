"""Manifest encoding (JSON Lines and CSV), the summary object and the checksums.

One manifest record per file, with the same fields in both formats::

    file_id, uri, bucket, key, size, etag, last_modified, format, width,
    height, score, tags, dataset_id, dataset_version_id, storage_connection

``tags`` is a list of ``{"name", "value", "source", "confidence"?, "model"?,
"definition_id"?, "definition_version"?}``; in CSV it is one JSON-encoded
column. ``score`` is null (empty in CSV) unless the search had a vector query;
``last_modified`` is ISO 8601 UTC. The SDK (``viewfinder.load_manifest``)
reads both.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from viewfinder_exporter.domain.records import ExportRecord
from viewfinder_exporter.domain.targets import ManifestFormat

MANIFEST_FIELDS = (
    "file_id",
    "uri",
    "bucket",
    "key",
    "size",
    "etag",
    "last_modified",
    "format",
    "width",
    "height",
    "score",
    "tags",
    "dataset_id",
    "dataset_version_id",
    "storage_connection",
)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a 'Z', or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def manifest_record(record: ExportRecord) -> dict[str, Any]:
    """The manifest fields of one record, JSON-ready."""
    return {
        "file_id": record.file_id,
        "uri": record.uri,
        "bucket": record.bucket,
        "key": record.key,
        "size": record.size,
        "etag": record.etag,
        "last_modified": iso_utc(record.last_modified),
        "format": record.format,
        "width": record.width,
        "height": record.height,
        "score": record.score,
        "tags": [tag.to_json() for tag in record.tags],
        "dataset_id": record.dataset_id,
        "dataset_version_id": record.dataset_version_id,
        "storage_connection": record.storage_connection,
    }


class ManifestEncoder:
    """Turns records into manifest bytes, page by page."""

    def __init__(self, format: ManifestFormat) -> None:
        self.format = format

    def header(self) -> bytes:
        """Bytes that start the manifest (the CSV header row; nothing for JSONL)."""
        if self.format is ManifestFormat.JSONL:
            return b""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(MANIFEST_FIELDS)
        return buffer.getvalue().encode()

    def encode(self, records: Iterable[ExportRecord]) -> bytes:
        """The manifest lines of ``records``."""
        if self.format is ManifestFormat.JSONL:
            return b"".join(
                json.dumps(manifest_record(record), ensure_ascii=False, separators=(",", ":")).encode()
                + b"\n"
                for record in records
            )
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for record in records:
            fields = manifest_record(record)
            fields["tags"] = json.dumps(fields["tags"], ensure_ascii=False, separators=(",", ":"))
            writer.writerow(["" if fields[name] is None else fields[name] for name in MANIFEST_FIELDS])
        return buffer.getvalue().encode()


@dataclass(frozen=True)
class ManifestSummary:
    """The ``_SUCCESS`` object: what was exported, how much, and the manifest's checksum."""

    job_id: str
    manifest_uri: str
    format: ManifestFormat
    records: int
    byte_count: int
    sha256: str
    dataset_id: str
    dataset_version_id: str
    # The selection as requested (protobuf JSON of the search, query or file ids).
    selection: dict[str, Any]
    skipped_records: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_bytes(self) -> bytes:
        """The summary as a JSON document."""
        body = {
            "job_id": self.job_id,
            "manifest_uri": self.manifest_uri,
            "format": self.format.value,
            "records": self.records,
            "bytes": self.byte_count,
            "sha256": self.sha256,
            "dataset_id": self.dataset_id,
            "dataset_version_id": self.dataset_version_id,
            "selection": self.selection,
            "skipped_records": self.skipped_records,
            "created_at": iso_utc(self.created_at),
        }
        return json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"


def version_checksum_line(file_id: str, etag: str) -> bytes:
    """One item's contribution to a logical dataset version's checksum."""
    return f"{file_id}\t{etag}\n".encode()


def version_checksum(items: Sequence[tuple[str, str]]) -> str:
    """Hex SHA-256 over ``(file id, etag)`` of a version's items, in order (LogicalDatasetVersion.checksum)."""
    digest = hashlib.sha256()
    for file_id, etag in items:
        digest.update(version_checksum_line(file_id, etag))
    return digest.hexdigest()
