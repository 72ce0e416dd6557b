"""Offline zero-shot tagger throughput: scoring stored vectors vs. embedding every image again.

Runs the real embedder (``viewfinder-embedder``, the offline model, pgvector)
as a process and the tagger in this process, on a fresh database, bucket and
topics, with ``--images`` openclipart PNGs (default 300). Measured in the same
run, one fresh dataset each (after a 10-image warm-up through the same tagger),
in ``--rounds`` rounds of alternating order; medians are printed:

pipeline (FileDiscovered events published for every file at once, as a sync does):
  1. embedding only, automatic labeling off: the baseline;
  2. automatic labeling, re-embedding (``use_stored_vectors: false``, the
     former behaviour): the tagger follows file-discovered and sends every
     image to EmbedImage, beside the embedder's own pipeline;
  3. automatic labeling, stored vectors (the default now): the tagger follows
     file-embedded and scores the vector the embedder stored.
  Rates are files / seconds from the first event until every file has its
  vector (1) or its label run (2, 3).
label job (FULL, over the round's last embedded dataset):
  4. re-embedding vs. 5. stored vectors, timed by the job's own timestamps.

Needs the local stack (make up) and ``openclipart-png``. Timings on a shared
machine are noisy; the ratios within one run are what counts.

    python bench/tagger/zero_shot.py                 # 300 images, 2 rounds, ~5 minutes
    python bench/tagger/zero_shot.py --images 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from aiokafka import AIOKafkaProducer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from viewfinder.v1 import common_pb2, events_pb2, labeling_pb2, labeling_pb2_grpc
from viewfinder_common.db import migrate
from viewfinder_common.events import encode_event
from viewfinder_common.s3 import s3_session
from viewfinder_common.settings import DatabaseSettings, KafkaSettings, S3Settings
from viewfinder_common.testing.kafka import create_topics
from viewfinder_tagger.adapters.catalogue import Catalogue
from viewfinder_tagger.config import TaggerSettings, ZeroShotConnection
from viewfinder_tagger.domain.definitions import DefinitionContent, TagSpec
from viewfinder_tagger.main import serve

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.local.stack import load_env  # noqa: E402 - needs the repo root on sys.path

OPENCLIPART = Path("/usr/share/openclipart/png")
CATEGORIES = ("animals", "food", "people", "plants", "tools", "transportation", "buildings", "office")
TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
LABEL_CONCURRENCY = 8
# Pipeline measurements: name -> (automatic labeling, stored vectors).
MODES = {
    "embedding only": (False, True),
    "labeling, re-embedding": (True, False),
    "labeling, stored vectors": (True, True),
}
# Below the embedder's max_image_pixels (100 M), with room for PNG palettes.
MAX_PIXELS = 50_000_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Bench:
    """One fresh database, bucket and topic set, the embedder process and a producer."""

    def __init__(self, name: str, db_url: str, bucket: str, s3: Any, pool: asyncpg.Pool) -> None:
        self.name, self.db_url, self.bucket, self.s3, self.pool = name, db_url, bucket, s3, pool
        self.topics = KafkaSettings(
            topic_file_discovered=f"{name}.discovered",
            topic_file_embedded=f"{name}.embedded",
            topic_file_tagged=f"{name}.tagged",
        )
        self.embedder_port = _free_port()
        self.producer: AIOKafkaProducer | None = None
        self.definition_id = ""

    def embedder_env(self) -> dict[str, str]:
        """The embedder's environment: the stack's, pointed at this bench's database and topics."""
        return {
            **os.environ,
            "VIEWFINDER_DB_URL": self.db_url,
            "VIEWFINDER_EMBEDDER_GRPC_PORT": str(self.embedder_port),
            "VIEWFINDER_EMBEDDER_CONSUMER_GROUP": f"{self.name}-embedder",
            "VIEWFINDER_EMBEDDER_DECODE_WORKERS": "1",
            "VIEWFINDER_EMBEDDER_LOG_LEVEL": "WARNING",
            "VIEWFINDER_KAFKA_TOPIC_FILE_DISCOVERED": self.topics.topic_file_discovered,
            "VIEWFINDER_KAFKA_TOPIC_FILE_EMBEDDED": self.topics.topic_file_embedded,
            "VIEWFINDER_KAFKA_TOPIC_FILE_TAGGED": self.topics.topic_file_tagged,
        }

    async def dataset(
        self, keys: list[tuple[str, str, int]], *, automatic: bool
    ) -> tuple[str, str, list[str]]:
        """A dataset version over the uploaded objects; (dataset id, version id, file ids)."""
        dataset_id = await self.pool.fetchval(
            "INSERT INTO datasets (name, bucket) VALUES ($1, $2) RETURNING id", uuid.uuid4().hex, self.bucket
        )
        version_id = await self.pool.fetchval(
            "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset_id
        )
        ids = []
        for key, etag, size in keys:
            ids.append(
                await self.pool.fetchval(
                    "INSERT INTO files (dataset_id, version_id, bucket, key, uri, size, etag, last_modified) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, now()) RETURNING id",
                    dataset_id,
                    version_id,
                    self.bucket,
                    key,
                    f"s3://{self.bucket}/{key}",
                    size,
                    etag,
                )
            )
        if automatic:
            await self.pool.execute(
                "INSERT INTO dataset_labeling_settings (dataset_id, automatic, definition_id) VALUES ($1, true, $2)",
                dataset_id,
                uuid.UUID(self.definition_id),
            )
        return str(dataset_id), str(version_id), [str(i) for i in ids]

    async def discover(self, dataset_id: str, version_id: str) -> None:
        """Publishes one FileDiscovered per file of the version, as a sync does."""
        assert self.producer is not None
        rows = await self.pool.fetch(
            "SELECT id, key, etag, size FROM files WHERE version_id = $1", uuid.UUID(version_id)
        )
        for row in rows:
            event = events_pb2.FileDiscovered(
                event_id=uuid.uuid4().hex,
                dataset_id=dataset_id,
                dataset_version_id=version_id,
                file_id=str(row["id"]),
                uri=f"s3://{self.bucket}/{row['key']}",
                bucket=self.bucket,
                key=row["key"],
                etag=row["etag"],
                size=row["size"],
                change_type=events_pb2.CHANGE_TYPE_UPSERT,
            )
            await self.producer.send(
                self.topics.topic_file_discovered, encode_event(event), key=str(row["id"]).encode()
            )
        await self.producer.flush()

    async def counts(self, version_id: str) -> tuple[int, int]:
        """(files with a vector, files with a label run) of a version."""
        embedded = await self.pool.fetchval(
            "SELECT count(*) FROM embedding_index_files WHERE dataset_version_id = $1", uuid.UUID(version_id)
        )
        labeled = await self.pool.fetchval(
            "SELECT count(*) FROM file_label_runs r JOIN files f ON f.id = r.file_id WHERE f.version_id = $1",
            uuid.UUID(version_id),
        )
        return int(embedded), int(labeled)


@contextlib.asynccontextmanager
async def tagger(bench: Bench, *, stored_vectors: bool, automatic: bool) -> AsyncIterator[Any]:
    """The tagger service in this process; yields a LabelingService stub."""
    port = _free_port()
    settings = TaggerSettings.model_validate(
        {
            "grpc_port": port,
            "db": DatabaseSettings(url=bench.db_url, pool_max_size=20),
            "kafka": bench.topics,
            "consumer_group": f"{bench.name}-tagger-{uuid.uuid4().hex[:6]}",
            "auto_labeling": automatic,
            "log_level": "WARNING",
            "connections": {
                "offline": ZeroShotConnection(
                    embedder_address=f"127.0.0.1:{bench.embedder_port}", use_stored_vectors=stored_vectors
                )
            },
        }
    )
    stop = asyncio.Event()
    service = asyncio.create_task(serve(stop, settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await _wait_serving(channel, service)
            yield labeling_pb2_grpc.LabelingServiceStub(channel)
    finally:
        stop.set()
        await service


async def _wait_serving(channel: grpc.aio.Channel, task: asyncio.Task[None] | None = None) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if task is not None and task.done():
            task.result()
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        await asyncio.sleep(0.5)
    raise RuntimeError("the service did not become SERVING")


async def pipeline(
    bench: Bench, keys: list[tuple[str, str, int]], *, labeling: bool, stored: bool
) -> tuple[float, float, str]:
    """Seconds until every file is embedded and (with labeling) until every file is labeled too; the version.

    A small warm-up dataset goes first through the same tagger, so that its
    consumers have joined their group and its caches are filled before the clock starts.
    """
    async with tagger(bench, stored_vectors=stored, automatic=labeling):
        await _until_done(bench, keys[:10], labeling=labeling)
        return await _until_done(bench, keys, labeling=labeling)


async def _until_done(
    bench: Bench, keys: list[tuple[str, str, int]], *, labeling: bool
) -> tuple[float, float, str]:
    dataset_id, version_id, ids = await bench.dataset(keys, automatic=labeling)
    started = time.monotonic()
    await bench.discover(dataset_id, version_id)
    embedded_s = 0.0
    deadline = started + 900
    while time.monotonic() < deadline:
        embedded, labeled = await bench.counts(version_id)
        if embedded >= len(ids) and not embedded_s:
            embedded_s = time.monotonic() - started
        if embedded_s and (labeled >= len(ids) or not labeling):
            return embedded_s, time.monotonic() - started, version_id
        await asyncio.sleep(0.1)
    raise RuntimeError(f"not done after 900 s: {await bench.counts(version_id)} of {len(ids)}")


async def label_job(bench: Bench, version_id: str, *, stored: bool) -> float:
    """Seconds of a FULL label job over an embedded version (the job's own timestamps)."""
    async with tagger(bench, stored_vectors=stored, automatic=False) as stub:
        started = await stub.StartLabelJob(
            labeling_pb2.StartLabelJobRequest(
                dataset_version_id=version_id,
                tag_definition_id=bench.definition_id,
                mode=common_pb2.JOB_MODE_FULL,
                max_concurrency=LABEL_CONCURRENCY,
            ),
            timeout=10,
        )
        while True:
            job = (
                await stub.GetLabelJob(labeling_pb2.GetLabelJobRequest(job_id=started.job.job.id), timeout=10)
            ).job
            if job.job.state in TERMINAL:
                break
            await asyncio.sleep(0.2)
        if job.job.state != common_pb2.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"the label job failed: {job.job.error}")
        return float((job.job.end_time.ToDatetime() - job.job.start_time.ToDatetime()).total_seconds())


def embeddable(path: Path) -> bool:
    """Whether the embedder takes the image (its pixel limit; openclipart has a few posters beyond it)."""
    try:
        with Image.open(path) as image:
            return image.width * image.height <= MAX_PIXELS
    except (OSError, Image.DecompressionBombError):
        return False


def start_embedder(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``viewfinder-embedder`` as a process (its logs are not needed)."""
    return subprocess.Popen(
        [str(Path(sysconfig.get_path("scripts")) / "viewfinder-embedder")], env=env, stdout=subprocess.DEVNULL
    )


async def upload(s3: Any, bucket: str, paths: list[Path]) -> list[tuple[str, str, int]]:
    """Puts the images into the bucket; (key, etag, size) each."""
    gate = asyncio.Semaphore(32)

    async def put(path: Path) -> tuple[str, str, int]:
        key = path.relative_to(OPENCLIPART).as_posix()
        data = await asyncio.to_thread(path.read_bytes)
        async with gate:
            reply = await s3.put_object(Bucket=bucket, Key=key, Body=data)
        return key, reply["ETag"].strip('"'), len(data)

    return list(await asyncio.gather(*(put(p) for p in paths)))


async def main_async(args: argparse.Namespace) -> None:
    """Sets up, measures 1-5 and prints rates and ratios."""
    candidates = sorted(p for c in CATEGORIES for p in (OPENCLIPART / c).rglob("*.png"))
    paths = [p for p in random.Random(args.seed).sample(candidates, len(candidates)) if embeddable(p)]
    paths = paths[: args.images]
    name = f"bench_zs_{uuid.uuid4().hex[:8]}"
    db = DatabaseSettings()
    admin = await asyncpg.connect(db.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db_url = f"{db.url.rpartition('/')[0]}/{name}"
    s3_settings = S3Settings()
    session = s3_session(s3_settings)
    bucket = name.replace("_", "-")
    embedder: subprocess.Popen[bytes] | None = None
    try:
        async with session.client("s3", endpoint_url=s3_settings.endpoint_url) as s3:
            await s3.create_bucket(Bucket=bucket)
            pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
            assert pool is not None
            try:
                async with pool.acquire() as conn:
                    await migrate(conn)
                bench = Bench(name, db_url, bucket, s3, pool)
                await create_topics(
                    {
                        bench.topics.topic_file_discovered: 3,
                        bench.topics.topic_file_embedded: 3,
                        bench.topics.topic_file_tagged: 1,
                    }
                )
                keys = await upload(s3, bucket, paths)
                definition = await Catalogue(pool).create_definition(
                    "bench",
                    DefinitionContent(
                        description="",
                        guide_prompt="",
                        tags=tuple(TagSpec(c, c.replace("_", " ")) for c in CATEGORIES),
                    ),
                )
                bench.definition_id = definition.id
                embedder = start_embedder(bench.embedder_env())
                async with grpc.aio.insecure_channel(f"127.0.0.1:{bench.embedder_port}") as channel:
                    await _wait_serving(channel)
                results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
                jobs: dict[bool, list[float]] = {False: [], True: []}
                bench.producer = AIOKafkaProducer(
                    bootstrap_servers=KafkaSettings().bootstrap_servers, linger_ms=5
                )
                await bench.producer.start()
                try:
                    # Rounds in alternating order, so that a slow spell on the shared machine
                    # does not fall on one mode only; the medians are reported.
                    for round_number in range(args.rounds):
                        modes = list(MODES) if round_number % 2 == 0 else list(reversed(MODES))
                        for mode in modes:
                            labeling, stored = MODES[mode]
                            embedded_s, labeled_s, version_id = await pipeline(
                                bench, keys, labeling=labeling, stored=stored
                            )
                            results[mode].append((embedded_s, labeled_s))
                        for stored in (False, True) if round_number % 2 == 0 else (True, False):
                            jobs[stored].append(await label_job(bench, version_id, stored=stored))
                finally:
                    await bench.producer.stop()
            finally:
                await pool.close()
                async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                    if objects:
                        await s3.delete_objects(Bucket=bucket, Delete={"Objects": objects})
                await s3.delete_bucket(Bucket=bucket)
    finally:
        if embedder is not None:
            embedder.terminate()
            embedder.wait(timeout=60)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    n = len(keys)
    embed_only = statistics.median(embedded_s for embedded_s, _ in results["embedding only"])
    print(
        f"offline zero-shot tagger: {n} openclipart images, embedder with 1 decode worker, pgvector; "
        f"medians of {args.rounds} rounds"
    )
    print("pipeline (FileDiscovered for every file at once):")
    print(f"  {'1. embedding only (baseline)':<44} {n / embed_only:6.1f} images/s embedded")
    for number, mode in ((2, "labeling, re-embedding"), (3, "labeling, stored vectors")):
        embedded_s = statistics.median(e for e, _ in results[mode])
        labeled_s = statistics.median(labeled for _, labeled in results[mode])
        print(
            f"  {f'{number}. + automatic {mode}':<44} {n / labeled_s:6.1f} images/s labeled "
            f"(ratio to 1: {embed_only / labeled_s:.2f}; embedded at {n / embedded_s:.1f} images/s)"
        )
    job_before, job_after = statistics.median(jobs[False]), statistics.median(jobs[True])
    print(f"label job (FULL, concurrency {LABEL_CONCURRENCY}, over an embedded version):")
    print(f"  {'4. re-embedding every image':<44} {n / job_before:6.1f} images/s")
    print(
        f"  {'5. stored vectors':<44} {n / job_after:6.1f} images/s   ratio to 4: {job_before / job_after:.2f}"
    )


def main() -> None:
    """Parses flags and runs the measurements."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every measurement")
    args = parser.parse_args()
    load_env()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
