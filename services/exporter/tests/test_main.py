"""The process wiring: ``serve`` runs the shared lifespan, answers ExportService and runs jobs."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from viewfinder.v1 import common_pb2, export_pb2, export_pb2_grpc, search_pb2
from viewfinder_exporter.main import serve
from viewfinder_exporter.testing import FileRow, insert_dataset

pytestmark = pytest.mark.stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_exports_with_settings_from_the_environment(
    catalogue_db_url: str,
    pool: asyncpg.Pool,
    search_address: str,
    bucket: str,
    objects_in: Any,
    wait_on: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pool.acquire() as conn:
        source = await insert_dataset(
            conn, bucket=bucket, files=[FileRow(key=f"k/{i}.png") for i in range(3)]
        )
    port = free_port()
    monkeypatch.setenv("VIEWFINDER_DB_URL", catalogue_db_url)
    monkeypatch.setenv("VIEWFINDER_EXPORTER_GRPC_PORT", str(port))
    monkeypatch.setenv("VIEWFINDER_EXPORTER_SEARCH_TARGET", search_address)
    monkeypatch.setenv("VIEWFINDER_EXPORTER_ALLOWED_BUCKETS", json.dumps([bucket]))
    monkeypatch.setenv("VIEWFINDER_EXPORTER_LOG_JSON", "false")
    stop = asyncio.Event()
    service = asyncio.create_task(serve(stop))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                try:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service="viewfinder.v1.ExportService"), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert not service.done(), service.exception()
                await asyncio.sleep(0.1)
            stub = export_pb2_grpc.ExportServiceStub(channel)
            started = await stub.StartExport(
                export_pb2.StartExportRequest(
                    search=search_pb2.SearchRequest(dataset_version_id=source.version_id),
                    manifest=export_pb2.ManifestTarget(bucket=bucket, prefix="from-main"),
                ),
                timeout=30,
            )
            job = await wait_on(stub, started.job.job.id)
            assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=60)
    manifest = await objects_in.read("from-main/manifest.jsonl")
    assert len(manifest.splitlines()) == 3
