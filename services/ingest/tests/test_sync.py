"""Sync jobs against the real stack: PostgreSQL, the Kafka-protocol broker and the moto S3 server."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from viewfinder.v1 import common_pb2, dataset_pb2, events_pb2
from viewfinder_ingest.domain.models import ListedObject
from viewfinder_ingest.domain.ports import ListingPage, ObjectHead

pytestmark = pytest.mark.stack

FULL = common_pb2.JOB_MODE_FULL
INCREMENTAL = common_pb2.JOB_MODE_INCREMENTAL
FORMATS = ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"]
STATUS = dataset_pb2.FileStatus


def mixed_objects(images: Any, prefix: str, supported: int) -> tuple[dict[str, bytes], dict[str, int]]:
    """``supported`` small images over every format and folder, plus every kind of bad object.

    Returns the objects and the expected status of each key. Extensions lie on
    purpose: the format must come from the bytes.
    """
    objects: dict[str, bytes] = {}
    expected: dict[str, int] = {}
    folders = ["", "a/", "b/", "c/deep/", "d/"]
    for index in range(supported):
        fmt = FORMATS[index % len(FORMATS)]
        key = f"{prefix}{folders[index % len(folders)]}img-{index:05d}.{'png' if fmt == 'JPEG' else 'jpg'}"
        objects[key] = images.encode(fmt, size=(8 + index % 5, 6 + index % 3), seed=index)
        expected[key] = STATUS.FILE_STATUS_ACTIVE
    bad: dict[str, tuple[bytes, int]] = {}
    for index in range(10):
        png = images.encode("PNG", size=(40, 40), seed=1000 + index)
        bad[f"{prefix}b/truncated-{index}.png"] = (png[: len(png) // 2], STATUS.FILE_STATUS_CORRUPT)
        bad[f"{prefix}notes-{index}.jpg"] = (
            f"not an image {index}\n".encode(),
            STATUS.FILE_STATUS_UNSUPPORTED,
        )
    for index in range(5):
        bad[f"{prefix}a/empty-{index}.jpg"] = (b"", STATUS.FILE_STATUS_CORRUPT)
    bad[f"{prefix}d/bomb.png"] = (images.png_bomb(), STATUS.FILE_STATUS_CORRUPT)
    bad[f"{prefix}c/broken-header.jpg"] = (images.encode("JPEG")[:30], STATUS.FILE_STATUS_CORRUPT)
    for key, (body, status) in bad.items():
        objects[key] = body
        expected[key] = status
    return objects, expected


async def test_full_sync_records_every_object_and_publishes_one_event_per_image(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    harness = await make_harness()
    objects, expected = mixed_objects(images, "set/", supported=1970)
    objects["outside/other.png"] = images.encode("PNG")  # not under the dataset prefix
    await harness.put_many(objects)
    created = await harness.create_dataset(unique_name, prefix="set/")
    supported = sum(1 for status in expected.values() if status == STATUS.FILE_STATUS_ACTIVE)

    job = await harness.sync(created.dataset.id, FULL)

    assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
    files = {f.key: f for f in await harness.all_files(created.version.id)}
    assert {key: f.status for key, f in files.items()} == expected
    bomb = files["set/d/bomb.png"]
    assert bomb.error.startswith("decompression bomb")
    assert files["set/a/empty-0.jpg"].error == "zero-byte object"
    assert "not an image" in files["set/notes-0.jpg"].error
    assert "truncated" in files["set/b/truncated-0.png"].error
    jpeg = files["set/img-00000.png"]  # a JPEG with a .png name
    assert (jpeg.format, jpeg.width, jpeg.height, jpeg.frames, jpeg.mode) == ("JPEG", 8, 6, 1, "RGB")

    counts = job.counts
    assert (counts.listed, counts.added, counts.unsupported, counts.corrupt) == (
        len(expected),
        len(expected),
        10,
        17,
    )
    assert counts.events_published == supported
    assert job.job.progress.failed_items == 17
    assert len(job.job.recent_errors) == 17  # every corrupt object, with its reason (at most 20 kept)

    records = await harness.events.wait_for(supported)
    events = harness.events.file_events()
    assert len(records) == supported
    assert {e.key for e in events} == {k for k, s in expected.items() if s == STATUS.FILE_STATUS_ACTIVE}
    assert all(e.change_type == events_pb2.CHANGE_TYPE_UPSERT and e.sync_job_id == job.job.id for e in events)
    assert all(r.key.decode() == files[e.key].id for r, e in zip(records, events, strict=True))
    sample = next(e for e in events if e.key == "set/img-00000.png")
    assert (sample.format, sample.width, sample.dataset_version_id) == ("JPEG", 8, created.version.id)

    # A second FULL sync inspects everything again and publishes nothing: nothing changed.
    again = await harness.sync(created.dataset.id, FULL)
    assert again.job.state == common_pb2.JOB_STATE_SUCCEEDED, again.job.error
    assert (again.counts.unchanged, again.counts.events_published) == (len(expected), 0)
    assert len(await harness.events.wait_for(supported + 1, timeout_s=3)) == supported


async def test_incremental_sync_publishes_exactly_the_changes(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    harness = await make_harness(listing_page_size=50)
    objects = {f"p/{'x/' if i % 2 else ''}img-{i:04d}.png": images.encode("PNG", seed=i) for i in range(200)}
    objects["p/notes.txt"] = b"text"
    await harness.put_many(objects)
    created = await harness.create_dataset(unique_name, prefix="p/")
    first = await harness.sync(created.dataset.id, INCREMENTAL)
    assert first.job.state == common_pb2.JOB_STATE_SUCCEEDED, first.job.error
    assert first.counts.events_published == 200
    await harness.events.wait_for(200)
    before = {f.key: f for f in await harness.all_files(created.version.id)}

    added = {f"p/x/new-{i}.jpg": images.encode("JPEG", seed=500 + i) for i in range(10)}
    changed_keys = [
        "p/img-0000.png",
        "p/x/img-0001.png",
        "p/img-0010.png",
        "p/x/img-0099.png",
        "p/img-0198.png",
    ]
    changed = {key: images.encode("GIF", seed=900 + i) for i, key in enumerate(changed_keys)}
    deleted = ["p/img-0002.png", "p/x/img-0003.png", "p/x/img-0199.png"]
    await harness.put_many({**added, **changed})
    await harness.delete_many(deleted)

    second = await harness.sync(created.dataset.id, INCREMENTAL)

    assert second.job.state == common_pb2.JOB_STATE_SUCCEEDED, second.job.error
    counts = second.counts
    assert (counts.added, counts.changed, counts.deleted, counts.unchanged) == (10, 5, 3, 201 - 5 - 3)
    assert counts.events_published == 18
    await harness.events.wait_for(218)
    new_events = harness.events.file_events()[200:]
    assert len(new_events) == 18
    by_type = collections.defaultdict(set)
    for event in new_events:
        by_type[event.change_type].add(event.key)
    assert by_type[events_pb2.CHANGE_TYPE_UPSERT] == set(added) | set(changed)
    assert by_type[events_pb2.CHANGE_TYPE_DELETE] == set(deleted)
    after = {f.key: f for f in await harness.all_files(created.version.id)}
    assert all(after[key].status == STATUS.FILE_STATUS_DELETED for key in deleted)
    assert all(after[key].format == "GIF" and after[key].id == before[key].id for key in changed_keys)
    delete_event = next(e for e in new_events if e.key == deleted[0])
    assert (delete_event.file_id, delete_event.size) == (before[deleted[0]].id, 0)

    version = (
        await harness.stub.GetDatasetVersion(
            dataset_pb2.GetDatasetVersionRequest(dataset_version_id=created.version.id), timeout=10
        )
    ).version
    assert (version.active_file_count, version.file_count, version.last_sync_job_id) == (
        207,
        211,
        second.job.id,
    )


class FlakyStore:
    """The real S3 store, failing the listing once after ``fail_after_pages`` pages of a partition."""

    def __init__(self, inner: Any, fail_after_pages: int) -> None:
        self.inner = inner
        self.fail_after_pages = fail_after_pages
        self.failed = False
        self.start_afters: list[tuple[str, str | None]] = []

    async def list_pages(
        self, bucket: str, prefix: str, *, delimiter: str | None, start_after: str | None, page_size: int
    ) -> AsyncIterator[ListingPage]:
        self.start_afters.append((prefix, start_after))
        served = 0
        async for page in self.inner.list_pages(
            bucket, prefix, delimiter=delimiter, start_after=start_after, page_size=page_size
        ):
            if served == self.fail_after_pages and not self.failed:
                self.failed = True
                raise ConnectionError("simulated network failure while listing")
            served += 1
            yield page

    async def read_head(self, bucket: str, key: str, length: int) -> ObjectHead | None:
        result: ObjectHead | None = await self.inner.read_head(bucket, key, length)
        return result

    async def stat(self, bucket: str, key: str) -> ListedObject | None:
        result: ListedObject | None = await self.inner.stat(bucket, key)
        return result


async def test_failed_job_resumes_after_its_last_written_page(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    flaky: list[FlakyStore] = []

    def wrap(inner: Any) -> FlakyStore:
        flaky.append(FlakyStore(inner, fail_after_pages=3))
        return flaky[0]

    harness = await make_harness(store=wrap, listing_page_size=10, listing_concurrency=1)
    objects = {f"r/img-{i:03d}.png": images.encode("PNG", seed=i) for i in range(95)}
    await harness.put_many(objects)
    created = await harness.create_dataset(unique_name, prefix="r/")

    failed = await harness.sync(created.dataset.id, INCREMENTAL)
    assert failed.job.state == common_pb2.JOB_STATE_FAILED
    assert "simulated network failure" in failed.job.error
    assert failed.counts.listed == 30  # three pages written before the failure

    resumed = await harness.stub.ResumeJob(dataset_pb2.ResumeJobRequest(job_id=failed.job.id), timeout=10)
    assert resumed.job.job.resume_count == 1
    done = await harness.wait_job(failed.job.id)

    assert done.job.state == common_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert (done.counts.listed, done.counts.added, done.counts.events_published) == (95, 95, 95)
    # The resumed listing started after the last written key: no page was listed twice.
    assert flaky[0].start_afters[-1] == ("r/", "r/img-029.png")
    records = await harness.events.wait_for(95)
    assert len(records) == 95
    assert len({r.key for r in records}) == 95


class GatedStore(FlakyStore):
    """The real S3 store, holding the listing before its second page until released."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner, fail_after_pages=-1)
        self.first_page_served = asyncio.Event()
        self.release = asyncio.Event()
        self.gate = True

    async def list_pages(
        self, bucket: str, prefix: str, *, delimiter: str | None, start_after: str | None, page_size: int
    ) -> AsyncIterator[ListingPage]:
        served = 0
        async for page in self.inner.list_pages(
            bucket, prefix, delimiter=delimiter, start_after=start_after, page_size=page_size
        ):
            if served == 1 and self.gate:
                self.first_page_served.set()
                await self.release.wait()
            served += 1
            yield page


async def test_cancel_keeps_finished_pages_and_resume_finishes_the_rest(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    gated: list[GatedStore] = []

    def wrap(inner: Any) -> GatedStore:
        gated.append(GatedStore(inner))
        return gated[0]

    harness = await make_harness(store=wrap, listing_page_size=10, listing_concurrency=1)
    await harness.put_many({f"c/img-{i:03d}.png": images.encode("PNG", seed=i) for i in range(35)})
    created = await harness.create_dataset(unique_name, prefix="c/")
    started = await harness.stub.StartSync(
        dataset_pb2.StartSyncRequest(dataset_id=created.dataset.id, mode=FULL), timeout=10
    )
    job_id = started.job.job.id
    await asyncio.wait_for(gated[0].first_page_served.wait(), 30)

    second_start = harness.stub.StartSync(
        dataset_pb2.StartSyncRequest(dataset_id=created.dataset.id, mode=FULL)
    )
    with pytest.raises(grpc.aio.AioRpcError, match="already pending or running") as refused:
        await second_start
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    cancelling = await harness.stub.CancelJob(dataset_pb2.CancelJobRequest(job_id=job_id), timeout=10)
    assert cancelling.job.job.state == common_pb2.JOB_STATE_CANCELLING
    gated[0].release.set()
    cancelled = await harness.wait_job(job_id)
    assert cancelled.job.state == common_pb2.JOB_STATE_CANCELLED
    assert cancelled.counts.listed in {10, 20}  # the page being read when cancel came may finish

    gated[0].gate = False
    await harness.stub.ResumeJob(dataset_pb2.ResumeJobRequest(job_id=job_id), timeout=10)
    done = await harness.wait_job(job_id)
    assert done.job.state == common_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert (done.counts.listed, done.counts.events_published) == (35, 35)
    assert len(await harness.events.wait_for(35)) == 35

    with pytest.raises(grpc.aio.AioRpcError, match="only FAILED or CANCELLED") as again:
        await harness.stub.ResumeJob(dataset_pb2.ResumeJobRequest(job_id=job_id), timeout=10)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_sync_over_the_version_limit_fails_clearly(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    harness = await make_harness(default_version_file_limit=25, listing_page_size=10, listing_concurrency=1)
    await harness.put_many({f"l/img-{i:03d}.png": images.encode("PNG", seed=i) for i in range(40)})
    created = await harness.create_dataset(unique_name, prefix="l/")

    job = await harness.sync(created.dataset.id, FULL)

    assert job.job.state == common_pb2.JOB_STATE_FAILED
    assert job.job.error.startswith("FAILED_PRECONDITION")
    assert "limit of 25 files" in job.job.error
    files = await harness.all_files(created.version.id)
    assert len(files) == 20  # whole pages up to the limit; nothing past it, nothing silently dropped
