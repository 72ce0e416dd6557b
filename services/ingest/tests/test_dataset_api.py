"""DatasetService over gRPC: every rpc, its pagination and its precise status codes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from viewfinder.v1 import common_pb2, dataset_pb2

pytestmark = pytest.mark.stack

STATUS = dataset_pb2.FileStatus


async def expect_status(call: Any, code: grpc.StatusCode, text: str = "") -> str:
    """Awaits an rpc that must fail with ``code`` (and a message containing ``text``)."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == code, failure.value.details()
    details = failure.value.details() or ""
    assert text in details
    return details


async def test_datasets_create_get_list_update(make_harness: Any, unique_name: str) -> None:
    harness = await make_harness()
    stub = harness.stub
    created = await stub.CreateDataset(
        dataset_pb2.CreateDatasetRequest(
            name=f"{unique_name}-b",
            description="cats",
            bucket=harness.bucket,
            prefix="cats/",
            labeling=dataset_pb2.LabelingSettings(automatic=True, model_connection="qwen"),
            indexing=dataset_pb2.IndexingSettings(vector_store_connection="milvus"),
        ),
        timeout=10,
    )
    dataset = created.dataset
    assert (dataset.name, dataset.prefix, dataset.latest_version, dataset.content_type) == (
        f"{unique_name}-b",
        "cats/",
        1,
        dataset_pb2.CONTENT_TYPE_IMAGE,
    )
    assert (created.version.name, created.version.number, created.version.file_count) == ("v1", 1, 0)
    assert dataset.labeling.automatic
    assert dataset.labeling.model_connection == "qwen"
    # The tagger reads automatic labeling from its own table.
    assert await harness.pool.fetchval(
        "SELECT automatic FROM dataset_labeling_settings WHERE dataset_id = $1", dataset.id
    )
    await harness.create_dataset(f"{unique_name}-a")
    await harness.create_dataset(f"{unique_name}-c")

    by_name = await stub.GetDataset(dataset_pb2.GetDatasetRequest(name=f"{unique_name}-b"), timeout=10)
    by_id = await stub.GetDataset(dataset_pb2.GetDatasetRequest(dataset_id=dataset.id), timeout=10)
    assert by_name.dataset == by_id.dataset == dataset

    first = await stub.ListDatasets(dataset_pb2.ListDatasetsRequest(page_size=2), timeout=10)
    rest = await stub.ListDatasets(
        dataset_pb2.ListDatasetsRequest(page_size=2, page_token=first.next_page_token), timeout=10
    )
    assert [d.name for d in [*first.datasets, *rest.datasets]] == [f"{unique_name}-{s}" for s in "abc"]
    assert rest.next_page_token == ""

    updated = await stub.UpdateDataset(
        dataset_pb2.UpdateDatasetRequest(
            dataset=dataset_pb2.Dataset(
                id=dataset.id,
                description="dogs",
                name="ignored",
                labeling=dataset_pb2.LabelingSettings(automatic=False, model_connection="ignored"),
            ),
            update_mask=FieldMask(paths=["description", "labeling.automatic"]),
        ),
        timeout=10,
    )
    assert (updated.dataset.description, updated.dataset.name) == ("dogs", f"{unique_name}-b")
    assert (updated.dataset.labeling.automatic, updated.dataset.labeling.model_connection) == (False, "qwen")
    assert updated.dataset.indexing.vector_store_connection == "milvus"


async def test_dataset_errors_have_precise_codes(make_harness: Any, unique_name: str) -> None:
    harness = await make_harness()
    stub = harness.stub
    await harness.create_dataset(unique_name)
    await expect_status(
        stub.CreateDataset(dataset_pb2.CreateDatasetRequest(name=unique_name, bucket=harness.bucket)),
        grpc.StatusCode.ALREADY_EXISTS,
        "exists already",
    )
    for request, text in [
        (
            dataset_pb2.CreateDatasetRequest(name="Bad Name", bucket=harness.bucket),
            "name 'Bad Name' is invalid",
        ),
        (dataset_pb2.CreateDatasetRequest(name="x1", bucket="B!"), "not a valid bucket name"),
        (
            dataset_pb2.CreateDatasetRequest(name="x1", bucket=harness.bucket, prefix="/a"),
            "must not start with '/'",
        ),
        (dataset_pb2.CreateDatasetRequest(name="x1", bucket=f"{harness.bucket}-missing"), "does not exist"),
        (
            dataset_pb2.CreateDatasetRequest(name="x1", bucket=harness.bucket, storage_connection="oss-prod"),
            "not configured",
        ),
        (
            dataset_pb2.CreateDatasetRequest(
                name="x1",
                bucket=harness.bucket,
                labeling=dataset_pb2.LabelingSettings(
                    tag_definition_id="0b7a8d4e-0000-4000-8000-000000000000"
                ),
            ),
            "is not a tag definition",
        ),
    ]:
        await expect_status(stub.CreateDataset(request), grpc.StatusCode.INVALID_ARGUMENT, text)
    await expect_status(
        stub.GetDataset(dataset_pb2.GetDatasetRequest(name="nope")), grpc.StatusCode.NOT_FOUND, "no dataset"
    )
    await expect_status(
        stub.GetDataset(dataset_pb2.GetDatasetRequest(dataset_id="not-a-uuid")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        stub.ListDatasets(dataset_pb2.ListDatasetsRequest(page_token="garbage!")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    dataset = (await stub.GetDataset(dataset_pb2.GetDatasetRequest(name=unique_name))).dataset
    await expect_status(
        stub.UpdateDataset(
            dataset_pb2.UpdateDatasetRequest(dataset=dataset, update_mask=FieldMask(paths=["bucket"]))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "'bucket' cannot be updated",
    )
    await expect_status(
        stub.StartSync(dataset_pb2.StartSyncRequest(dataset_id=dataset.id)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "mode",
    )
    await expect_status(
        stub.GetJob(dataset_pb2.GetJobRequest(job_id=dataset.id)), grpc.StatusCode.NOT_FOUND, "sync job"
    )
    await expect_status(
        stub.GetFile(dataset_pb2.GetFileRequest(file_id=dataset.id)), grpc.StatusCode.NOT_FOUND, "file"
    )


async def test_versions_and_files(make_harness: Any, images: Any, unique_name: str) -> None:
    harness = await make_harness()
    stub = harness.stub
    await harness.put_many({f"f/{name}": images.encode("PNG", seed=i) for i, name in enumerate("abcde")})
    await harness.put_many({"f/zz/notes.txt": b"hello", "f/zz/img.png": images.encode("PNG")})
    created = await harness.create_dataset(unique_name, prefix="f/")
    job = await harness.sync(created.dataset.id, common_pb2.JOB_MODE_INCREMENTAL)
    assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
    v1 = created.version.id

    page1 = await stub.ListFiles(dataset_pb2.ListFilesRequest(dataset_version_id=v1, page_size=4), timeout=10)
    page2 = await stub.ListFiles(
        dataset_pb2.ListFilesRequest(dataset_version_id=v1, page_size=4, page_token=page1.next_page_token),
        timeout=10,
    )
    assert [f.key for f in [*page1.files, *page2.files]] == [
        "f/a",
        "f/b",
        "f/c",
        "f/d",
        "f/e",
        "f/zz/img.png",
        "f/zz/notes.txt",
    ]
    assert page2.next_page_token == ""
    unsupported = await stub.ListFiles(
        dataset_pb2.ListFilesRequest(dataset_version_id=v1, statuses=[STATUS.FILE_STATUS_UNSUPPORTED]),
        timeout=10,
    )
    assert [f.key for f in unsupported.files] == ["f/zz/notes.txt"]
    in_folder = await stub.ListFiles(dataset_pb2.ListFilesRequest(dataset_version_id=v1, key_prefix="f/zz/"))
    assert [f.key for f in in_folder.files] == ["f/zz/img.png", "f/zz/notes.txt"]
    await expect_status(
        stub.ListFiles(dataset_pb2.ListFilesRequest(dataset_version_id=v1, page_size=1001)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "between 1 and 1000",
    )
    one = await stub.GetFile(dataset_pb2.GetFileRequest(file_id=page1.files[0].id), timeout=10)
    assert one.file == page1.files[0]
    assert (one.file.uri, one.file.format, one.file.status) == (
        f"s3://{harness.bucket}/f/a",
        "PNG",
        STATUS.FILE_STATUS_ACTIVE,
    )

    v2 = (
        await stub.CreateDatasetVersion(
            dataset_pb2.CreateDatasetVersionRequest(
                dataset_id=created.dataset.id, description="seeded", base_version_id=v1
            ),
            timeout=10,
        )
    ).version
    v3 = (
        await stub.CreateDatasetVersion(
            dataset_pb2.CreateDatasetVersionRequest(dataset_id=created.dataset.id), timeout=10
        )
    ).version
    assert (v2.name, v2.file_count, v2.active_file_count, v2.description) == ("v2", 7, 6, "seeded")
    assert (v3.name, v3.file_count) == ("v3", 0)
    versions = await stub.ListDatasetVersions(
        dataset_pb2.ListDatasetVersionsRequest(dataset_id=created.dataset.id, page_size=2), timeout=10
    )
    older = await stub.ListDatasetVersions(
        dataset_pb2.ListDatasetVersionsRequest(
            dataset_id=created.dataset.id, page_size=2, page_token=versions.next_page_token
        ),
        timeout=10,
    )
    assert [v.name for v in [*versions.versions, *older.versions]] == ["v3", "v2", "v1"]
    seeded = await harness.all_files(v2.id)
    assert {f.key for f in seeded} == {f.key for f in [*page1.files, *page2.files]}
    assert not {f.id for f in seeded} & {f.id for f in [*page1.files, *page2.files]}  # new ids per version
    dataset = (await stub.GetDataset(dataset_pb2.GetDatasetRequest(dataset_id=created.dataset.id))).dataset
    assert dataset.latest_version == 3


async def test_a_job_whose_worker_died_reads_as_failed_and_can_be_resumed(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    harness = await make_harness(job_stale_after_s=5.0)
    await harness.put_many({"s/a.png": images.encode("PNG")})
    created = await harness.create_dataset(unique_name, prefix="s/")
    job_id = await harness.pool.fetchval(
        """
        INSERT INTO jobs (kind, mode, state, dataset_id, version_id, started_at, updated_at, trace_id)
        VALUES ('sync', 'full', 'running', $1, $2, now() - interval '1 hour', now() - interval '1 hour', 'abc')
        RETURNING id
        """,
        created.dataset.id,
        created.version.id,
    )
    seen = await harness.stub.GetJob(dataset_pb2.GetJobRequest(job_id=str(job_id)), timeout=10)
    assert seen.job.job.state == common_pb2.JOB_STATE_FAILED
    assert "stopped reporting progress" in seen.job.job.error

    await harness.stub.ResumeJob(dataset_pb2.ResumeJobRequest(job_id=str(job_id)), timeout=10)
    done = await harness.wait_job(str(job_id))
    assert done.job.state == common_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert (done.counts.added, done.job.resume_count) == (1, 1)
