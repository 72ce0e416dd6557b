"""Unit tests of an export run with in-memory ports: checkpoints, cancel, resume, failures.

The object store here is a fake of our own ``ObjectStore`` port (the S3 adapter
is exercised against the S3 API server in the service tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import pytest

from viewfinder_common.errors import Unavailable
from viewfinder_exporter.domain.jobs import (
    ExportCheckpoint,
    ExportCounts,
    ExportOutputs,
    ExportPhase,
    JobState,
    UploadedPart,
)
from viewfinder_exporter.domain.manifest import ManifestEncoder
from viewfinder_exporter.domain.records import ExportRecord, TagSnapshot
from viewfinder_exporter.domain.runner import LeaseLost, SourcePage, run_export
from viewfinder_exporter.domain.sinks import (
    MIN_PART_SIZE,
    LogicalDatasetSink,
    ManifestJob,
    ManifestSink,
)
from viewfinder_exporter.domain.targets import ManifestFormat, ManifestLocation

LOCATION = ManifestLocation("default", "exports", "runs/one", ManifestFormat.JSONL)


def make_records(count: int, *, key_padding: int = 0) -> list[ExportRecord]:
    return [
        ExportRecord(
            file_id=f"00000000-0000-0000-0000-{index:012d}",
            dataset_id="d",
            dataset_version_id="v",
            uri=f"s3://src/{index}.png",
            bucket="src",
            key=f"{'k' * key_padding}/{index}.png",
            size=index,
            etag=f"e{index}",
            last_modified=None,
            format="PNG",
            width=1,
            height=1,
            frames=1,
            mode="RGB",
            tags=(TagSnapshot("colour", "red", "ai"),),
            score=None,
            storage_connection="default",
        )
        for index in range(count)
    ]


class ListSource:
    """Pages of a fixed list; the cursor is the offset."""

    def __init__(self, records: list[ExportRecord], page_size: int) -> None:
        self.records = records
        self.page_size = page_size
        self.cursors_read: list[str] = []

    async def pages(self, cursor: str) -> AsyncGenerator[SourcePage, None]:
        offset = int(cursor) if cursor else 0
        while True:
            self.cursors_read.append(str(offset))
            chunk = self.records[offset : offset + self.page_size]
            offset += len(chunk)
            next_cursor = str(offset) if offset < len(self.records) else ""
            yield SourcePage(chunk, 0, next_cursor)
            if not next_cursor:
                return


@dataclass
class FakeObjects:
    """An in-memory bucket with multipart uploads."""

    objects: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, dict[int, bytes]] = field(default_factory=dict)
    fail_part: int | None = None
    sha256_reads: int = 0
    puts: int = 0

    async def create_multipart_upload(self, bucket: str, key: str, content_type: str) -> str:
        upload_id = f"u{len(self.uploads)}"
        self.uploads[upload_id] = {}
        return upload_id

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        if self.fail_part == number:
            self.fail_part = None
            raise Unavailable(f"cannot upload part {number} of s3://{bucket}/{key}: SlowDown")
        self.uploads[upload_id][number] = data
        return hashlib.md5(data).hexdigest()

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        stored = self.uploads.pop(upload_id)
        assert [p.number for p in parts] == sorted(stored)
        for part in parts[:-1]:
            assert len(stored[part.number]) >= MIN_PART_SIZE
        self.objects[key] = b"".join(stored[p.number] for p in parts)

    async def put_object(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        self.puts += 1
        self.objects[key] = data

    async def exists(self, bucket: str, key: str) -> bool:
        return key in self.objects

    async def sha256(self, bucket: str, key: str) -> str:
        self.sha256_reads += 1
        return hashlib.sha256(self.objects[key]).hexdigest()

    async def copy(self, bucket: str, source_key: str, target_key: str) -> None:
        self.objects[target_key] = self.objects[source_key]

    async def delete(self, bucket: str, key: str) -> None:
        self.objects.pop(key, None)


@dataclass
class FakeLease:
    """Records what the run reports; can request a cancel or lose the lease at a heartbeat."""

    cancel_at_heartbeat: int | None = None
    lose_at_heartbeat: int | None = None
    heartbeats: int = 0
    checkpoint: ExportCheckpoint = field(default_factory=ExportCheckpoint)
    final: tuple[JobState, ExportCounts, str] | None = None
    outputs: ExportOutputs | None = None
    released: ExportCounts | None = None

    async def heartbeat(self, counts: ExportCounts) -> bool:
        self.heartbeats += 1
        if self.heartbeats == self.lose_at_heartbeat:
            raise LeaseLost
        return self.heartbeats == self.cancel_at_heartbeat

    async def save_checkpoint(self, checkpoint: ExportCheckpoint) -> None:
        # Round-trips through JSON like the real store.
        self.checkpoint = ExportCheckpoint.from_json(json.loads(json.dumps(checkpoint.to_json())))

    async def succeed(self, outputs: ExportOutputs, counts: ExportCounts) -> None:
        self.final = (JobState.SUCCEEDED, counts, "")
        self.outputs = outputs

    async def fail(self, reason: str, counts: ExportCounts) -> None:
        self.final = (JobState.FAILED, counts, reason)

    async def cancelled(self, counts: ExportCounts) -> None:
        self.final = (JobState.CANCELLED, counts, "")

    async def release(self, counts: ExportCounts) -> None:
        self.released = counts


def manifest_sink(objects: FakeObjects, lease: FakeLease) -> ManifestSink:
    return ManifestSink(
        job=ManifestJob("job-1", "d", "v", {"query": {"query": "x"}}),
        location=LOCATION,
        objects=objects,
        checkpoints=lease,
        part_size=MIN_PART_SIZE,
    )


async def run_manifest(
    records: list[ExportRecord], objects: FakeObjects, lease: FakeLease, page_size: int = 500
) -> JobState | None:
    return await run_export(
        job_id="job-1",
        total_items=len(records),
        checkpoint=lease.checkpoint,
        source=ListSource(records, page_size),
        sink=manifest_sink(objects, lease),
        lease=lease,
    )


async def test_small_export_is_one_put_published_atomically() -> None:
    records = make_records(30)
    objects, lease = FakeObjects(), FakeLease()
    assert await run_manifest(records, objects, lease, page_size=7) is JobState.SUCCEEDED
    expected = ManifestEncoder(ManifestFormat.JSONL).encode(records)
    assert objects.objects[LOCATION.manifest_key] == expected
    assert LOCATION.temporary_key("job-1") not in objects.objects
    assert not objects.uploads
    summary = json.loads(objects.objects[LOCATION.summary_key])
    assert summary["records"] == 30
    assert summary["bytes"] == len(expected)
    assert summary["sha256"] == hashlib.sha256(expected).hexdigest()
    assert objects.sha256_reads == 0  # hashed on the way through
    assert lease.final is not None
    state, counts, _ = lease.final
    assert state is JobState.SUCCEEDED
    assert (counts.records_written, counts.processed_items, counts.bytes_written) == (30, 30, len(expected))
    assert lease.outputs == ExportOutputs(
        manifest_uri="s3://exports/runs/one/manifest.jsonl",
        summary_uri="s3://exports/runs/one/_SUCCESS",
        manifest_sha256=hashlib.sha256(expected).hexdigest(),
    )


async def test_empty_selection_gives_an_empty_manifest_and_a_summary() -> None:
    objects, lease = FakeObjects(), FakeLease()
    assert await run_manifest([], objects, lease) is JobState.SUCCEEDED
    assert objects.objects[LOCATION.manifest_key] == b""
    assert json.loads(objects.objects[LOCATION.summary_key])["records"] == 0


async def test_large_export_streams_parts_and_resumes_after_a_failed_part() -> None:
    # ~1 KiB per record: ~5 parts of 5 MiB.
    records = make_records(24_000, key_padding=900)
    expected = ManifestEncoder(ManifestFormat.JSONL).encode(records)
    objects, lease = FakeObjects(fail_part=2), FakeLease()

    assert await run_manifest(records, objects, lease) is JobState.FAILED
    assert lease.final is not None
    _, counts, reason = lease.final
    assert "cannot upload part 2" in reason
    # The job reports what is durable: part 1 and the pages in it.
    assert len(lease.checkpoint.parts) == 1
    assert counts.records_written == lease.checkpoint.records_written > 0
    assert LOCATION.manifest_key not in objects.objects  # nothing published

    durable = lease.checkpoint
    lease.final = None
    source = ListSource(records, 500)
    result = await run_export(
        job_id="job-1",
        total_items=len(records),
        checkpoint=durable,
        source=source,
        sink=manifest_sink(objects, lease),
        lease=lease,
    )
    assert result is JobState.SUCCEEDED
    assert source.cursors_read[0] == durable.cursor  # went on from the checkpoint, not the start
    assert objects.objects[LOCATION.manifest_key] == expected
    assert len(lease.checkpoint.parts) >= 4
    # A resumed run did not see part 1 go by, so it read the upload back for the checksum.
    assert objects.sha256_reads == 1
    summary = json.loads(objects.objects[LOCATION.summary_key])
    assert summary["sha256"] == hashlib.sha256(expected).hexdigest()
    assert summary["records"] == len(records)
    assert lease.final is not None
    assert lease.final[1].records_written == len(records)


async def test_cancel_stops_after_the_page_and_keeps_only_durable_work() -> None:
    records = make_records(100)
    objects, lease = FakeObjects(), FakeLease(cancel_at_heartbeat=3)
    assert await run_manifest(records, objects, lease, page_size=10) is JobState.CANCELLED
    assert lease.final is not None
    _, counts, _ = lease.final
    assert counts.records_written == 0  # nothing reached a part yet
    assert LOCATION.manifest_key not in objects.objects
    assert LOCATION.summary_key not in objects.objects

    lease.final = None
    lease.cancel_at_heartbeat = None
    assert await run_manifest(records, objects, lease, page_size=10) is JobState.SUCCEEDED
    assert objects.objects[LOCATION.manifest_key] == ManifestEncoder(ManifestFormat.JSONL).encode(records)


async def test_resume_after_upload_only_publishes() -> None:
    records = make_records(5)
    objects = FakeObjects()
    data = ManifestEncoder(ManifestFormat.JSONL).encode(records)
    objects.objects[LOCATION.temporary_key("job-1")] = data
    checkpoint = ExportCheckpoint(
        phase=ExportPhase.UPLOADED,
        source_done=True,
        records_written=5,
        processed_items=5,
        bytes_written=len(data),
        manifest_sha256=hashlib.sha256(data).hexdigest(),
    )
    lease = FakeLease(checkpoint=checkpoint)
    source = ListSource(records, 10)
    result = await run_export(
        job_id="job-1",
        total_items=5,
        checkpoint=checkpoint,
        source=source,
        sink=manifest_sink(objects, lease),
        lease=lease,
    )
    assert result is JobState.SUCCEEDED
    assert source.cursors_read == []  # nothing read again
    assert objects.objects[LOCATION.manifest_key] == data
    assert json.loads(objects.objects[LOCATION.summary_key])["records"] == 5


async def test_lost_lease_stops_without_a_final_state() -> None:
    objects, lease = FakeObjects(), FakeLease(lose_at_heartbeat=2)
    assert await run_manifest(make_records(50), objects, lease, page_size=10) is None
    assert lease.final is None
    assert LOCATION.manifest_key not in objects.objects


async def test_unexpected_errors_fail_the_job_without_internals() -> None:
    class Broken(FakeObjects):
        async def put_object(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
            raise ZeroDivisionError("secret=hunter2")

    lease = FakeLease()
    assert await run_manifest(make_records(3), Broken(), lease) is JobState.FAILED
    assert lease.final is not None
    assert lease.final[2] == "internal error (ZeroDivisionError); the exporter's log has the details"


async def test_shutdown_hands_the_job_back() -> None:
    class Slow(ListSource):
        async def pages(self, cursor: str) -> AsyncGenerator[SourcePage, None]:
            await asyncio.sleep(3600)
            yield SourcePage([], 0, "")

    lease = FakeLease()
    task = asyncio.create_task(
        run_export(
            job_id="j",
            total_items=1,
            checkpoint=ExportCheckpoint(),
            source=Slow([], 1),
            sink=manifest_sink(FakeObjects(), lease),
            lease=lease,
        )
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lease.released == ExportCounts(total_items=1)


@dataclass
class FakeLogicalStore:
    """Items by version, written with the checkpoint like the real store's transaction."""

    lease: FakeLease
    items: dict[str, dict[int, str]] = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)

    async def start_version(self, checkpoint: ExportCheckpoint) -> ExportCheckpoint:
        version_id = f"ver{len(self.items)}"
        self.items[version_id] = {}
        stored = ExportCheckpoint.from_json({**checkpoint.to_json(), "logical_version_id": version_id})
        await self.lease.save_checkpoint(stored)
        return stored

    async def version_building_or_ready(self, version_id: str) -> bool:
        return version_id in self.items

    async def append_items(
        self,
        version_id: str,
        first_position: int,
        records: Sequence[ExportRecord],
        checkpoint: ExportCheckpoint,
    ) -> None:
        for offset, item in enumerate(records):
            assert first_position + offset not in self.items[version_id]
            self.items[version_id][first_position + offset] = item.file_id
        await self.lease.save_checkpoint(checkpoint)

    async def complete_version(self, version_id: str) -> str:
        self.completed.append(version_id)
        return version_id


async def test_logical_export_resumes_exactly_after_a_cancel() -> None:
    records = make_records(95)
    lease = FakeLease(cancel_at_heartbeat=4)
    store = FakeLogicalStore(lease)

    async def run() -> JobState | None:
        return await run_export(
            job_id="j",
            total_items=95,
            checkpoint=lease.checkpoint,
            source=ListSource(records, 10),
            sink=LogicalDatasetSink(store),
            lease=lease,
        )

    assert await run() is JobState.CANCELLED
    assert lease.final is not None
    assert lease.final[1].records_written == 40  # every page is durable with its checkpoint
    assert store.completed == []

    lease.cancel_at_heartbeat = None
    assert await run() is JobState.SUCCEEDED
    (version_id,) = store.items
    assert store.completed == [version_id]
    assert [store.items[version_id][p] for p in sorted(store.items[version_id])] == [
        r.file_id for r in records
    ]
    assert lease.outputs == ExportOutputs(logical_dataset_version_id=version_id)
