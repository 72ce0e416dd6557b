"""Fixtures of the exporter's service tests: a fresh catalogue database, a bucket on the
S3 API server, the real SearchService over that catalogue and a running ExportService.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import asyncpg
import pytest

from viewfinder.v1 import common_pb2, export_pb2, export_pb2_grpc
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import S3Settings
from viewfinder_exporter.adapters.s3_objects import S3ObjectStore
from viewfinder_exporter.config import ExporterSettings
from viewfinder_exporter.testing import RunningExporter, running_exporter, running_search

TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}


@pytest.fixture
async def pool(catalogue_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=6)
    assert created is not None
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
async def s3() -> AsyncIterator[Any]:
    async with s3_client(S3Settings()) as client:
        yield client


async def empty_bucket(s3: Any, bucket: str) -> None:
    """Deletes every object and unfinished upload of a bucket, then the bucket."""
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            await s3.delete_object(Bucket=bucket, Key=item["Key"])
    uploads = await s3.list_multipart_uploads(Bucket=bucket)
    for upload in uploads.get("Uploads", []):
        await s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    await s3.delete_bucket(Bucket=bucket)


@pytest.fixture
async def bucket(s3: Any, unique_name: str) -> AsyncIterator[str]:
    """An empty bucket that exports may write to (images of the fixture datasets go here too)."""
    name = f"vf-exp-{unique_name}"
    await s3.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        await empty_bucket(s3, name)


class BucketReader:
    """Reads what exports wrote to the test bucket."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    async def keys(self) -> list[str]:
        """Every key in the bucket."""
        response = await self.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in response.get("Contents", []))

    async def read(self, key: str) -> bytes:
        """An object's bytes."""
        response = await self.s3.get_object(Bucket=self.bucket, Key=key)
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data

    async def unfinished_uploads(self) -> int:
        """Multipart uploads started and neither completed nor aborted."""
        response = await self.s3.list_multipart_uploads(Bucket=self.bucket)
        return len(response.get("Uploads", []))


@pytest.fixture
def objects_in(s3: Any, bucket: str) -> BucketReader:
    return BucketReader(s3, bucket)


@pytest.fixture
def exporter_settings(bucket: str) -> ExporterSettings:
    return ExporterSettings(allowed_buckets=[bucket], job_poll_interval_s=0.5, search_page_size=7)


@pytest.fixture
async def search_address(pool: asyncpg.Pool) -> AsyncIterator[str]:
    async with running_search(pool) as address:
        yield address


@pytest.fixture
async def exporter(
    pool: asyncpg.Pool, s3: Any, search_address: str, exporter_settings: ExporterSettings
) -> AsyncIterator[RunningExporter]:
    async with running_exporter(
        exporter_settings, pool=pool, objects=S3ObjectStore(s3), search_address=search_address
    ) as running:
        yield running


@pytest.fixture
def stub(exporter: RunningExporter) -> export_pb2_grpc.ExportServiceAsyncStub:
    return exporter.stub


async def wait_for_job(
    stub: export_pb2_grpc.ExportServiceAsyncStub,
    job_id: str,
    states: Collection[int] = frozenset(TERMINAL),
    timeout_s: float = 120,
) -> export_pb2.ExportJob:
    """Polls GetExport until the job is in one of ``states``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        job = (await stub.GetExport(export_pb2.GetExportRequest(job_id=job_id), timeout=10)).job
        if job.job.state in states:
            return job
        if loop.time() > deadline:
            raise AssertionError(f"job {job_id} still {common_pb2.JobState.Name(job.job.state)}")
        await asyncio.sleep(0.1)


JobWaiter = Callable[..., Awaitable[export_pb2.ExportJob]]


@pytest.fixture
def wait(stub: export_pb2_grpc.ExportServiceAsyncStub) -> JobWaiter:
    """``await wait(job_id, states=...)``: the job once it is in one of ``states`` (terminal by default)."""

    async def waiter(job_id: str, states: Collection[int] = frozenset(TERMINAL)) -> export_pb2.ExportJob:
        return await wait_for_job(stub, job_id, states)

    return waiter


@pytest.fixture
def wait_on() -> Callable[..., Awaitable[export_pb2.ExportJob]]:
    """``await wait_on(stub, job_id)``: like ``wait`` for an ExportService a test started itself."""
    return wait_for_job
