"""Fixtures of the ingest tests: images of every kind, and a whole ingest process on real servers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka import KafkaBroker
from PIL import Image

from viewfinder.v1 import common_pb2, dataset_pb2, dataset_pb2_grpc, events_pb2
from viewfinder_common.db import create_pool
from viewfinder_common.events import decode_event
from viewfinder_common.grpc_server import GrpcServer
from viewfinder_common.kafka import build_broker
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import DatabaseSettings, KafkaSettings
from viewfinder_ingest.adapters.kafka import KafkaEventPublisher
from viewfinder_ingest.config import IngestSettings
from viewfinder_ingest.domain.inspection import InspectionLimits
from viewfinder_ingest.domain.inspector import ObjectInspector
from viewfinder_ingest.domain.sync_runner import SyncOptions, SyncRunner
from viewfinder_ingest.handlers.grpc_dataset import DatasetServicer
from viewfinder_ingest.main import SERVICE_NAME, IngestComponents, assemble


def encode_image(fmt: str, size: tuple[int, int] = (24, 16), mode: str = "RGB", seed: int = 0) -> bytes:
    """A small real image in ``fmt`` (Pillow's name); ``seed`` varies the pixels (and so the ETag)."""
    image = Image.new(mode, size, color=(seed * 37 % 256, 90, 160) if mode == "RGB" else seed % 256)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb) in ~100 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def animated_gif(frames: int = 3) -> bytes:
    """A GIF with ``frames`` distinct frames."""
    images = [
        Image.new("RGB", (8, 8), color=(index * 60 % 256, 0, 255 - index * 60 % 256))
        for index in range(frames)
    ]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=50)
    return buffer.getvalue()


class ImageKit:
    """Image builders for tests (a fixture, since test modules cannot import each other)."""

    encode = staticmethod(encode_image)
    png_bomb = staticmethod(png_bomb)
    animated_gif = staticmethod(animated_gif)


@pytest.fixture
def images() -> type[ImageKit]:
    """``images.encode(fmt, size=..., mode=..., seed=...)``, ``images.png_bomb()``, ``images.animated_gif()``."""
    return ImageKit


# --- A whole ingest process over the real servers of the local stack -----------------------


class EventLog:
    """Collects every record of one topic from the start (no consumer group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self._consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                self.records.extend(batch)
                self._arrived.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def wait_for(self, count: int, timeout_s: float = 60.0, quiet_s: float = 2.0) -> list[Any]:
        """Waits for at least ``count`` records, then ``quiet_s`` more so that extras would show."""
        deadline = time.monotonic() + timeout_s
        while len(self.records) < count and time.monotonic() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), max(deadline - time.monotonic(), 0.01))
        await asyncio.sleep(quiet_s)
        return list(self.records)

    def file_events(self) -> list[events_pb2.FileDiscovered]:
        """The records decoded as FileDiscovered."""
        return [decode_event(events_pb2.FileDiscovered, record.value or b"") for record in self.records]


@dataclass
class Harness:
    """An ingest process's parts on real servers, a gRPC client and the test's bucket."""

    settings: IngestSettings
    parts: IngestComponents
    stub: dataset_pb2_grpc.DatasetServiceAsyncStub
    s3: Any
    broker: KafkaBroker
    bucket: str
    events: EventLog
    dead_letters: EventLog
    pool: asyncpg.Pool

    async def put_many(self, objects: dict[str, bytes], concurrency: int = 48) -> dict[str, str]:
        """Uploads objects concurrently; returns their ETags by key."""
        slots = asyncio.Semaphore(concurrency)
        etags: dict[str, str] = {}

        async def put(key: str, body: bytes) -> None:
            async with slots:
                response = await self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
                etags[key] = response["ETag"].strip('"')

        await asyncio.gather(*(put(key, body) for key, body in objects.items()))
        return etags

    async def delete_many(self, keys: list[str]) -> None:
        """Deletes objects from the bucket."""
        await asyncio.gather(*(self.s3.delete_object(Bucket=self.bucket, Key=key) for key in keys))

    async def create_dataset(self, name: str, prefix: str = "") -> dataset_pb2.CreateDatasetResponse:
        """Registers the test bucket (and prefix) as a dataset."""
        response: dataset_pb2.CreateDatasetResponse = await self.stub.CreateDataset(
            dataset_pb2.CreateDatasetRequest(name=name, bucket=self.bucket, prefix=prefix), timeout=10
        )
        return response

    async def sync(
        self, dataset_id: str, mode: common_pb2.JobMode.ValueType, timeout_s: float = 120.0
    ) -> dataset_pb2.SyncJob:
        """Starts a sync through the API and waits until it is terminal."""
        started = await self.stub.StartSync(
            dataset_pb2.StartSyncRequest(dataset_id=dataset_id, mode=mode), timeout=10
        )
        return await self.wait_job(started.job.job.id, timeout_s)

    async def wait_job(self, job_id: str, timeout_s: float = 120.0) -> dataset_pb2.SyncJob:
        """Polls GetJob until the job is SUCCEEDED, FAILED or CANCELLED."""
        deadline = time.monotonic() + timeout_s
        while True:
            job: dataset_pb2.SyncJob = (
                await self.stub.GetJob(dataset_pb2.GetJobRequest(job_id=job_id), timeout=10)
            ).job
            if job.job.state in TERMINAL or time.monotonic() > deadline:
                return job
            await asyncio.sleep(0.2)

    async def all_files(self, version_id: str) -> list[dataset_pb2.File]:
        """Every file of a version, through ListFiles pagination."""
        files: list[dataset_pb2.File] = []
        token = ""
        while True:
            page = await self.stub.ListFiles(
                dataset_pb2.ListFilesRequest(dataset_version_id=version_id, page_size=1000, page_token=token),
                timeout=10,
            )
            files.extend(page.files)
            token = page.next_page_token
            if not token:
                return files

    async def publish_notification(self, body: bytes) -> None:
        """Puts a raw notification on the storage-events topic, as the relay or a store would."""
        await self.broker.publish(body, self.settings.kafka.topic_storage_events)


TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
HarnessFactory = Callable[..., Awaitable[Harness]]


async def _create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()]
        )
    finally:
        await admin.close()


@pytest.fixture
async def make_harness(catalogue_db_url: str, unique_name: str) -> AsyncIterator[HarnessFactory]:
    """``await make_harness(subscribe=False, store=None, **settings)``: one running ingest harness.

    ``subscribe`` joins the storage-events consumer group (seconds on tansu, so
    only tests of notifications ask for it); ``store`` wraps the S3 store (to
    inject failures); other keywords override IngestSettings fields.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def factory(
            subscribe: bool = False, store: Callable[[Any], Any] | None = None, **overrides: Any
        ) -> Harness:
            kafka = KafkaSettings(
                topic_file_discovered=f"{unique_name}.file-discovered",
                topic_storage_events=f"{unique_name}.storage-events",
            )
            settings = IngestSettings(
                kafka=kafka,
                db=DatabaseSettings(url=catalogue_db_url),
                storage_events_group=f"{unique_name}-ingest",
                webhook_port=0,
                job_heartbeat_s=1.0,
                **overrides,
            )
            dead_letter_topic = settings.dead_letter_topic(kafka.topic_storage_events)
            await _create_topics(
                kafka.bootstrap_servers,
                {kafka.topic_file_discovered: 3, kafka.topic_storage_events: 2, dead_letter_topic: 1},
            )
            pool = await create_pool(settings.db)
            stack.push_async_callback(pool.close)
            s3 = await stack.enter_async_context(s3_client(settings.s3))
            bucket = unique_name.replace("_", "-")
            await s3.create_bucket(Bucket=bucket)
            executor = ThreadPoolExecutor(2)
            stack.callback(executor.shutdown, wait=True)
            broker = build_broker(kafka, client_id=f"test-{unique_name}")
            parts = assemble(settings, pool, broker, s3, executor)
            if store is not None:
                parts = _with_store(parts, store(parts.store), settings, broker, executor)
            if subscribe:
                broker.include_router(parts.router)
            await broker.start()
            stack.push_async_callback(broker.stop)
            stack.push_async_callback(parts.runner.close)
            server = GrpcServer(
                host="127.0.0.1",
                port=0,
                service_names=[SERVICE_NAME],
                registrations=[
                    lambda s: dataset_pb2_grpc.add_DatasetServiceServicer_to_server(parts.servicer, s)
                ],
                shutdown_grace_s=0.5,
            )
            await server.start()
            stack.push_async_callback(server.stop)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            stack.push_async_callback(channel.close)
            events = EventLog(kafka.bootstrap_servers, kafka.topic_file_discovered)
            dead_letters = EventLog(kafka.bootstrap_servers, dead_letter_topic)
            for log in (events, dead_letters):
                await log.start()
                stack.push_async_callback(log.stop)
            return Harness(
                settings=settings,
                parts=parts,
                stub=dataset_pb2_grpc.DatasetServiceStub(channel),
                s3=s3,
                broker=broker,
                bucket=bucket,
                events=events,
                dead_letters=dead_letters,
                pool=pool,
            )

        yield factory


def _with_store(
    parts: IngestComponents,
    store: Any,
    settings: IngestSettings,
    broker: KafkaBroker,
    executor: ThreadPoolExecutor,
) -> IngestComponents:
    """The parts again, with the sync runner and inspector reading through ``store``."""
    inspector = ObjectInspector(
        store,
        executor,
        limits=InspectionLimits(
            max_image_pixels=settings.max_image_pixels, verify_max_pixels=settings.verify_max_pixels
        ),
        header_bytes=settings.header_bytes,
        max_header_bytes=settings.max_header_bytes,
        concurrency=settings.inspect_concurrency,
    )
    runner = SyncRunner(
        parts.catalogue,
        store,
        inspector,
        KafkaEventPublisher(broker, settings.kafka.topic_file_discovered),
        SyncOptions(
            listing_concurrency=settings.listing_concurrency,
            page_size=settings.listing_page_size,
            heartbeat_s=settings.job_heartbeat_s,
        ),
    )
    servicer = DatasetServicer(
        parts.catalogue, parts.store, runner, version_file_limit=settings.default_version_file_limit
    )
    return IngestComponents(
        parts.catalogue,
        parts.store,
        inspector,
        runner,
        parts.processor,
        servicer,
        parts.router,
        parts.webhook,
    )
