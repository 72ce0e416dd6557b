"""ExportService manifest exports against PostgreSQL, the real SearchService and the S3 API server."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import status_pb2  # type: ignore[import-untyped]

from viewfinder.v1 import common_pb2, export_pb2, export_pb2_grpc, search_pb2
from viewfinder_exporter.testing import FileRow, SourceDataset, insert_dataset

pytestmark = pytest.mark.stack

BLUE = 20
RED = 9


def fixture_files() -> list[FileRow]:
    """20 blue and 9 red active images, and one deleted red one; every third carries a user tag."""
    rows = []
    for index in range(BLUE + RED + 1):
        colour = "blue" if index < BLUE else "red"
        tags = [("ai", "colour", colour)]
        if index % 3 == 0:
            tags.append(("user", "keep", ""))
        rows.append(
            FileRow(
                key=f"cars/{colour}/{index:03d}.png",
                size=1000 + index,
                width=64 + index,
                height=48,
                status="deleted" if index == BLUE + RED else "active",
                tags=tags,
                modified_minute=index,
            )
        )
    return rows


@pytest.fixture
async def source(pool: asyncpg.Pool, bucket: str) -> SourceDataset:
    async with pool.acquire() as conn:
        return await insert_dataset(conn, bucket=bucket, files=fixture_files())


def manifest_request(
    source: SourceDataset, bucket: str, prefix: str, **selection: Any
) -> export_pb2.StartExportRequest:
    return export_pb2.StartExportRequest(
        **selection, manifest=export_pb2.ManifestTarget(bucket=bucket, prefix=prefix)
    )


async def test_search_export_writes_exactly_the_matching_files_as_jsonl(
    stub: export_pb2_grpc.ExportServiceAsyncStub,
    source: SourceDataset,
    bucket: str,
    objects_in: Any,
    wait: Any,
) -> None:
    request = manifest_request(
        source,
        bucket,
        "exports/blue/",
        search=search_pb2.SearchRequest(
            dataset_version_id=source.version_id,
            metadata=search_pb2.MetadataFilter(path_prefix="cars/blue/"),
            page_size=3,  # ignored: exports page through everything
        ),
    )
    started = (await stub.StartExport(request, timeout=30)).job
    assert started.job.kind == common_pb2.JOB_KIND_EXPORT
    assert started.job.progress.total_items == BLUE
    job = await wait(started.job.id)
    assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error

    manifest = await objects_in.read("exports/blue/manifest.jsonl")
    records = [json.loads(line) for line in manifest.decode().splitlines()]
    assert len(records) == BLUE
    assert {r["file_id"] for r in records} == set(source.file_ids[:BLUE])
    first = next(r for r in records if r["file_id"] == source.file_ids[0])
    assert first["uri"] == f"s3://{bucket}/cars/blue/000.png"
    assert (first["bucket"], first["key"]) == (bucket, "cars/blue/000.png")
    assert (first["size"], first["width"], first["height"], first["format"]) == (1000, 64, 48, "PNG")
    assert first["etag"] == "etag-0"
    assert first["last_modified"] == "2025-05-01T00:00:00Z"
    assert first["score"] is None
    assert first["storage_connection"] == "default"
    assert sorted((t["source"], t["name"], t["value"]) for t in first["tags"]) == [
        ("ai", "colour", "blue"),
        ("user", "keep", ""),
    ]

    summary = json.loads(await objects_in.read("exports/blue/_SUCCESS"))
    assert summary["records"] == BLUE
    assert summary["bytes"] == len(manifest)
    assert summary["sha256"] == hashlib.sha256(manifest).hexdigest()
    assert summary["dataset_version_id"] == source.version_id
    assert summary["selection"]["search"]["metadata"] == {"path_prefix": "cars/blue/"}

    assert job.manifest_uri == f"s3://{bucket}/exports/blue/manifest.jsonl"
    assert job.summary_uri == f"s3://{bucket}/exports/blue/_SUCCESS"
    assert job.manifest_sha256 == summary["sha256"]
    assert job.counts.records_written == BLUE
    assert job.counts.bytes_written == len(manifest)
    assert job.job.progress.processed_items == job.job.progress.succeeded_items == BLUE
    assert job.job.HasField("end_time")
    # Only the published objects are left under the prefix: no temporary manifest.
    assert [k for k in await objects_in.keys() if k.startswith("exports/")] == [
        "exports/blue/_SUCCESS",
        "exports/blue/manifest.jsonl",
    ]
    assert await objects_in.unfinished_uploads() == 0


async def test_dsl_query_export_as_csv(
    stub: export_pb2_grpc.ExportServiceAsyncStub,
    source: SourceDataset,
    bucket: str,
    objects_in: Any,
    wait: Any,
) -> None:
    request = export_pb2.StartExportRequest(
        query=export_pb2.QuerySelection(dataset_version_id=source.version_id, query='Tags.user="keep"'),
        manifest=export_pb2.ManifestTarget(
            bucket=bucket, prefix="kept", format=export_pb2.MANIFEST_FORMAT_CSV
        ),
    )
    job = await wait((await stub.StartExport(request, timeout=30)).job.job.id)
    assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error

    manifest = await objects_in.read("kept/manifest.csv")
    rows = list(csv.DictReader(io.StringIO(manifest.decode())))
    kept = {source.file_ids[i] for i in range(0, BLUE + RED, 3)}  # the deleted file is not searchable
    assert len(rows) == len(kept)
    assert {row["file_id"] for row in rows} == kept
    assert all(row["score"] == "" for row in rows)
    assert all({"name": "keep", "value": "", "source": "user"} in json.loads(row["tags"]) for row in rows)
    summary = json.loads(await objects_in.read("kept/_SUCCESS"))
    assert summary["format"] == "csv"
    assert summary["records"] == len(kept)
    assert summary["sha256"] == hashlib.sha256(manifest).hexdigest() == job.manifest_sha256
    assert summary["selection"] == {
        "query": {"dataset_version_id": source.version_id, "query": 'Tags.user="keep"'}
    }


async def test_file_selection_exports_active_files_in_the_given_order(
    stub: export_pb2_grpc.ExportServiceAsyncStub,
    source: SourceDataset,
    bucket: str,
    objects_in: Any,
    wait: Any,
) -> None:
    deleted = source.file_ids[BLUE + RED]
    chosen = [source.file_ids[5], source.file_ids[25], deleted, source.file_ids[1], source.file_ids[5]]
    request = export_pb2.StartExportRequest(
        files=export_pb2.FileSelection(dataset_version_id=source.version_id, file_ids=chosen),
        manifest=export_pb2.ManifestTarget(bucket=bucket, prefix="picked"),
    )
    started = (await stub.StartExport(request, timeout=30)).job
    assert list(started.files.file_ids) == chosen[:4]  # repeats dropped
    job = await wait(started.job.id)
    assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
    records = [json.loads(line) for line in (await objects_in.read("picked/manifest.jsonl")).splitlines()]
    assert [r["file_id"] for r in records] == [source.file_ids[5], source.file_ids[25], source.file_ids[1]]
    assert job.job.progress.skipped_items == 1
    assert job.job.progress.total_items == 4
    summary = json.loads(await objects_in.read("picked/_SUCCESS"))
    assert summary["skipped_records"] == 1
    assert summary["selection"] == {"files": {"dataset_version_id": source.version_id, "file_count": 4}}


async def expect_refusal(
    stub: export_pb2_grpc.ExportServiceAsyncStub, request: export_pb2.StartExportRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.StartExport(request, timeout=30)
    return caught.value


@pytest.mark.parametrize(
    ("prefix", "bucket_name", "code", "words"),
    [
        ("../escape", None, grpc.StatusCode.INVALID_ARGUMENT, "'..'"),
        ("exports/../../etc", None, grpc.StatusCode.INVALID_ARGUMENT, "'..'"),
        ("/absolute", None, grpc.StatusCode.INVALID_ARGUMENT, "relative"),
        ("exports/a\nb", None, grpc.StatusCode.INVALID_ARGUMENT, "control character"),
        ("exports/\x1b[31m", None, grpc.StatusCode.INVALID_ARGUMENT, "control character"),
        (
            "exports/ok",
            "not-allowed-bucket",
            grpc.StatusCode.PERMISSION_DENIED,
            "not an allowed export target",
        ),
    ],
)
async def test_unsafe_or_disallowed_targets_are_refused_and_nothing_is_written(
    stub: export_pb2_grpc.ExportServiceAsyncStub,
    source: SourceDataset,
    bucket: str,
    objects_in: Any,
    pool: asyncpg.Pool,
    prefix: str,
    bucket_name: str | None,
    code: grpc.StatusCode,
    words: str,
) -> None:
    before = await objects_in.keys()
    error = await expect_refusal(
        stub,
        manifest_request(
            source,
            bucket_name or bucket,
            prefix,
            search=search_pb2.SearchRequest(dataset_version_id=source.version_id),
        ),
    )
    assert error.code() == code
    assert words in (error.details() or "")
    assert await objects_in.keys() == before
    assert await objects_in.unfinished_uploads() == 0
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_disallowed_storage_connection_is_refused(
    stub: export_pb2_grpc.ExportServiceAsyncStub, source: SourceDataset, bucket: str
) -> None:
    request = export_pb2.StartExportRequest(
        search=search_pb2.SearchRequest(dataset_version_id=source.version_id),
        manifest=export_pb2.ManifestTarget(storage_connection="someone-elses", bucket=bucket, prefix="x"),
    )
    error = await expect_refusal(stub, request)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "storage connection 'someone-elses'" in (error.details() or "")


async def test_bad_selections_are_precise_errors(
    stub: export_pb2_grpc.ExportServiceAsyncStub, source: SourceDataset, bucket: str, pool: asyncpg.Pool
) -> None:
    target = export_pb2.ManifestTarget(bucket=bucket, prefix="x")

    # A DSL mistake keeps search's QueryError detail, so clients can point at it.
    error = await expect_refusal(
        stub,
        export_pb2.StartExportRequest(
            query=export_pb2.QuerySelection(dataset_version_id=source.version_id, query='Tags.robot="x"'),
            manifest=target,
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    query_error = search_pb2.QueryError()
    status.details[0].Unpack(query_error)
    assert (query_error.line, query_error.column) == (1, 1)

    unknown_version = "00000000-0000-0000-0000-000000000000"
    error = await expect_refusal(
        stub,
        export_pb2.StartExportRequest(
            search=search_pb2.SearchRequest(dataset_version_id=unknown_version), manifest=target
        ),
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND

    error = await expect_refusal(
        stub,
        export_pb2.StartExportRequest(
            files=export_pb2.FileSelection(dataset_version_id=source.version_id, file_ids=[unknown_version]),
            manifest=target,
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown_version in (error.details() or "")

    error = await expect_refusal(stub, export_pb2.StartExportRequest(manifest=target))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await expect_refusal(
        stub,
        export_pb2.StartExportRequest(search=search_pb2.SearchRequest(dataset_version_id=source.version_id)),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_unknown_jobs_are_not_found_and_finished_jobs_cannot_resume(
    stub: export_pb2_grpc.ExportServiceAsyncStub, source: SourceDataset, bucket: str, wait: Any
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetExport(export_pb2.GetExportRequest(job_id="00000000-0000-0000-0000-000000000001"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetExport(export_pb2.GetExportRequest(job_id="not-a-uuid"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    request = manifest_request(
        source, bucket, "done", search=search_pb2.SearchRequest(dataset_version_id=source.version_id)
    )
    job = await wait((await stub.StartExport(request, timeout=30)).job.job.id)
    assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ResumeExport(export_pb2.ResumeExportRequest(job_id=job.job.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Cancelling a finished job changes nothing.
    cancelled = (await stub.CancelExport(export_pb2.CancelExportRequest(job_id=job.job.id))).job
    assert cancelled.job.state == common_pb2.JOB_STATE_SUCCEEDED
