"""Embedder pipeline throughput against the raw batched model, measured in the same run.

Baseline: the model alone on already-decoded pixels (batches of 32) — the
most the pipeline could reach on this machine. Pipeline: the real service
(``viewfinder_embedder.main.serve``) on the local stack: FileDiscovered
events on the broker → objects fetched from the S3 API server → decoded in
the process pool → embedded → upserted into the vector store → FileEmbedded
published, timed from the first published event to the last FileEmbedded
read (after a warm-up file, so the consumer-group join is not counted).
Also printed: decode alone and S3 GET alone, to show where time goes, and
the peak resident memory of the process with its decode workers.

Needs ``make up``. Defaults are modest (256 JPEG photos-sized images);
``--images 2000 --format png`` for a bigger run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import psutil  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from PIL import Image, ImageDraw

from viewfinder.v1 import events_pb2
from viewfinder_common.db import migrate
from viewfinder_common.events import encode_event
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import DatabaseSettings, KafkaSettings, S3Settings
from viewfinder_common.vectorstore.factory import VectorStoreSettings
from viewfinder_embedder.adapters.offline_model import OfflineEmbeddingModel
from viewfinder_embedder.config import EmbedderSettings, default_model_cache_dir
from viewfinder_embedder.domain.decode import DecodedImage, decode_image
from viewfinder_embedder.main import serve

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.local.stack import load_env  # noqa: E402 - needs the repo root on sys.path


def synthetic_image(seed: int, fmt: str, size: tuple[int, int]) -> bytes:
    """A photo-sized picture: a noisy gradient with shapes (JPEG compresses it like a photo)."""
    rng = np.random.default_rng(seed)
    width, height = size
    gradient = np.linspace(0, 1, width)[None, :, None] * rng.uniform(80, 255, 3)[None, None, :]
    noise = rng.normal(0, 25, (height, width, 3))
    pixels = np.clip(gradient + noise + rng.uniform(0, 60, 3), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 50)), int(rng.integers(0, height - 50))
        box = (x0, y0, x0 + int(rng.integers(30, width // 2)), y0 + int(rng.integers(30, height // 2)))
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if fmt == "jpeg" else "PNG", quality=85)
    return buffer.getvalue()


class PeakMemory:
    """Samples the resident memory of this process and its children (decode workers)."""

    def __init__(self) -> None:
        self.peak = 0
        self._process = psutil.Process()
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Takes one sample."""
        total = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        self.peak = max(self.peak, total)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def _timed(label: str, count: int, action: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await action()
    rate = count / (time.perf_counter() - started)
    print(f"  {label:<44} {rate:8.1f} img/s")
    return rate


async def _read_embedded(topic: str, count: int, timeout_s: float) -> int:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=KafkaSettings().bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen = 0
    try:
        deadline = time.monotonic() + timeout_s
        while seen < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                seen += len(batch)
    finally:
        await consumer.stop()
    return seen


async def main_async(args: argparse.Namespace) -> int:
    """Runs the baselines and the pipeline; prints rates and the ratio."""
    print(
        f"embedder pipeline benchmark: {args.images} {args.format} images of {args.width}x{args.height}, store {args.store}"
    )
    images = [synthetic_image(n, args.format, (args.width, args.height)) for n in range(args.images + 1)]
    print(f"  mean object size {np.mean([len(i) for i in images]) / 1024:.0f} KiB; CPUs {os.cpu_count()}")
    model = OfflineEmbeddingModel.load(default_model_cache_dir(), batch_size=32)
    settings = EmbedderSettings()

    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = list(pool.map(_decode_for_bench, images, chunksize=8))
    pixels = [d.pixels for d in decoded if isinstance(d, DecodedImage)]
    model.embed_images_sync(pixels[:32])  # warm-up
    raw = await _timed(
        "baseline: raw model, batch 32 (pixels ready)",
        len(pixels),
        lambda: asyncio.to_thread(model.embed_images_sync, pixels),
    )

    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as decode_pool:
        list(decode_pool.map(_decode_for_bench, images[:8]))  # workers started before timing
        decode = await _timed(
            "decode alone (process pool, all CPUs)",
            len(images),
            lambda: asyncio.to_thread(lambda: list(decode_pool.map(_decode_for_bench, images, chunksize=8))),
        )

    name = f"bench{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(DatabaseSettings().url)
    base = DatabaseSettings().url.rpartition("/")[0]
    await admin.execute(f'CREATE DATABASE "{name}"')
    db_url = f"{base}/{name}"
    try:
        conn = await asyncpg.connect(db_url)
        try:
            await migrate(conn)
            dataset_id = await conn.fetchval(
                "INSERT INTO datasets (name, bucket) VALUES ($1, $1) RETURNING id::text", name
            )
            version_id = await conn.fetchval(
                "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1::uuid, 1) RETURNING id::text",
                dataset_id,
            )
            keys = [f"img/{n:06d}.{args.format}" for n in range(len(images))]
            file_ids = [
                await conn.fetchval(
                    "INSERT INTO files (dataset_id, version_id, bucket, key, uri, status) "
                    "VALUES ($1::uuid, $2::uuid, $3, $4, $5, 'active') RETURNING id::text",
                    dataset_id,
                    version_id,
                    name,
                    key,
                    f"s3://{name}/{key}",
                )
                for key in keys
            ]
        finally:
            await conn.close()

        async with s3_client(S3Settings()) as s3:
            await s3.create_bucket(Bucket=name)
            semaphore = asyncio.Semaphore(32)

            async def put(key: str, data: bytes) -> str:
                async with semaphore:
                    reply = await s3.put_object(Bucket=name, Key=key, Body=data)
                return str(reply["ETag"]).strip('"')

            etags = await asyncio.gather(*(put(k, d) for k, d in zip(keys, images, strict=True)))

            async def get_all() -> None:
                async def get(key: str) -> None:
                    async with semaphore:
                        reply = await s3.get_object(Bucket=name, Key=key)
                        async with reply["Body"] as body:
                            await body.read()

                await asyncio.gather(*(get(k) for k in keys))

            fetch = await _timed("S3 GET alone (32 concurrent)", len(keys), get_all)

        discovered, embedded = f"{name}.file-discovered", f"{name}.file-embedded"
        kafka_admin = AIOKafkaAdminClient(bootstrap_servers=KafkaSettings().bootstrap_servers)
        await kafka_admin.start()
        await kafka_admin.create_topics(
            [
                NewTopic(discovered, num_partitions=1, replication_factor=1),
                NewTopic(embedded, num_partitions=1, replication_factor=1),
            ]
        )
        await kafka_admin.close()
        service_settings = settings.model_copy(
            update={
                "db": DatabaseSettings(url=db_url),
                "kafka": KafkaSettings(topic_file_discovered=discovered, topic_file_embedded=embedded),
                "vector_store": VectorStoreSettings(kind=args.store),
                "consumer_group": f"{name}-embedder",
                "grpc_port": 0,
                "log_level": "WARNING",
                "consume_batch_max_records": args.batch,
            }
        )
        events = [
            events_pb2.FileDiscovered(
                event_id=str(uuid.uuid4()),
                dataset_id=dataset_id,
                dataset_version_id=version_id,
                file_id=file_id,
                uri=f"s3://{name}/{key}",
                bucket=name,
                key=key,
                etag=etag,
                size=len(data),
                change_type=events_pb2.CHANGE_TYPE_UPSERT,
            )
            for file_id, key, etag, data in zip(file_ids, keys, etags, images, strict=True)
        ]
        stop = asyncio.Event()
        memory = PeakMemory()
        with memory:
            service = asyncio.create_task(serve(stop, service_settings, preloaded={"offline": model}))
            producer = AIOKafkaProducer(
                bootstrap_servers=KafkaSettings().bootstrap_servers, acks="all", linger_ms=5
            )
            await producer.start()
            try:
                await producer.send_and_wait(
                    discovered, encode_event(events[0]), key=events[0].file_id.encode()
                )
                if await _read_embedded(embedded, 1, 120) < 1:  # warm-up: group joined, index created
                    print("the warm-up file was not embedded in 120 s", file=sys.stderr)
                    return 1
                started = time.perf_counter()
                await asyncio.gather(
                    *[
                        await producer.send(discovered, encode_event(event), key=event.file_id.encode())
                        for event in events[1:]
                    ]
                )
                done = await _read_embedded(embedded, len(events), 600)
                elapsed = time.perf_counter() - started
            finally:
                await producer.stop()
                stop.set()
                await asyncio.wait_for(service, 60)
        pipeline = (done - 1) / elapsed
        print(
            f"  {'pipeline: Kafka → S3 → decode → model → ' + args.store + ' → Kafka':<44} {pipeline:8.1f} img/s ({done - 1}/{len(events) - 1} files)"
        )
        print()
        # The stages share the same CPUs (model, decode workers, and here the S3 server too),
        # so the best a pipeline can do is one image's CPU time summed over all stages.
        ideal = 1 / (1 / raw + 1 / decode + 1 / fetch)
        print(f"ratio pipeline / raw model: {pipeline / raw:.2f}x (goal ≥ 0.9x)")
        print(
            f"ratio pipeline / CPU-bound ideal of the three stages on shared CPUs ({ideal:.1f} img/s): "
            f"{pipeline / ideal:.2f}x"
        )
        print(f"peak resident memory (service process + decode workers): {memory.peak / 2**20:.0f} MiB")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return 0


def _decode_for_bench(data: bytes) -> DecodedImage | str:
    result = decode_image(data, size=224, max_pixels=100_000_000)
    return result if isinstance(result, DecodedImage) else result.reason


def main() -> int:
    """Parses flags and runs the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--store", choices=["pgvector", "milvus"], default="pgvector")
    parser.add_argument("--batch", type=int, default=256, help="records per consumed batch")
    args = parser.parse_args()
    load_env()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
