"""Export throughput and memory: a whole dataset version exported as a JSONL manifest and as a
logical dataset version, against baselines measured in the same run.

Data: ``--rows`` catalogue files (default 50,000; ``--rows 200000`` for the big run), each
with two tags, written by SQL (``generate_series``) so that loading them costs this
process no memory. The real SearchService runs in a child process over the same
PostgreSQL (as in a deployment, where search is its own service) and answers the
exporter's paged searches; the exporter runs in this process; manifests go to the
S3 API server of the local stack.

Printed per phase: rows/s, MB/s, and the peak RSS growth of this (the exporter's)
process while the phase ran, sampled every 20 ms. Baselines:

* search only — the same paged SearchService calls, results discarded (what the
  export reads);
* raw multipart upload — the manifest's exact bytes uploaded in parts of the same
  size with no encoding (what the export writes).

The ratio ``export / (search + upload)`` shows what the exporter adds on top of
reading and writing; memory stays flat as ``--rows`` grows (bounded by one part
plus a couple of pages).

    .venv/bin/python bench/export/run.py               # 50k rows, about a minute
    .venv/bin/python bench/export/run.py --rows 200000 # the big run

Needs the local stack (``make up``; ``make bench`` loads its addresses from
``.local/stack.env``, source that file when running the script by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import grpc
import psutil  # type: ignore[import-untyped]

from viewfinder.v1 import common_pb2, export_pb2, export_pb2_grpc, search_pb2, search_pb2_grpc
from viewfinder_common.db import migrate
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import DatabaseSettings, S3Settings
from viewfinder_exporter.adapters.s3_objects import S3ObjectStore
from viewfinder_exporter.config import ExporterSettings
from viewfinder_exporter.testing import running_exporter, running_search

PART_SIZE = 8 * 1024 * 1024
PAGE_SIZE = 1000
T = TypeVar("T")


@dataclass
class Phase:
    """One measured phase."""

    name: str
    rows: int
    seconds: float
    bytes: int
    peak_rss_growth: int

    def line(self, reference: float | None = None) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        mb_s = self.bytes / self.seconds / 1e6 if self.seconds and self.bytes else 0.0
        ratio = f"{self.seconds / reference:6.2f}x" if reference else "      "
        return (
            f"{self.name:<34} {self.rows:>9,} rows {self.seconds:8.2f} s {rate:>10,.0f} rows/s "
            f"{mb_s:7.1f} MB/s  peak RSS +{self.peak_rss_growth / 2**20:6.1f} MiB  {ratio}"
        )


class RssSampler:
    """Samples this process's RSS from a thread (so it samples while the event loop is busy)."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.start_rss = 0
        self.peak_rss = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        gc.collect()
        self.start_rss = self.peak_rss = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
            self._stop.wait(self._interval_s)

    @property
    def growth(self) -> int:
        return self.peak_rss - self.start_rss


async def measured(name: str, rows: int, work: Callable[[], Awaitable[int]]) -> Phase:
    """Runs ``work`` (returning bytes moved) under the RSS sampler and a clock."""
    with RssSampler() as sampler:
        started = time.perf_counter()
        moved = await work()
        seconds = time.perf_counter() - started
    return Phase(name, rows, seconds, moved, sampler.growth)


async def populate(pool: asyncpg.Pool, rows: int, bucket: str) -> str:
    """A dataset version of ``rows`` files with two tags each, generated inside PostgreSQL."""
    async with pool.acquire() as conn:
        dataset_id = await conn.fetchval(
            "INSERT INTO datasets (name, bucket) VALUES ('bench-export', $1) RETURNING id", bucket
        )
        version_id = await conn.fetchval(
            "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset_id
        )
        await conn.execute(
            """
            INSERT INTO files (dataset_id, version_id, bucket, key, uri, size, etag, last_modified,
                               format, width, height, frames, mode)
            SELECT $1, $2, $3, k, 's3://' || $3 || '/' || k, 100000 + n, md5(n::text),
                   timestamptz '2025-01-01' + n * interval '1 second', 'JPEG', 1920, 1080, 1, 'RGB'
            FROM generate_series(1, $4) AS n,
                 LATERAL (SELECT format('drive/2025-06/camera_%s/frame_%s.jpg', n % 8, lpad(n::text, 8, '0')) AS k) AS keys
            """,
            dataset_id,
            version_id,
            bucket,
            rows,
        )
        await conn.execute(
            """
            INSERT INTO file_tags (file_id, tag, source, value, confidence, model)
            SELECT id, 'weather', 'ai', (ARRAY['sunny', 'rainy', 'snowy'])[1 + abs(hashtext(key)) % 3], 0.87, 'qwen-vl-max'
            FROM files WHERE version_id = $1
            UNION ALL
            SELECT id, 'lane line', 'user', '', NULL, NULL FROM files WHERE version_id = $1
            """,
            version_id,
        )
        await conn.execute("ANALYZE files; ANALYZE file_tags")
    return str(version_id)


@contextlib.asynccontextmanager
async def search_process(database_url: str) -> AsyncIterator[str]:
    """The real SearchService in a child process; yields its address."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-search",
        database_url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    try:
        while not (line := (await child.stdout.readline()).decode()).startswith("SEARCH_ADDRESS="):
            if not line:
                raise RuntimeError("the search process ended before it listened")
        yield line.strip().split("=", 1)[1]
    finally:
        child.stdin.close()
        await child.wait()


async def serve_search(database_url: str) -> None:
    """Child process: serves SearchService until stdin closes."""
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=8)
    assert pool is not None
    async with running_search(pool) as address:
        print(f"SEARCH_ADDRESS={address}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await pool.close()


async def search_only(address: str, version_id: str) -> int:
    """Pages through the whole version like the exporter does; returns the bytes received."""
    received = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        token = ""
        while True:
            response = await stub.Search(
                search_pb2.SearchRequest(
                    dataset_version_id=version_id, page_size=PAGE_SIZE, page_token=token
                ),
                timeout=60,
            )
            received += response.ByteSize()
            token = response.next_page_token
            if not token:
                return received


async def run_job(
    stub: export_pb2_grpc.ExportServiceAsyncStub, request: export_pb2.StartExportRequest
) -> export_pb2.ExportJob:
    job = (await stub.StartExport(request, timeout=60)).job
    while True:
        job = (await stub.GetExport(export_pb2.GetExportRequest(job_id=job.job.id), timeout=30)).job
        if job.job.state in {
            common_pb2.JOB_STATE_SUCCEEDED,
            common_pb2.JOB_STATE_FAILED,
            common_pb2.JOB_STATE_CANCELLED,
        }:
            if job.job.state != common_pb2.JOB_STATE_SUCCEEDED:
                raise RuntimeError(f"export ended {common_pb2.JobState.Name(job.job.state)}: {job.job.error}")
            return job
        await asyncio.sleep(0.05)


async def raw_upload(s3: Any, bucket: str, key: str, data: bytes) -> int:
    """The baseline writer: the same bytes in parts of the same size, nothing else."""
    upload = await s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, start in enumerate(range(0, len(data), PART_SIZE), start=1):
        response = await s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[start : start + PART_SIZE],
        )
        parts.append({"PartNumber": number, "ETag": response["ETag"]})
    await s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return len(data)


async def empty_bucket(s3: Any, bucket: str) -> None:
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            await s3.delete_object(Bucket=bucket, Key=item["Key"])
    await s3.delete_bucket(Bucket=bucket)


async def main(rows: int) -> None:
    settings = DatabaseSettings()
    base, _, _ = settings.url.rpartition("/")
    database = f"bench_export_{uuid.uuid4().hex[:10]}"
    bucket = f"bench-export-{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(settings.url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        conn = await asyncpg.connect(f"{base}/{database}")
        await migrate(conn)
        await conn.close()
        pool = await asyncpg.create_pool(f"{base}/{database}", min_size=2, max_size=8)
        assert pool is not None
        async with s3_client(S3Settings()) as s3:
            await s3.create_bucket(Bucket=bucket)
            try:
                started = time.perf_counter()
                version_id = await populate(pool, rows, bucket)
                print(f"loaded {rows:,} files with 2 tags each in {time.perf_counter() - started:.1f} s")
                await report(pool, s3, bucket, version_id, rows, f"{base}/{database}")
            finally:
                await empty_bucket(s3, bucket)
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def report(
    pool: asyncpg.Pool, s3: Any, bucket: str, version_id: str, rows: int, database_url: str
) -> None:
    exporter_settings = ExporterSettings(
        allowed_buckets=[bucket],
        manifest_part_size_bytes=PART_SIZE,
        search_page_size=PAGE_SIZE,
        job_poll_interval_s=0.2,
    )
    async with search_process(database_url) as search_address:
        await search_only(search_address, version_id)  # warms PostgreSQL's caches for every phase
        search = await measured(
            "baseline: search pages only", rows, lambda: search_only(search_address, version_id)
        )
        async with running_exporter(
            exporter_settings, pool=pool, objects=S3ObjectStore(s3), search_address=search_address
        ) as exporter:
            manifest_job: list[export_pb2.ExportJob] = []

            async def export_manifest() -> int:
                job = await run_job(
                    exporter.stub,
                    export_pb2.StartExportRequest(
                        search=search_pb2.SearchRequest(dataset_version_id=version_id),
                        manifest=export_pb2.ManifestTarget(bucket=bucket, prefix="bench/jsonl"),
                    ),
                )
                manifest_job.append(job)
                return int(job.counts.bytes_written)

            manifest = await measured("export: JSONL manifest", rows, export_manifest)
            assert manifest_job[0].counts.records_written == rows

            async def export_logical() -> int:
                job = await run_job(
                    exporter.stub,
                    export_pb2.StartExportRequest(
                        search=search_pb2.SearchRequest(dataset_version_id=version_id),
                        logical_dataset=export_pb2.LogicalDatasetTarget(name="bench"),
                    ),
                )
                assert job.counts.records_written == rows
                return 0

            logical = await measured("export: logical dataset version", rows, export_logical)

    response = await s3.get_object(Bucket=bucket, Key="bench/jsonl/manifest.jsonl")
    async with response["Body"] as body:
        data = await body.read()
    assert len(data) == manifest.bytes
    upload = await measured(
        "baseline: raw multipart upload", rows, lambda: raw_upload(s3, bucket, "bench/raw.jsonl", data)
    )

    reference = search.seconds + upload.seconds
    print(
        f"\nmanifest: {manifest.bytes / 1e6:.1f} MB, {manifest.bytes / rows:.0f} bytes/row, parts of {PART_SIZE >> 20} MiB"
    )
    print(f"{'phase':<34} {'':>14} {'':>10} {'':>17} {'':>12}  {'':>24}  time vs search+upload")
    for phase in (search, upload, manifest, logical):
        print(phase.line(reference))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=50_000, help="files in the exported version (default 50,000)"
    )
    parser.add_argument("--serve-search", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_search:
        asyncio.run(serve_search(arguments.serve_search))
    else:
        asyncio.run(main(arguments.rows))
