"""Tagger throughput against the fake VLM: achieved images/s vs. the ideal C/L.

With a model that answers in L seconds and C calls in flight, no labeler can
beat C/L images per second. Measured in the same run, against one fake VLM
server in its own process (``viewfinder_common.testing.fake_vlm``):

1. raw client (baseline): bare aiohttp POSTs, C in flight, same payloads;
2. model adapter: ``OpenAIChatModel.label`` (prompt, JSON parsing, retry
   wrapper, adaptive limiter), C in flight;
3. label job: the whole service (``main.serve``) running a FULL label job over
   a dataset version: S3 reads from the local S3 API server, downscaling,
   model calls, PostgreSQL writes, FileTagged to the broker. Timed by the
   job's own start/end timestamps.

Each line prints images/s, the ratio to the ideal C/L (goal: >= 0.95 for the
label job) and the ratio to the raw client. Needs the local stack (make up).

    python bench/tagger/run.py                       # L=0.5 s, C=16, 320 images (~35 s)
    python bench/tagger/run.py --latency 0.2 --concurrency 64 --images 2000

Real VLM latencies are seconds; the fixed costs of a job (first S3 reads,
first page query) and the ~5 ms of loopback HTTP per call weigh more the
smaller L is. At high C on a small machine the label job becomes CPU-bound
(the S3 client costs a few ms of CPU per object).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import logging
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
from PIL import Image
from pydantic import SecretStr

from viewfinder.v1 import common_pb2, labeling_pb2, labeling_pb2_grpc
from viewfinder_common.db import migrate
from viewfinder_common.s3 import s3_session
from viewfinder_common.settings import DatabaseSettings, KafkaSettings, S3Settings
from viewfinder_common.testing.fake_vlm import DEFAULT_PALETTE
from viewfinder_tagger.adapters.openai_vlm import OpenAIChatModel
from viewfinder_tagger.config import OpenAIConnection, TaggerSettings
from viewfinder_tagger.domain.definitions import DefinitionContent, TagDefinition, TagSpec
from viewfinder_tagger.domain.models import ImagePayload, LabelTarget
from viewfinder_tagger.main import serve

API_KEY = "bench-key"
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.local.stack import load_env  # noqa: E402 - needs the repo root on sys.path


def _images(count: int) -> list[bytes]:
    colours = list(DEFAULT_PALETTE.values())
    images = []
    for n in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (64 + n % 32, 48), colours[n % len(colours)]).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def _definition() -> TagDefinition:
    content = DefinitionContent(
        description="",
        guide_prompt="Name the dominant colour.",
        tags=(
            *(TagSpec(name, f"mostly {name}") for name in DEFAULT_PALETTE),
            TagSpec("brightness", "how light", allowed_values=("light", "dark")),
        ),
    )
    return TagDefinition(str(uuid.uuid4()), "bench", 1, content, datetime.now(UTC))


def _start_fake_vlm(latency_s: float) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "viewfinder_common.testing.fake_vlm",
            "--latency",
            str(latency_s),
            "--api-key",
            API_KEY,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("FAKE_VLM_URL="):
        process.kill()
        raise RuntimeError(f"fake VLM did not start: {line!r}")
    return process, line.removeprefix("FAKE_VLM_URL=")


async def _bounded(concurrency: int, jobs: list[Any]) -> float:
    """Runs coroutine factories with ``concurrency`` in flight; returns the elapsed seconds."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Any) -> None:
        async with gate:
            await job()

    started = time.perf_counter()
    await asyncio.gather(*(one(job) for job in jobs))
    return time.perf_counter() - started


async def bench_raw_client(base_url: str, images: list[bytes], concurrency: int) -> float:
    """Baseline: one POST per image with a bare aiohttp session."""
    url = base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:

        def job(data: bytes) -> Any:
            async def post() -> None:
                image_url = "data:image/png;base64," + base64.b64encode(data).decode()
                body = {
                    "model": "qwen-vl-max",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": image_url}},
                                {"type": "text", "text": "tags?"},
                            ],
                        }
                    ],
                }
                async with session.post(url, json=body, headers=headers) as response:
                    response.raise_for_status()
                    await response.json()

            return post

        return await _bounded(concurrency, [job(d) for d in images])


async def bench_adapter(base_url: str, images: list[bytes], concurrency: int) -> float:
    """The OpenAIChatModel adapter alone."""
    model = OpenAIChatModel(
        "bench",
        OpenAIConnection(
            base_url=base_url, model="qwen-vl-max", api_key=SecretStr(API_KEY), max_in_flight=256
        ),
    )
    definition = _definition()
    try:

        def job(n: int, data: bytes) -> Any:
            async def label() -> None:
                answer = await model.label(
                    definition, ImagePayload("image/png", data=data), LabelTarget("d", str(n), f"s3://b/{n}")
                )
                assert answer.proposed, "the fake always answers a colour"

            return label

        return await _bounded(concurrency, [job(n, d) for n, d in enumerate(images)])
    finally:
        await model.close()


async def bench_label_job(base_url: str, images: list[bytes], concurrency: int) -> float:
    """A FULL label job on the whole service; seconds between the job's start and end timestamps."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    db_settings = DatabaseSettings()
    base, _, _ = db_settings.url.rpartition("/")
    admin = await asyncpg.connect(db_settings.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db_url = f"{base}/{name}"
    s3_settings = S3Settings()
    session = s3_session(s3_settings)
    bucket = name.replace("_", "-")
    try:
        conn = await asyncpg.connect(db_url)
        try:
            await migrate(conn)
            async with session.client("s3", endpoint_url=s3_settings.endpoint_url) as s3:
                await s3.create_bucket(Bucket=bucket)
                version_id = await _seed(conn, s3, bucket, images)
        finally:
            await conn.close()
        port = _free_port()
        settings = TaggerSettings.model_validate(
            {
                "grpc_port": port,
                "db": DatabaseSettings(url=db_url, pool_max_size=20),
                "kafka": KafkaSettings(
                    topic_file_discovered=f"{name}.discovered", topic_file_tagged=f"{name}.tagged"
                ),
                "auto_labeling": False,
                "log_level": "WARNING",
                "connections": {
                    "fake": OpenAIConnection(
                        base_url=base_url, model="qwen-vl-max", api_key=SecretStr(API_KEY), max_in_flight=256
                    )
                },
                "default_connection": "fake",
            }
        )
        stop = asyncio.Event()
        service = asyncio.create_task(serve(stop, settings))
        try:
            return await _run_job(port, version_id, concurrency)
        finally:
            stop.set()
            await service
    finally:
        async with session.client("s3", endpoint_url=s3_settings.endpoint_url) as s3:
            async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    await s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            await s3.delete_bucket(Bucket=bucket)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _seed(conn: asyncpg.Connection, s3: Any, bucket: str, images: list[bytes]) -> str:
    dataset_id = await conn.fetchval(
        "INSERT INTO datasets (name, bucket) VALUES ($1, $2) RETURNING id", bucket, bucket
    )
    version_id = await conn.fetchval(
        "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset_id
    )
    gate = asyncio.Semaphore(32)

    async def put(n: int, data: bytes) -> tuple[Any, ...]:
        key = f"img/{n:06d}.png"
        async with gate:
            reply = await s3.put_object(Bucket=bucket, Key=key, Body=data)
        return (
            dataset_id,
            version_id,
            bucket,
            key,
            f"s3://{bucket}/{key}",
            len(data),
            reply["ETag"].strip('"'),
        )

    rows = await asyncio.gather(*(put(n, d) for n, d in enumerate(images)))
    await conn.copy_records_to_table(
        "files", records=rows, columns=["dataset_id", "version_id", "bucket", "key", "uri", "size", "etag"]
    )
    return str(version_id)


async def _run_job(port: int, version_id: str, concurrency: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 60)
        stub = labeling_pb2_grpc.LabelingServiceStub(channel)
        definition = _definition()
        created = await stub.CreateTagDefinition(
            labeling_pb2.CreateTagDefinitionRequest(
                name="bench",
                guide_prompt=definition.content.guide_prompt,
                tags=[
                    labeling_pb2.TagSpec(
                        name=t.name, description=t.description, allowed_values=list(t.allowed_values)
                    )
                    for t in definition.content.tags
                ],
            ),
            timeout=10,
        )
        started = await stub.StartLabelJob(
            labeling_pb2.StartLabelJobRequest(
                dataset_version_id=version_id,
                tag_definition_id=created.tag_definition.id,
                mode=common_pb2.JOB_MODE_FULL,
                max_concurrency=concurrency,
            ),
            timeout=10,
        )
        terminal = {
            common_pb2.JOB_STATE_SUCCEEDED,
            common_pb2.JOB_STATE_FAILED,
            common_pb2.JOB_STATE_CANCELLED,
        }
        while True:
            job = (
                await stub.GetLabelJob(labeling_pb2.GetLabelJobRequest(job_id=started.job.job.id), timeout=10)
            ).job
            if job.job.state in terminal:
                break
            await asyncio.sleep(0.2)
        if job.job.state != common_pb2.JOB_STATE_SUCCEEDED or job.counts.files_failed:
            raise RuntimeError(f"the label job did not label every image: {job}")
        return float((job.job.end_time.ToDatetime() - job.job.start_time.ToDatetime()).total_seconds())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def main_async(args: argparse.Namespace) -> None:
    images = _images(args.images)
    ideal = args.concurrency / args.latency
    process, base_url = _start_fake_vlm(args.latency)
    try:
        raw = await bench_raw_client(base_url, images, args.concurrency)
        adapter = await bench_adapter(base_url, images, args.concurrency)
        job = await bench_label_job(base_url, images, args.concurrency)
    finally:
        process.terminate()
        process.wait(timeout=10)
    raw_rate = args.images / raw
    print(
        f"tagger throughput: fake VLM latency L={args.latency:.3f} s, concurrency C={args.concurrency}, "
        f"{args.images} images; ideal C/L = {ideal:.1f} images/s"
    )
    for label, seconds in [
        ("raw aiohttp client (baseline)", raw),
        ("OpenAIChatModel adapter", adapter),
        ("label job (S3+DB+Kafka+model)", job),
    ]:
        rate = args.images / seconds
        print(
            f"  {label:32s} {rate:8.1f} images/s   ratio to ideal {rate / ideal:5.3f}   "
            f"ratio to raw client {rate / raw_rate:5.3f}"
        )


def main() -> None:
    """Parses flags and runs the three measurements."""
    parser = argparse.ArgumentParser(description="Tagger throughput against the fake VLM.")
    parser.add_argument("--latency", type=float, default=0.5, help="fake VLM latency L in seconds")
    parser.add_argument("--concurrency", type=int, default=16, help="max concurrency C")
    parser.add_argument("--images", type=int, default=320, help="images per measurement")
    args = parser.parse_args()
    load_env()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
