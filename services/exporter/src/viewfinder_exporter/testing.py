"""Test helpers of the exporter: fixture catalogue rows, a running SearchService (the real
servicer of ``viewfinder_search``) and a running ExportService with its job runner.

Used by ``services/exporter/tests`` and ``bench/export``; never imported by the service.
The search servicer is imported lazily, so that the service itself does not
depend on the search package.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from PIL import Image

from viewfinder.v1 import export_pb2_grpc, search_pb2_grpc
from viewfinder_common.grpc_server import GrpcServer
from viewfinder_exporter.config import ExporterSettings
from viewfinder_exporter.domain.sinks import ObjectStore
from viewfinder_exporter.main import SERVICE_NAME, Exporter, assemble, register

BASE_TIME = datetime(2025, 5, 1, tzinfo=UTC)


@dataclass(frozen=True)
class FileRow:
    """One catalogue file with its tags: (source, name, value)."""

    key: str
    size: int = 1000
    etag: str = ""
    width: int = 64
    height: int = 48
    format: str = "PNG"
    status: str = "active"
    tags: Sequence[tuple[str, str, str]] = ()
    # Minutes after BASE_TIME; None leaves last_modified unset.
    modified_minute: int | None = 0


@dataclass(frozen=True)
class SourceDataset:
    """Ids of rows written by ``insert_dataset``."""

    dataset_id: str
    version_id: str
    bucket: str
    # File ids in the order of the rows given.
    file_ids: list[str] = field(default_factory=list)


async def insert_dataset(
    conn: Any, *, bucket: str, files: Sequence[FileRow], name: str = "", storage_connection: str = "default"
) -> SourceDataset:
    """Writes a dataset, its v1 and the files and tags with COPY (fast enough for 200k rows)."""
    dataset_id = await conn.fetchval(
        "INSERT INTO datasets (name, bucket, storage_connection) VALUES ($1, $2, $3) RETURNING id",
        name or f"ds-{uuid.uuid4().hex[:10]}",
        bucket,
        storage_connection,
    )
    version_id = await conn.fetchval(
        "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset_id
    )
    file_ids = [uuid.uuid4() for _ in files]
    await conn.copy_records_to_table(
        "files",
        records=[
            (
                file_id,
                dataset_id,
                version_id,
                bucket,
                row.key,
                f"s3://{bucket}/{row.key}",
                row.size,
                row.etag or f"etag-{index}",
                BASE_TIME + timedelta(minutes=row.modified_minute)
                if row.modified_minute is not None
                else None,
                row.format,
                row.width,
                row.height,
                1,
                "RGB",
                row.status,
            )
            for index, (file_id, row) in enumerate(zip(file_ids, files, strict=True))
        ],
        columns=[
            "id",
            "dataset_id",
            "version_id",
            "bucket",
            "key",
            "uri",
            "size",
            "etag",
            "last_modified",
            "format",
            "width",
            "height",
            "frames",
            "mode",
            "status",
        ],
    )
    await conn.copy_records_to_table(
        "file_tags",
        records=[
            (
                file_id,
                tag,
                source,
                value,
                0.9 if source == "ai" else None,
                "test-vlm" if source == "ai" else None,
            )
            for file_id, row in zip(file_ids, files, strict=True)
            for source, tag, value in row.tags
        ],
        columns=["file_id", "tag", "source", "value", "confidence", "model"],
    )
    return SourceDataset(str(dataset_id), str(version_id), bucket, [str(file_id) for file_id in file_ids])


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    """A small PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.asynccontextmanager
async def running_search(
    pool: asyncpg.Pool,
    *,
    embed_target: str = "127.0.0.1:1",
    vector_store: Any = None,
) -> AsyncIterator[str]:
    """The real SearchService over ``pool`` on a loopback port; yields its address.

    ``embed_target`` is only dialled by vector queries.
    """
    from viewfinder_common.vectorstore.pgvector import PgVectorStore  # noqa: PLC0415
    from viewfinder_search.adapters.catalogue import PostgresCatalogue  # noqa: PLC0415
    from viewfinder_search.adapters.embedder import EmbedServiceClient  # noqa: PLC0415
    from viewfinder_search.domain.engine import Searcher  # noqa: PLC0415
    from viewfinder_search.domain.page_token import PageTokenCodec  # noqa: PLC0415
    from viewfinder_search.domain.planner import PlannerSettings  # noqa: PLC0415
    from viewfinder_search.handlers.grpc_search import SearchServicer  # noqa: PLC0415

    async with grpc.aio.insecure_channel(embed_target) as embed_channel:
        searcher = Searcher(
            catalogue=PostgresCatalogue(pool),
            embedder=EmbedServiceClient(embed_channel, deadline_s=10),
            vector_store=vector_store or PgVectorStore(pool),
            signer=None,
            page_tokens=PageTokenCodec(b"exporter-tests-page-token-key"),
            planner=PlannerSettings(),
        )
        servicer = SearchServicer(searcher)
        server = GrpcServer(
            host="127.0.0.1",
            port=0,
            service_names=["viewfinder.v1.SearchService"],
            registrations=[lambda s: search_pb2_grpc.add_SearchServiceServicer_to_server(servicer, s)],
            shutdown_grace_s=0.1,
        )
        port = await server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await server.stop()


@dataclass
class RunningExporter:
    """An ExportService on a loopback port, with its job runner (if started)."""

    address: str
    stub: export_pb2_grpc.ExportServiceAsyncStub
    exporter: Exporter
    runner_task: asyncio.Task[None] | None

    def start_runner(self) -> None:
        """Starts the job runner (tests that first want jobs to stay PENDING start it late)."""
        if self.runner_task is None:
            self.runner_task = asyncio.create_task(self.exporter.runner.run_forever())


@contextlib.asynccontextmanager
async def running_exporter(
    settings: ExporterSettings,
    *,
    pool: asyncpg.Pool,
    objects: ObjectStore,
    search_address: str,
    start_runner: bool = True,
) -> AsyncIterator[RunningExporter]:
    """The ExportService over open connections; the runner is stopped (jobs handed back) on exit."""
    async with grpc.aio.insecure_channel(search_address) as search_channel:
        exporter = assemble(settings, pool=pool, objects=objects, search_channel=search_channel)
        server = GrpcServer(
            host="127.0.0.1",
            port=0,
            service_names=[SERVICE_NAME],
            registrations=[register(exporter.servicer)],
            shutdown_grace_s=0.1,
        )
        port = await server.start()
        running: RunningExporter | None = None
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                running = RunningExporter(
                    f"127.0.0.1:{port}", export_pb2_grpc.ExportServiceStub(channel), exporter, None
                )
                if start_runner:
                    running.start_runner()
                yield running
        finally:
            if running is not None and running.runner_task is not None:
                running.runner_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running.runner_task
            await server.stop()
