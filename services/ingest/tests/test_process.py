"""``viewfinder-ingest`` as a process: gRPC, the storage-events subscriber and the webhook, then SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from viewfinder.v1 import dataset_pb2, dataset_pb2_grpc, events_pb2
from viewfinder_common.events import decode_event
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import KafkaSettings, S3Settings

pytestmark = pytest.mark.stack

ENTRY_POINT = Path(sys.executable).parent / "viewfinder-ingest"


async def read_ports(stream: asyncio.StreamReader, timeout_s: float = 60.0) -> tuple[int, int]:
    """The gRPC and webhook ports from the process's JSON log lines."""
    grpc_port = webhook_port = 0
    async with asyncio.timeout(timeout_s):
        while not (grpc_port and webhook_port):
            line = await stream.readline()
            if not line:
                raise AssertionError("viewfinder-ingest exited before it started")
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "service_started":
                    grpc_port = int(entry["grpc_port"])
                if entry.get("event") == "webhook_started":
                    webhook_port = int(entry["port"])
    return grpc_port, webhook_port


async def test_the_service_process_serves_grpc_notifications_and_webhook(
    catalogue_db_url: str, unique_name: str, images: Any
) -> None:
    kafka = KafkaSettings()
    topics = {"discovered": f"{unique_name}.fd", "storage": f"{unique_name}.se"}
    env = {
        **os.environ,
        "VIEWFINDER_DB_URL": catalogue_db_url,
        "VIEWFINDER_KAFKA_TOPIC_FILE_DISCOVERED": topics["discovered"],
        "VIEWFINDER_KAFKA_TOPIC_STORAGE_EVENTS": topics["storage"],
        "VIEWFINDER_INGEST_GRPC_PORT": "0",
        "VIEWFINDER_INGEST_WEBHOOK_PORT": "0",
        "VIEWFINDER_INGEST_STORAGE_EVENTS_GROUP": f"{unique_name}-ingest",
        "VIEWFINDER_INGEST_SHUTDOWN_GRACE_S": "0.5",
    }
    bucket = unique_name
    async with s3_client(S3Settings()) as s3:
        await s3.create_bucket(Bucket=bucket)
        put = await s3.put_object(Bucket=bucket, Key="p/a.gif", Body=images.encode("GIF"))
    etag = put["ETag"].strip('"')

    process = await asyncio.create_subprocess_exec(
        str(ENTRY_POINT), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    consumer = AIOKafkaConsumer(
        topics["discovered"], bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    try:
        grpc_port, webhook_port = await read_ports(process.stderr)
        drain = asyncio.create_task(process.stderr.read())  # keeps the pipe from filling up
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="viewfinder.v1.DatasetService"), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            created = await stub.CreateDataset(
                dataset_pb2.CreateDatasetRequest(name=unique_name, bucket=bucket, prefix="p/"), timeout=10
            )

        record = {
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": "p/a.gif", "eTag": etag, "sequencer": "01"}},
        }
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(topics["storage"], json.dumps({"Records": [record]}).encode())
        finally:
            await producer.stop()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{webhook_port}/healthz") as response,
        ):
            assert response.status == 200

        await consumer.start()
        events: list[Any] = []
        async with asyncio.timeout(60):
            while not events:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    events.extend(decode_event(events_pb2.FileDiscovered, r.value or b"") for r in batch)
        assert (events[0].key, events[0].dataset_id, events[0].format) == (
            "p/a.gif",
            created.dataset.id,
            "GIF",
        )

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        await drain
    finally:
        await consumer.stop()
        if process.returncode is None:
            process.kill()
            await process.wait()
