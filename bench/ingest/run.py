"""Ingest throughput against raw S3 baselines measured in the same run.

What it measures, on the local stack (moto S3 server, tansu, PostgreSQL):

* **full sync** of ``--objects`` small images spread over ``--folders``
  common prefixes: files/s, and the ratio to a raw aioboto3 ListObjectsV2
  pagination of the same prefix (goal ≥ 0.8x). A first full sync reads the
  header bytes of every object (one ranged GET each), so the run also
  measures the raw ranged-GET rate at the same concurrency: on moto, GETs are
  ~10x slower than listing and bound the first sync, which the second ratio
  shows.
* **re-sync** (incremental, nothing changed): listing + catalogue comparison
  only, the listing-bound case.
* **notifications**: ``--notifications`` S3 PUT notifications pre-loaded on
  the storage-events topic, consumed by the service's batch subscriber; rate
  from the first batch to the last, group join excluded; ratio to the raw
  ranged-GET rate (each created object is read once).
* **peak RSS** of this process (which runs the service's parts) during each
  phase, sampled with psutil: it must not grow with the size of the prefix.

    .venv/bin/python bench/ingest/run.py                                   # 20k objects, 2k notifications
    .venv/bin/python bench/ingest/run.py --objects 100000 --notifications 10000
    .venv/bin/python bench/ingest/run.py --bucket my-bench --keep          # reuse an uploaded bucket next time

Needs ``make up``. Uploading to moto runs at a few hundred objects/s, so the
first 100k run spends minutes uploading; ``--bucket``/``--keep`` reuse it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg
import psutil  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from PIL import Image

from viewfinder_common.db import create_pool, migrate
from viewfinder_common.kafka import build_broker
from viewfinder_common.logging import configure_logging
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import DatabaseSettings, KafkaSettings
from viewfinder_ingest.config import IngestSettings
from viewfinder_ingest.domain.models import SyncMode
from viewfinder_ingest.domain.notification_processor import (
    BatchOutcome,
    NotificationInput,
    NotificationProcessor,
)
from viewfinder_ingest.handlers.storage_events import storage_events_router
from viewfinder_ingest.main import assemble

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.local.stack import load_env  # noqa: E402 - needs the repo root on sys.path

SYNC_PREFIX = "bench/"
NOTIFY_PREFIX = "notify/"


def tiny_images() -> list[bytes]:
    """A few dozen distinct small images over the supported formats (~100-700 bytes)."""
    bodies = []
    for index in range(48):
        fmt = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"][index % 6]
        buffer = io.BytesIO()
        Image.new("RGB", (8 + index % 7, 8), color=(index * 5, 100, 200)).save(buffer, fmt)
        bodies.append(buffer.getvalue())
    return bodies


class RssSampler:
    """Peak resident set size of this process, sampled every 100 ms."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = 0
        self.start = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            await asyncio.sleep(0.1)

    @contextlib.asynccontextmanager
    async def phase(self) -> AsyncIterator[RssSampler]:
        self.start = self.peak = self._process.memory_info().rss
        self._task = asyncio.create_task(self._sample())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self.peak = max(self.peak, self._process.memory_info().rss)


def mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


async def count_keys(s3: Any, bucket: str, prefix: str) -> int:
    total = 0
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        total += len(page.get("Contents", ()))
    return total


async def upload(s3: Any, bucket: str, keys: Iterable[str], count: int, concurrency: int = 64) -> float:
    """Uploads small images under ``keys`` (generated lazily, so memory stays flat); returns objects/s."""
    bodies = tiny_images()
    queue = iter(enumerate(keys))

    async def worker() -> None:
        for index, key in queue:
            await s3.put_object(Bucket=bucket, Key=key, Body=bodies[index % len(bodies)])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def raw_listing(s3: Any, bucket: str, prefix: str) -> tuple[int, float]:
    """Keys under ``prefix`` and keys/s of a plain ListObjectsV2 pagination (the baseline)."""
    started = time.perf_counter()
    total = await count_keys(s3, bucket, prefix)
    return total, total / (time.perf_counter() - started)


async def raw_ranged_gets(s3: Any, bucket: str, keys: Sequence[str], concurrency: int, length: int) -> float:
    """Ranged GETs of the first ``length`` bytes at ``concurrency``; returns GETs/s."""
    queue = iter(keys)

    async def worker() -> None:
        for key in queue:
            response = await s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{length - 1}")
            body = response["Body"]
            async with body:
                await body.read(length)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(keys) / (time.perf_counter() - started)


async def sample_keys(s3: Any, bucket: str, prefix: str, limit: int) -> list[str]:
    keys: list[str] = []
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(entry["Key"] for entry in page.get("Contents", ()))
        if len(keys) >= limit:
            break
    return keys[:limit]


@dataclass
class TimedProcessor:
    """Wraps the notification processor to time the first and last batch."""

    inner: Any
    first_start: float = 0.0
    last_end: float = 0.0
    notifications: int = 0
    events: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def process(self, inputs: Sequence[NotificationInput]) -> BatchOutcome:
        if not self.first_start:
            self.first_start = time.perf_counter()
        outcome: BatchOutcome = await self.inner.process(inputs)
        self.last_end = time.perf_counter()
        self.notifications += len(inputs)
        self.events += outcome.events
        if self.notifications >= self.expected:
            self.done.set()
        return outcome


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()]
        )
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A fresh catalogue database with every migration, dropped afterwards."""
    settings = DatabaseSettings()
    base, _, _ = settings.url.rpartition("/")
    name = f"bench_ingest_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(settings.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def timed(
    label: str, sampler: RssSampler, work: Callable[[], Awaitable[Any]]
) -> tuple[Any, float, int]:
    async with sampler.phase():
        started = time.perf_counter()
        result = await work()
        elapsed = time.perf_counter() - started
    print(
        f"  {label}: {elapsed:.1f} s, peak RSS {mib(sampler.peak)} (+{mib(sampler.peak - sampler.start)} in this phase)",
        flush=True,
    )
    return result, elapsed, sampler.peak


async def main(args: argparse.Namespace) -> None:
    load_env()
    configure_logging("bench-ingest", "WARNING", json=False)
    run = uuid.uuid4().hex[:8]
    bucket = args.bucket or f"bench-ingest-{run}"
    kafka = KafkaSettings(
        topic_file_discovered=f"bench.{run}.file-discovered",
        topic_storage_events=f"bench.{run}.storage-events",
    )
    sampler = RssSampler()
    async with scratch_database() as db_url, contextlib.AsyncExitStack() as stack:
        settings = IngestSettings(
            kafka=kafka, db=DatabaseSettings(url=db_url), storage_events_group=f"bench-{run}"
        )
        await create_topics(
            kafka.bootstrap_servers,
            {
                kafka.topic_file_discovered: 8,
                kafka.topic_storage_events: 4,
                settings.dead_letter_topic(kafka.topic_storage_events): 1,
            },
        )
        s3 = await stack.enter_async_context(s3_client(settings.s3))
        with contextlib.suppress(Exception):
            await s3.create_bucket(Bucket=bucket)
        print(
            f"bucket {bucket}: preparing {args.objects} objects under {SYNC_PREFIX} in {args.folders} folders",
            flush=True,
        )
        present = await count_keys(s3, bucket, SYNC_PREFIX)
        if present != args.objects:
            start = present if present < args.objects else 0
            sync_keys = (
                f"{SYNC_PREFIX}f{i % args.folders:03d}/img-{i:07d}" for i in range(start, args.objects)
            )
            rate = await upload(s3, bucket, sync_keys, args.objects - start)
            print(f"  uploaded at {rate:.0f} objects/s", flush=True)
        notify_keys = [f"{NOTIFY_PREFIX}n-{i:07d}" for i in range(args.notifications)]
        if await count_keys(s3, bucket, NOTIFY_PREFIX) != args.notifications:
            await upload(s3, bucket, notify_keys, len(notify_keys))

        pool = await create_pool(settings.db)
        stack.push_async_callback(pool.close)
        executor = ThreadPoolExecutor(settings.inspect_threads)
        stack.callback(executor.shutdown, wait=True)
        broker = build_broker(kafka, client_id=f"bench-{run}")
        parts = assemble(settings, pool, broker, s3, executor)
        timed_processor = TimedProcessor(parts.processor, expected=args.notifications)
        broker.include_router(
            storage_events_router(
                cast(NotificationProcessor, timed_processor),
                kafka,
                group_id=settings.storage_events_group,
                max_records=settings.storage_events_batch,
            )
        )
        catalogue = parts.catalogue
        sync_dataset, _ = await catalogue.create_dataset(
            name=f"bench-{run}",
            description="",
            storage_connection="default",
            bucket=bucket,
            prefix=SYNC_PREFIX,
            version_file_limit=10_000_000,
            labeling={},
            indexing={},
        )

        # The machine is shared: every baseline is taken right next to the phase it is
        # compared with (before and after it), and the phase is compared with their mean.
        sample = await sample_keys(s3, bucket, SYNC_PREFIX, min(args.objects, 3000))

        async def list_baseline(label: str) -> float:
            (listed, rate), _, _ = await timed(
                f"raw listing {label}", sampler, lambda: raw_listing(s3, bucket, SYNC_PREFIX)
            )
            print(f"    {rate:.0f} keys/s ({listed} keys)", flush=True)
            return float(rate)

        async def get_baseline(label: str) -> float:
            rate, _, _ = await timed(
                f"raw ranged GET x{len(sample)} {label}",
                sampler,
                lambda: raw_ranged_gets(
                    s3, bucket, sample, settings.inspect_concurrency, settings.header_bytes
                ),
            )
            print(f"    {rate:.0f} objects/s", flush=True)
            return float(rate)

        print("\nbaselines before the full sync (raw aioboto3, same client settings)", flush=True)
        list_before = await list_baseline("before")
        get_before = await get_baseline("before")

        await broker.start()
        stack.push_async_callback(broker.stop)
        version_id = await catalogue.latest_version_id(sync_dataset.id)

        async def sync(mode: SyncMode) -> Any:
            job = await catalogue.create_sync_job(
                sync_dataset.id, version_id, mode, trace_id=uuid.uuid4().hex
            )
            await parts.runner.run(job.id)
            return await catalogue.get_sync_job(job.id)

        print("\nfull sync (lists, reads every header, writes the catalogue, publishes events)", flush=True)
        full, full_s, full_rss = await timed("full sync", sampler, lambda: sync(SyncMode.FULL))
        full_rate = full.counts.listed / full_s
        print(
            f"  {full.state}: listed {full.counts.listed}, events {full.counts.events_published}, {full_rate:.0f} files/s",
            flush=True,
        )

        print("\nbaselines after the full sync", flush=True)
        get_after = await get_baseline("after")
        list_between = await list_baseline("between")
        list_rate = (list_before + list_between) / 2
        get_rate = (get_before + get_after) / 2

        print("\nre-sync (incremental, nothing changed: listing + catalogue comparison)", flush=True)
        again, again_s, again_rss = await timed("re-sync", sampler, lambda: sync(SyncMode.INCREMENTAL))
        again_rate = again.counts.listed / again_s
        print(
            f"  {again.state}: unchanged {again.counts.unchanged}, events {again.counts.events_published}, {again_rate:.0f} files/s",
            flush=True,
        )
        list_after = await list_baseline("after")
        resync_list_rate = (list_between + list_after) / 2

        notify_rate = 0.0
        notify_rss = 0
        if args.notifications:
            print(
                f"\nnotifications ({args.notifications} S3 PUT notifications on the storage-events topic)",
                flush=True,
            )
            await catalogue.create_dataset(
                name=f"bench-{run}-notify",
                description="",
                storage_connection="default",
                bucket=bucket,
                prefix=NOTIFY_PREFIX,
                version_file_limit=10_000_000,
                labeling={},
                indexing={},
            )
            producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=5, acks="all")
            await producer.start()
            try:
                sends = [
                    await producer.send(
                        kafka.topic_storage_events, notification(bucket, key, index), key=key.encode()
                    )
                    for index, key in enumerate(notify_keys)
                ]
                await asyncio.gather(*sends)
            finally:
                await producer.stop()

            async def wait_notifications() -> None:
                await asyncio.wait_for(timed_processor.done.wait(), timeout=1800)

            _, _, notify_rss = await timed("consume (incl. group join)", sampler, wait_notifications)
            window = timed_processor.last_end - timed_processor.first_start
            notify_rate = timed_processor.notifications / window if window > 0 else 0.0
            print(
                f"  {timed_processor.notifications} notifications, {timed_processor.events} events, "
                f"{window:.1f} s from first to last batch: {notify_rate:.0f} notifications/s",
                flush=True,
            )

        published = await topic_size(
            kafka.bootstrap_servers,
            kafka.topic_file_discovered,
            full.counts.events_published + timed_processor.events,
        )

        print("\nsummary")
        print(
            f"  raw listing            {list_rate:8.0f} keys/s     (mean around the full sync; {resync_list_rate:.0f} around the re-sync)"
        )
        print(
            f"  raw ranged GET         {get_rate:8.0f} objects/s  (concurrency {settings.inspect_concurrency})"
        )
        print(
            f"  full sync              {full_rate:8.0f} files/s   ratio to listing {full_rate / list_rate:.2f}x (goal >= 0.8x); "
            f"to min(listing, GET) {full_rate / min(list_rate, get_rate):.2f}x"
        )
        print(
            f"  re-sync (incremental)  {again_rate:8.0f} files/s   ratio to listing {again_rate / resync_list_rate:.2f}x"
        )
        if args.notifications:
            print(
                f"  notifications          {notify_rate:8.0f} /s        ratio to ranged GET {notify_rate / get_rate:.2f}x"
            )
        print(
            f"  peak RSS               full sync {mib(full_rss)}, re-sync {mib(again_rss)}"
            + (f", notifications {mib(notify_rss)}" if args.notifications else "")
        )
        print(
            f"  events on the topic    {published} (full sync {full.counts.events_published} + notifications {timed_processor.events})"
        )
        if not args.keep:
            await delete_prefix(s3, bucket, "")
            await s3.delete_bucket(Bucket=bucket)


async def topic_size(bootstrap: str, topic: str, expected: int) -> int:
    """Records on a topic, read from the start until ``expected`` arrived or 5 s pass without any."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    count = 0
    idle_since = time.monotonic()
    try:
        while count < expected and time.monotonic() - idle_since < 5.0:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            received = sum(len(batch) for batch in batches.values())
            if received:
                count += received
                idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return count


def notification(bucket: str, key: str, index: int) -> bytes:
    record = {
        "eventName": "ObjectCreated:Put",
        "eventTime": "2026-01-01T00:00:00.000Z",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 100, "sequencer": f"{index + 1:016X}"},
        },
    }
    return json.dumps({"Records": [record]}).encode()


async def delete_prefix(s3: Any, bucket: str, prefix: str) -> None:
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", ())]
        if keys:
            await s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--objects", type=int, default=20_000, help="objects under the synced prefix (100000 for the big run)"
    )
    parser.add_argument("--folders", type=int, default=16, help="common prefixes the objects are spread over")
    parser.add_argument(
        "--notifications",
        type=int,
        default=2_000,
        help="PUT notifications to process (10000 for the big run)",
    )
    parser.add_argument(
        "--bucket", help="bucket to use (and reuse: objects already there are not uploaded again)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the bucket (with --bucket, a later run reuses its objects)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
