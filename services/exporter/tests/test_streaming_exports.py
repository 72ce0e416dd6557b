"""Multipart streaming with a resume after a failed part, and exports of vector searches (scores)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from viewfinder.v1 import common_pb2, embedding_pb2_grpc, export_pb2, search_pb2, search_pb2_grpc
from viewfinder_common.errors import FailedPrecondition, Unavailable
from viewfinder_common.grpc_server import GrpcServer
from viewfinder_common.vectorstore import IndexSchema, VectorField, VectorRow
from viewfinder_common.vectorstore.pgvector import PgVectorStore
from viewfinder_exporter.adapters.s3_objects import S3ObjectStore
from viewfinder_exporter.adapters.search_source import SearchClient, SearchSource
from viewfinder_exporter.config import ExporterSettings
from viewfinder_exporter.domain.sinks import MIN_PART_SIZE
from viewfinder_exporter.testing import FileRow, insert_dataset, running_exporter, running_search

pytestmark = pytest.mark.stack

# ~1 KiB per manifest line (the key appears in key and uri): about 2.3 parts of 5 MiB.
FILES = 12_000
KEY_PADDING = "p" * 380


class FailingPartOnce(S3ObjectStore):
    """The S3 adapter, except that one part upload fails once (a store outage mid-export)."""

    def __init__(self, client: Any, fail_part: int) -> None:
        super().__init__(client)
        self.fail_part: int | None = fail_part
        self.sha256_reads = 0

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        if number == self.fail_part:
            self.fail_part = None
            raise Unavailable(f"cannot upload part {number} of s3://{bucket}/{key}: SlowDown")
        return await super().upload_part(bucket, key, upload_id, number, data)

    async def sha256(self, bucket: str, key: str) -> str:
        self.sha256_reads += 1
        return await super().sha256(bucket, key)


async def test_large_export_streams_parts_fails_on_a_part_and_resumes(
    pool: asyncpg.Pool, s3: Any, bucket: str, search_address: str, objects_in: Any, wait_on: Any
) -> None:
    async with pool.acquire() as conn:
        source = await insert_dataset(
            conn,
            bucket=bucket,
            files=[
                FileRow(
                    key=f"big/{KEY_PADDING}/{i:06d}.png", tags=[("ai", "colour", "grey")], modified_minute=i
                )
                for i in range(FILES)
            ],
        )
    settings = ExporterSettings(
        allowed_buckets=[bucket], manifest_part_size_bytes=MIN_PART_SIZE, job_poll_interval_s=0.5
    )
    objects = FailingPartOnce(s3, fail_part=2)
    async with running_exporter(
        settings, pool=pool, objects=objects, search_address=search_address
    ) as running:
        stub = running.stub
        request = export_pb2.StartExportRequest(
            search=search_pb2.SearchRequest(dataset_version_id=source.version_id),
            manifest=export_pb2.ManifestTarget(bucket=bucket, prefix="big-export"),
        )
        started = (await stub.StartExport(request, timeout=30)).job
        failed = await wait_on(stub, started.job.id)
        assert failed.job.state == common_pb2.JOB_STATE_FAILED
        assert "cannot upload part 2" in failed.job.error
        # What is durable is reported: the first part's records, nothing published.
        assert 0 < failed.counts.records_written < FILES
        assert failed.counts.bytes_written >= MIN_PART_SIZE
        assert not [k for k in await objects_in.keys() if k.startswith("big-export/")]
        assert await objects_in.unfinished_uploads() == 1  # kept for the resume

        await stub.ResumeExport(export_pb2.ResumeExportRequest(job_id=started.job.id))
        done = await wait_on(stub, started.job.id)
        assert done.job.state == common_pb2.JOB_STATE_SUCCEEDED, done.job.error
        assert done.job.resume_count == 1

    manifest = await objects_in.read("big-export/manifest.jsonl")
    ids = [json.loads(line)["file_id"] for line in manifest.splitlines()]
    assert len(ids) == FILES
    assert set(ids) == set(source.file_ids)
    assert len(manifest) > 2 * MIN_PART_SIZE  # it really took several parts
    summary = json.loads(await objects_in.read("big-export/_SUCCESS"))
    assert summary["records"] == FILES
    assert summary["sha256"] == hashlib.sha256(manifest).hexdigest() == done.manifest_sha256
    assert done.counts.bytes_written == len(manifest) == summary["bytes"]
    assert objects.sha256_reads == 1  # the resumed run checksummed the upload by reading it back
    assert await objects_in.unfinished_uploads() == 0
    assert sorted(k for k in await objects_in.keys() if k.startswith("big-export/")) == [
        "big-export/_SUCCESS",
        "big-export/manifest.jsonl",
    ]


@pytest.fixture
async def vector_search(
    pool: asyncpg.Pool, bucket: str, unique_name: str
) -> AsyncIterator[tuple[str, Any, str]]:
    """The search service's own fixture catalogue with vectors, and a SearchService answering vector queries."""
    from viewfinder_search.testing import (  # noqa: PLC0415
        DIM,
        FIELD,
        FILES,
        QUERY_VECTORS,
        VectorTableEmbedService,
        insert_catalogue,
    )

    async with pool.acquire() as conn:
        catalogue = await insert_catalogue(conn, FILES, bucket)
    store = PgVectorStore(pool)
    index = f"idx_{unique_name}"
    await store.ensure_index(IndexSchema(index, [VectorField(FIELD, DIM)]))
    await store.upsert(
        index,
        [
            VectorRow(
                catalogue.file_ids[name],
                catalogue.version_ids[spec.version],
                f"etag-{name}",
                {FIELD: spec.vector},
            )
            for name, spec in FILES.items()
        ],
    )
    embed = VectorTableEmbedService(index, dict(QUERY_VECTORS))
    embed_server = GrpcServer(
        host="127.0.0.1",
        port=0,
        service_names=["viewfinder.v1.EmbedService"],
        registrations=[lambda s: embedding_pb2_grpc.add_EmbedServiceServicer_to_server(embed, s)],
        shutdown_grace_s=0.1,
    )
    embed_port = await embed_server.start()
    try:
        async with running_search(
            pool, embed_target=f"127.0.0.1:{embed_port}", vector_store=store
        ) as address:
            yield address, catalogue, catalogue.version_id
    finally:
        await embed_server.stop()


async def test_vector_search_export_carries_scores_in_rank_order(
    pool: asyncpg.Pool,
    s3: Any,
    bucket: str,
    vector_search: tuple[str, Any, str],
    objects_in: Any,
    wait_on: Any,
) -> None:
    address, catalogue, version_id = vector_search
    settings = ExporterSettings(allowed_buckets=[bucket], search_page_size=2)
    async with running_exporter(
        settings, pool=pool, objects=S3ObjectStore(s3), search_address=address
    ) as running:
        request = export_pb2.StartExportRequest(
            search=search_pb2.SearchRequest(
                dataset_version_id=version_id,
                text="a fallen water horse",
                top_k=3,
                metadata=search_pb2.MetadataFilter(formats=["JPEG"]),
            ),
            manifest=export_pb2.ManifestTarget(bucket=bucket, prefix="nearest"),
        )
        started = (await running.stub.StartExport(request, timeout=30)).job
        assert started.job.progress.total_items == 3
        job = await wait_on(running.stub, started.job.id)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error

        # A vector query for text with no vector is refused by search when the export starts.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.StartExport(
                export_pb2.StartExportRequest(
                    search=search_pb2.SearchRequest(dataset_version_id=version_id, text="unknown words"),
                    manifest=export_pb2.ManifestTarget(bucket=bucket, prefix="never"),
                ),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    records = [json.loads(line) for line in (await objects_in.read("nearest/manifest.jsonl")).splitlines()]
    assert catalogue.names([r["file_id"] for r in records]) == ["honda", "toyota", "old"]
    scores = [r["score"] for r in records]
    assert all(score is not None for score in scores)
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)


async def test_a_page_token_search_no_longer_accepts_is_a_clear_failure(
    pool: asyncpg.Pool, bucket: str, search_address: str
) -> None:
    async with pool.acquire() as conn:
        source = await insert_dataset(conn, bucket=bucket, files=[FileRow(key="a.png")])
    async with grpc.aio.insecure_channel(search_address) as channel:
        client = SearchClient(search_pb2_grpc.SearchServiceStub(channel), deadline_s=10)
        pages = SearchSource(
            client,
            search_pb2.SearchRequest(dataset_version_id=source.version_id),
            storage_connection="default",
        )
        first = [page async for page in pages.pages("")]
        assert [len(page.records) for page in first] == [1]
        with pytest.raises(FailedPrecondition, match="VIEWFINDER_SEARCH_PAGE_TOKEN_KEY"):
            async for _ in pages.pages("eyJ2IjoxfQ.c2lnbmVkLWJ5LWFub3RoZXIta2V5"):
                pass
