"""The two places an export writes to: a manifest in a bucket, or a logical dataset version.

Manifest (see ``domain.targets`` for the keys): pages are encoded into a
buffer; once it holds ``part_size`` bytes it is uploaded as one part of a
multipart upload to the temporary key, so memory stays at about one part
plus one page whatever the export's size. An export smaller than one part is
written with a single PUT. When every page is written the upload is
completed, the SHA-256 taken, the object copied to its final key, the
temporary object deleted and finally ``_SUCCESS`` written.

The SHA-256 is computed while the bytes pass through. A resumed run did not
see the parts an earlier run uploaded, so it reads the completed temporary
object back once (streamed) to compute it instead.

Logical dataset: the items of each page are inserted with the checkpoint in
one transaction into a version in state ``building``; finishing numbers the
version and makes it visible (``LogicalDatasetStore.complete_version``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from viewfinder_common.errors import FailedPrecondition
from viewfinder_exporter.domain.jobs import ExportCheckpoint, ExportOutputs, ExportPhase, UploadedPart
from viewfinder_exporter.domain.manifest import ManifestEncoder, ManifestSummary
from viewfinder_exporter.domain.records import ExportRecord
from viewfinder_exporter.domain.targets import ManifestLocation

# S3 refuses parts under 5 MiB (except the last one).
MIN_PART_SIZE = 5 * 1024 * 1024


class ObjectStore(Protocol):
    """The object operations a manifest export needs (one bucket at a time)."""

    async def create_multipart_upload(self, bucket: str, key: str, content_type: str) -> str:
        """Starts a multipart upload; returns its id."""

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Uploads one part; returns its ETag."""

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        """Completes an upload (also when an earlier attempt already completed it)."""

    async def put_object(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        """Writes a whole object."""

    async def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists."""

    async def sha256(self, bucket: str, key: str) -> str:
        """Hex SHA-256 of an object's bytes, read as a stream."""

    async def copy(self, bucket: str, source_key: str, target_key: str) -> None:
        """Copies an object within the bucket, whatever its size."""

    async def delete(self, bucket: str, key: str) -> None:
        """Deletes an object (no error when it is absent)."""


class CheckpointStore(Protocol):
    """Stores a run's checkpoint while the worker holds the job (raises ``LeaseLost`` otherwise)."""

    async def save_checkpoint(self, checkpoint: ExportCheckpoint) -> None:
        """Makes ``checkpoint`` the job's resume point."""


@dataclass(frozen=True)
class ManifestJob:
    """What the summary of a manifest export says about its job."""

    job_id: str
    dataset_id: str
    dataset_version_id: str
    # The selection as requested (protobuf JSON).
    selection: dict[str, Any]


class ManifestSink:
    """Streams a manifest to a bucket with bounded memory (see the module docstring)."""

    def __init__(
        self,
        *,
        job: ManifestJob,
        location: ManifestLocation,
        objects: ObjectStore,
        checkpoints: CheckpointStore,
        part_size: int,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (the S3 minimum)")
        self._job = job
        self._location = location
        self._objects = objects
        self._checkpoints = checkpoints
        self._part_size = part_size
        self._encoder = ManifestEncoder(location.format)
        self._temporary_key = location.temporary_key(job.job_id)
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        # False once a resumed run goes on after parts an earlier run uploaded.
        self._hash_complete = True
        self._durable_bytes = 0
        self._upload_id = ""
        self._parts: list[UploadedPart] = []

    @property
    def bytes_written(self) -> int:
        """Manifest bytes so far, uploaded or buffered."""
        return self._durable_bytes + len(self._buffer)

    async def open(self, checkpoint: ExportCheckpoint) -> ExportCheckpoint:
        """Goes on after the parts of ``checkpoint``; a fresh manifest starts with its header."""
        self._upload_id = checkpoint.upload_id
        self._parts = list(checkpoint.parts)
        self._durable_bytes = checkpoint.bytes_written
        self._hash_complete = checkpoint.bytes_written == 0
        if checkpoint.phase is ExportPhase.WRITING and checkpoint.bytes_written == 0:
            self._append(self._encoder.header())
        return checkpoint

    async def write(self, records: Sequence[ExportRecord]) -> None:
        """Encodes one page into the buffer."""
        self._append(self._encoder.encode(records))

    async def commit(self, state: ExportCheckpoint) -> ExportCheckpoint | None:
        """Uploads the buffer as the next part once it holds a part's worth."""
        if len(self._buffer) < self._part_size:
            return None
        await self._upload_buffer()
        stored = replace(state, upload_id=self._upload_id, parts=tuple(self._parts))
        await self._checkpoints.save_checkpoint(stored)
        return stored

    async def finish(self, state: ExportCheckpoint) -> ExportOutputs:
        """Completes the upload, then publishes manifest and summary (see the module docstring)."""
        location = self._location
        if state.phase is ExportPhase.WRITING:
            if self._parts:
                if self._buffer:
                    await self._upload_buffer()
                await self._objects.complete_multipart_upload(
                    location.bucket, self._temporary_key, self._upload_id, self._parts
                )
            else:
                await self._objects.put_object(
                    location.bucket, self._temporary_key, bytes(self._buffer), location.format.content_type
                )
                self._durable_bytes += len(self._buffer)
                self._buffer.clear()
            digest = (
                self._hash.hexdigest()
                if self._hash_complete
                else await self._objects.sha256(location.bucket, self._temporary_key)
            )
            state = replace(
                state,
                phase=ExportPhase.UPLOADED,
                manifest_sha256=digest,
                bytes_written=self._durable_bytes,
                upload_id=self._upload_id,
                parts=tuple(self._parts),
            )
            await self._checkpoints.save_checkpoint(state)
        await self._publish()
        summary = ManifestSummary(
            job_id=self._job.job_id,
            manifest_uri=location.uri(location.manifest_key),
            format=location.format,
            records=state.records_written,
            byte_count=state.bytes_written,
            sha256=state.manifest_sha256,
            dataset_id=self._job.dataset_id,
            dataset_version_id=self._job.dataset_version_id,
            selection=self._job.selection,
            skipped_records=state.skipped_items,
        )
        await self._objects.put_object(
            location.bucket, location.summary_key, summary.to_bytes(), "application/json"
        )
        return ExportOutputs(
            manifest_uri=location.uri(location.manifest_key),
            summary_uri=location.uri(location.summary_key),
            manifest_sha256=state.manifest_sha256,
        )

    async def _publish(self) -> None:
        """Moves the complete manifest from its temporary key to its final key."""
        bucket = self._location.bucket
        if await self._objects.exists(bucket, self._temporary_key):
            await self._objects.copy(bucket, self._temporary_key, self._location.manifest_key)
            await self._objects.delete(bucket, self._temporary_key)
        elif not await self._objects.exists(bucket, self._location.manifest_key):
            # Only an earlier run of this job (which copied, then deleted) removes the temporary object.
            raise FailedPrecondition(
                f"the uploaded manifest {self._temporary_key!r} vanished before it was published; "
                "start a new export"
            )

    def _append(self, data: bytes) -> None:
        self._buffer += data
        self._hash.update(data)

    async def _upload_buffer(self) -> None:
        location = self._location
        if not self._upload_id:
            self._upload_id = await self._objects.create_multipart_upload(
                location.bucket, self._temporary_key, location.format.content_type
            )
        number = len(self._parts) + 1
        etag = await self._objects.upload_part(
            location.bucket, self._temporary_key, self._upload_id, number, bytes(self._buffer)
        )
        self._parts.append(UploadedPart(number, etag))
        self._durable_bytes += len(self._buffer)
        self._buffer.clear()


class LogicalDatasetStore(Protocol):
    """Catalogue writes of a logical dataset export, made while the worker holds the job."""

    async def start_version(self, checkpoint: ExportCheckpoint) -> ExportCheckpoint:
        """Creates the building version; stores and returns ``checkpoint`` naming it."""

    async def version_building_or_ready(self, version_id: str) -> bool:
        """Whether the version still exists (its logical dataset may have been deleted)."""

    async def append_items(
        self,
        version_id: str,
        first_position: int,
        records: Sequence[ExportRecord],
        checkpoint: ExportCheckpoint,
    ) -> None:
        """Inserts items at consecutive positions and stores ``checkpoint``, in one transaction."""

    async def complete_version(self, version_id: str) -> str:
        """Numbers the version and makes it visible (idempotent); returns its id."""


class LogicalDatasetSink:
    """Writes pages as items of a building logical dataset version."""

    def __init__(self, store: LogicalDatasetStore) -> None:
        self._store = store
        self._version_id = ""
        self._pending: list[ExportRecord] = []

    @property
    def bytes_written(self) -> int:
        """Nothing is written as bytes to a bucket."""
        return 0

    async def open(self, checkpoint: ExportCheckpoint) -> ExportCheckpoint:
        """Creates the building version on the first run; checks it still exists on later ones."""
        if not checkpoint.logical_version_id:
            checkpoint = await self._store.start_version(checkpoint)
        elif not await self._store.version_building_or_ready(checkpoint.logical_version_id):
            raise FailedPrecondition(
                "the logical dataset was deleted while the export ran; start a new export"
            )
        self._version_id = checkpoint.logical_version_id
        return checkpoint

    async def write(self, records: Sequence[ExportRecord]) -> None:
        """Keeps the page until ``commit``."""
        self._pending.extend(records)

    async def commit(self, state: ExportCheckpoint) -> ExportCheckpoint | None:
        """Inserts the page's items and the checkpoint together."""
        stored = replace(state, next_position=state.next_position + len(self._pending))
        await self._store.append_items(self._version_id, state.next_position, self._pending, stored)
        self._pending = []
        return stored

    async def finish(self, state: ExportCheckpoint) -> ExportOutputs:
        """Numbers the version and makes it visible."""
        version_id = await self._store.complete_version(self._version_id)
        return ExportOutputs(logical_dataset_version_id=version_id)
