"""Export jobs: states, counts, and the checkpoint a resumed run goes on from.

An export job is a row of the shared ``jobs`` table (kind ``export``). A run
reads the selection page by page and hands each page to a sink (the manifest
upload or the logical dataset version). What is durable is described by an
``ExportCheckpoint``: where the source stops being written (a search page
token or an offset into a file-id list) together with what the sink has made
durable up to there (uploaded multipart parts, or items inserted). A
checkpoint only ever names a page boundary at which the sink's state is
durable, so a resumed run re-reads nothing it kept and loses nothing it had
not kept:

* manifest: the sink buffers pages and uploads a part once the buffer holds
  ``part_size`` bytes; the checkpoint moves with each uploaded part. Pages in
  the buffer when a run stops are read again by the next run.
* logical dataset: each page's items are inserted in the same transaction that
  moves the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

JOB_KIND_EXPORT = "export"


class JobState(StrEnum):
    """States stored in ``jobs.state``; CANCELLING is ``running`` with ``cancel_requested``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def resumable(self) -> bool:
        """ResumeExport accepts the job."""
        return self in {JobState.FAILED, JobState.CANCELLED}

    @property
    def terminal(self) -> bool:
        """No worker touches the job again unless it is resumed."""
        return self in {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


class ExportPhase(StrEnum):
    """How far a run got."""

    # Reading the selection and writing pages.
    WRITING = "writing"
    # Manifest only: the whole manifest is at its temporary key, checksum known;
    # what is left is moving it to its final key and writing the summary.
    UPLOADED = "uploaded"


@dataclass(frozen=True)
class UploadedPart:
    """A multipart-upload part that S3 has accepted."""

    number: int
    etag: str


@dataclass(frozen=True)
class ExportCheckpoint:
    """What a run has made durable, and where the next run goes on."""

    phase: ExportPhase = ExportPhase.WRITING
    # Source position after the last durable page; "" means the beginning.
    cursor: str = ""
    # True once the last page is durable (``cursor`` is then meaningless).
    source_done: bool = False
    records_written: int = 0
    bytes_written: int = 0
    processed_items: int = 0
    skipped_items: int = 0
    # Manifest: the multipart upload of the temporary key ("" while nothing was uploaded).
    upload_id: str = ""
    parts: tuple[UploadedPart, ...] = ()
    # Manifest, phase UPLOADED: hex SHA-256 of the uploaded manifest.
    manifest_sha256: str = ""
    # Logical dataset: the version being built and the position of its next item.
    logical_version_id: str = ""
    next_position: int = 0

    def to_json(self) -> dict[str, Any]:
        """The checkpoint as stored in ``jobs.checkpoint`` (under the ``export`` key)."""
        return {
            "phase": self.phase.value,
            "cursor": self.cursor,
            "source_done": self.source_done,
            "records_written": self.records_written,
            "bytes_written": self.bytes_written,
            "processed_items": self.processed_items,
            "skipped_items": self.skipped_items,
            "upload_id": self.upload_id,
            "parts": [{"number": part.number, "etag": part.etag} for part in self.parts],
            "manifest_sha256": self.manifest_sha256,
            "logical_version_id": self.logical_version_id,
            "next_position": self.next_position,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any] | None) -> ExportCheckpoint:
        """The inverse of ``to_json``; an empty body is a fresh start."""
        if not body:
            return cls()
        return cls(
            phase=ExportPhase(body.get("phase", ExportPhase.WRITING.value)),
            cursor=str(body.get("cursor", "")),
            source_done=bool(body.get("source_done", False)),
            records_written=int(body.get("records_written", 0)),
            bytes_written=int(body.get("bytes_written", 0)),
            processed_items=int(body.get("processed_items", 0)),
            skipped_items=int(body.get("skipped_items", 0)),
            upload_id=str(body.get("upload_id", "")),
            parts=tuple(UploadedPart(int(p["number"]), str(p["etag"])) for p in body.get("parts", [])),
            manifest_sha256=str(body.get("manifest_sha256", "")),
            logical_version_id=str(body.get("logical_version_id", "")),
            next_position=int(body.get("next_position", 0)),
        )

    def after_page(self, *, records: int, skipped: int, bytes_written: int, cursor: str) -> ExportCheckpoint:
        """The state once one more page (of ``records`` written and ``skipped`` left out) is durable."""
        return replace(
            self,
            cursor=cursor,
            source_done=cursor == "",
            records_written=self.records_written + records,
            bytes_written=bytes_written,
            processed_items=self.processed_items + records + skipped,
            skipped_items=self.skipped_items + skipped,
        )


@dataclass(frozen=True)
class ExportCounts:
    """The counts a job reports (``jobs.counts``): JobProgress plus ExportCounts of the proto."""

    total_items: int = 0
    processed_items: int = 0
    skipped_items: int = 0
    records_written: int = 0
    bytes_written: int = 0

    @property
    def progress(self) -> float:
        """Fraction done, for ``jobs.progress`` (0 while the total is unknown)."""
        if self.total_items <= 0:
            return 0.0
        return min(1.0, self.processed_items / self.total_items)

    def to_json(self) -> dict[str, Any]:
        """As stored in ``jobs.counts``."""
        return {
            "total_items": self.total_items,
            "processed_items": self.processed_items,
            "skipped_items": self.skipped_items,
            "records_written": self.records_written,
            "bytes_written": self.bytes_written,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any] | None) -> ExportCounts:
        """The inverse of ``to_json``."""
        body = body or {}
        return cls(
            total_items=int(body.get("total_items", 0)),
            processed_items=int(body.get("processed_items", 0)),
            skipped_items=int(body.get("skipped_items", 0)),
            records_written=int(body.get("records_written", 0)),
            bytes_written=int(body.get("bytes_written", 0)),
        )

    @classmethod
    def of(cls, checkpoint: ExportCheckpoint, total_items: int) -> ExportCounts:
        """The counts that a checkpoint stands for."""
        return cls(
            total_items=total_items,
            processed_items=checkpoint.processed_items,
            skipped_items=checkpoint.skipped_items,
            records_written=checkpoint.records_written,
            bytes_written=checkpoint.bytes_written,
        )


@dataclass(frozen=True)
class ExportOutputs:
    """What a finished export produced (the ``exports`` row)."""

    manifest_uri: str = ""
    summary_uri: str = ""
    manifest_sha256: str = ""
    logical_dataset_version_id: str = ""
