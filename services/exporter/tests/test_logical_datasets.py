"""Logical dataset versions: immutable snapshots, numbering, diff, append, delete, cancel and resume."""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest

from viewfinder.v1 import common_pb2, export_pb2, export_pb2_grpc, search_pb2
from viewfinder_exporter.adapters.s3_objects import S3ObjectStore
from viewfinder_exporter.config import ExporterSettings
from viewfinder_exporter.testing import FileRow, SourceDataset, insert_dataset, running_exporter

pytestmark = pytest.mark.stack

if TYPE_CHECKING:
    Stub = export_pb2_grpc.ExportServiceAsyncStub
else:
    Stub = Any


def asyncpg_uuid(value: str) -> uuid.UUID:
    return uuid.UUID(value)


def blue_and_red(count: int = 12) -> list[FileRow]:
    return [
        FileRow(
            key=f"cars/{'blue' if i % 2 == 0 else 'red'}/{i:03d}.png",
            tags=[("ai", "colour", "blue" if i % 2 == 0 else "red")],
            modified_minute=i,
        )
        for i in range(count)
    ]


@pytest.fixture
async def source(pool: asyncpg.Pool, bucket: str) -> SourceDataset:
    async with pool.acquire() as conn:
        return await insert_dataset(conn, bucket=bucket, files=blue_and_red())


def blue_search(source: SourceDataset) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(
        dataset_version_id=source.version_id,
        metadata=search_pb2.MetadataFilter(path_prefix="cars/blue/"),
        sort_field=search_pb2.SORT_FIELD_LAST_MODIFIED,
        sort_direction=search_pb2.SORT_DIRECTION_ASCENDING,
    )


async def export_version(
    stub: Stub, wait: Any, name: str, *, description: str = "", append: bool = False, **selection: Any
) -> export_pb2.LogicalDatasetVersion:
    request = export_pb2.StartExportRequest(
        **selection,
        logical_dataset=export_pb2.LogicalDatasetTarget(name=name, description=description, append=append),
    )
    job = await wait((await stub.StartExport(request, timeout=30)).job.job.id)
    assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
    assert job.logical_dataset_version_id
    response = await stub.GetLogicalDatasetVersion(
        export_pb2.GetLogicalDatasetVersionRequest(logical_dataset_version_id=job.logical_dataset_version_id)
    )
    assert response.version.export_job_id == job.job.id
    return response.version


async def all_items(stub: Stub, version_id: str, page_size: int = 5) -> list[export_pb2.LogicalDatasetItem]:
    items: list[export_pb2.LogicalDatasetItem] = []
    token = ""
    while True:
        page = await stub.ListLogicalDatasetItems(
            export_pb2.ListLogicalDatasetItemsRequest(
                logical_dataset_version_id=version_id, page_size=page_size, page_token=token
            )
        )
        items.extend(page.items)
        token = page.next_page_token
        if not token:
            return items


async def all_diff(stub: Stub, base: str, target: str) -> tuple[list[export_pb2.DiffEntry], int, int]:
    entries: list[export_pb2.DiffEntry] = []
    token = ""
    while True:
        page = await stub.DiffLogicalDatasetVersions(
            export_pb2.DiffLogicalDatasetVersionsRequest(
                base_version_id=base, target_version_id=target, page_size=2, page_token=token
            )
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries, page.added_count, page.removed_count


def tag_values(item: export_pb2.LogicalDatasetItem) -> list[tuple[str, str, int]]:
    return sorted((tag.name, tag.value, tag.source) for tag in item.tags)


async def test_versions_are_immutable_snapshots_numbered_and_diffed(
    stub: Stub, wait: Any, source: SourceDataset, pool: asyncpg.Pool, bucket: str
) -> None:
    v1 = await export_version(stub, wait, "cars", description="first cut", search=blue_search(source))
    assert (v1.number, v1.name, v1.item_count, v1.description) == (1, "v1", 6, "first cut")
    v1_items = await all_items(stub, v1.id)
    assert [item.file.id for item in v1_items] == [source.file_ids[i] for i in (0, 2, 4, 6, 8, 10)]
    assert (
        v1.checksum
        == hashlib.sha256(b"".join(f"{i.file.id}\t{i.file.etag}\n".encode() for i in v1_items)).hexdigest()
    )
    assert v1_items[0].file.bucket == bucket
    assert v1_items[0].storage_connection == "default"
    assert tag_values(v1_items[0]) == [("colour", "blue", common_pb2.TAG_SOURCE_AI)]

    # The source changes after the export: a tag is edited, a file deleted, one
    # re-uploaded with new content, a new one added.
    file_0, file_2, file_4 = (source.file_ids[i] for i in (0, 2, 4))
    await pool.execute(
        "UPDATE file_tags SET value = 'navy' WHERE file_id = $1 AND tag = 'colour'", asyncpg_uuid(file_0)
    )
    await pool.execute("UPDATE files SET status = 'deleted' WHERE id = $1", asyncpg_uuid(file_2))
    await pool.execute("UPDATE files SET etag = 'etag-new' WHERE id = $1", asyncpg_uuid(file_4))
    async with pool.acquire() as conn:
        added_file = await conn.fetchval(
            """
            INSERT INTO files (dataset_id, version_id, bucket, key, uri, etag, last_modified, format, width, height)
            VALUES ($1, $2, $3, 'cars/blue/new.png', $4, 'etag-x', now(), 'PNG', 64, 48) RETURNING id
            """,
            asyncpg_uuid(source.dataset_id),
            asyncpg_uuid(source.version_id),
            bucket,
            f"s3://{bucket}/cars/blue/new.png",
        )

    # v1 is a snapshot: exactly what it was.
    assert await all_items(stub, v1.id, page_size=100) == v1_items
    assert (
        await stub.GetLogicalDatasetVersion(
            export_pb2.GetLogicalDatasetVersionRequest(logical_dataset_version_id=v1.id)
        )
    ).version == v1

    v2 = await export_version(stub, wait, "cars", search=blue_search(source))
    assert (v2.number, v2.item_count) == (2, 6)
    v2_items = {item.file.id: item for item in await all_items(stub, v2.id)}
    assert tag_values(v2_items[file_0]) == [("colour", "navy", common_pb2.TAG_SOURCE_AI)]
    assert file_2 not in v2_items
    assert v2_items[file_4].file.etag == "etag-new"

    entries, added, removed = await all_diff(stub, v1.id, v2.id)
    changes = {(entry.change, entry.item.file.id) for entry in entries}
    assert changes == {
        (export_pb2.DIFF_CHANGE_ADDED, file_0),  # new tags
        (export_pb2.DIFF_CHANGE_ADDED, file_4),  # new content
        (export_pb2.DIFF_CHANGE_ADDED, str(added_file)),
        (export_pb2.DIFF_CHANGE_REMOVED, file_0),
        (export_pb2.DIFF_CHANGE_REMOVED, file_2),
        (export_pb2.DIFF_CHANGE_REMOVED, file_4),
    }
    assert (added, removed) == (3, 3)
    removed_file_4 = next(
        e.item for e in entries if e.change == export_pb2.DIFF_CHANGE_REMOVED and e.item.file.id == file_4
    )
    assert removed_file_4.file.etag == "etag-4"

    # Names and listings.
    by_name = await stub.GetLogicalDatasetVersion(
        export_pb2.GetLogicalDatasetVersionRequest(
            version_name=export_pb2.LogicalDatasetVersionName(name="cars", version="v1")
        )
    )
    assert by_name.version.id == v1.id
    latest = await stub.GetLogicalDatasetVersion(
        export_pb2.GetLogicalDatasetVersionRequest(
            version_name=export_pb2.LogicalDatasetVersionName(name="cars")
        )
    )
    assert latest.version.id == v2.id
    dataset = (await stub.GetLogicalDataset(export_pb2.GetLogicalDatasetRequest(name="cars"))).logical_dataset
    assert (dataset.latest_version, dataset.version_count) == (2, 2)
    listed = await stub.ListLogicalDatasets(export_pb2.ListLogicalDatasetsRequest())
    assert [(d.name, d.id) for d in listed.logical_datasets] == [("cars", dataset.id)]
    versions = await stub.ListLogicalDatasetVersions(
        export_pb2.ListLogicalDatasetVersionsRequest(logical_dataset_id=dataset.id, page_size=1)
    )
    assert [v.name for v in versions.versions] == ["v2"]
    rest = await stub.ListLogicalDatasetVersions(
        export_pb2.ListLogicalDatasetVersionsRequest(
            logical_dataset_id=dataset.id, page_size=1, page_token=versions.next_page_token
        )
    )
    assert [v.name for v in rest.versions] == ["v1"]
    assert rest.next_page_token == ""

    # Deleting the newest version never frees its number.
    deleted = await stub.DeleteLogicalDatasetVersion(
        export_pb2.DeleteLogicalDatasetVersionRequest(logical_dataset_version_id=v2.id)
    )
    assert deleted.version.id == v2.id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetLogicalDatasetVersion(
            export_pb2.GetLogicalDatasetVersionRequest(logical_dataset_version_id=v2.id)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    v3 = await export_version(stub, wait, "cars", search=blue_search(source))
    assert v3.name == "v3"
    dataset = (await stub.GetLogicalDataset(export_pb2.GetLogicalDatasetRequest(name="cars"))).logical_dataset
    assert (dataset.latest_version, dataset.version_count) == (3, 2)

    # Snapshot rows cannot be edited behind the service's back either.
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await pool.execute(
            "UPDATE logical_dataset_items SET etag = 'forged' WHERE version_id = $1", asyncpg_uuid(v1.id)
        )

    gone = await stub.DeleteLogicalDataset(
        export_pb2.DeleteLogicalDatasetRequest(logical_dataset_id=dataset.id)
    )
    assert gone.deleted_versions == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetLogicalDataset(export_pb2.GetLogicalDatasetRequest(logical_dataset_id=dataset.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await pool.fetchval("SELECT count(*) FROM logical_dataset_items") == 0


async def test_append_gathers_several_source_datasets(
    stub: Stub, wait: Any, source: SourceDataset, pool: asyncpg.Pool, bucket: str
) -> None:
    async with pool.acquire() as conn:
        other = await insert_dataset(
            conn,
            bucket=bucket,
            files=[FileRow(key=f"bikes/{i}.png", tags=[("user", "bike", "")]) for i in range(3)],
        )
    v1 = await export_version(stub, wait, "mixed", search=blue_search(source))
    v2 = await export_version(
        stub,
        wait,
        "mixed",
        append=True,
        files=export_pb2.FileSelection(dataset_version_id=other.version_id, file_ids=other.file_ids),
    )
    v2_items = await all_items(stub, v2.id)
    assert v2.item_count == 9
    # The earlier version's items come first, then the appended selection.
    assert [i.file.id for i in v2_items] == [i.file.id for i in await all_items(stub, v1.id)] + other.file_ids
    assert {i.file.dataset_id for i in v2_items} == {source.dataset_id, other.dataset_id}

    # Appending a file the version already holds replaces its snapshot instead of repeating it.
    await pool.execute(
        "UPDATE file_tags SET value = 'teal' WHERE file_id = $1", asyncpg_uuid(source.file_ids[0])
    )
    v3 = await export_version(
        stub,
        wait,
        "mixed",
        append=True,
        files=export_pb2.FileSelection(dataset_version_id=source.version_id, file_ids=[source.file_ids[0]]),
    )
    v3_items = await all_items(stub, v3.id)
    assert v3.item_count == 9
    assert [i.file.id for i in v3_items].count(source.file_ids[0]) == 1
    assert v3_items[-1].file.id == source.file_ids[0]
    assert tag_values(v3_items[-1]) == [("colour", "teal", common_pb2.TAG_SOURCE_AI)]
    _, added, removed = await all_diff(stub, v2.id, v3.id)
    assert (added, removed) == (1, 1)


async def test_cancel_a_pending_export_then_resume_it(
    pool: asyncpg.Pool,
    s3: Any,
    search_address: str,
    exporter_settings: ExporterSettings,
    source: SourceDataset,
    wait_on: Any,
) -> None:
    async with running_exporter(
        exporter_settings,
        pool=pool,
        objects=S3ObjectStore(s3),
        search_address=search_address,
        start_runner=False,
    ) as running:
        stub = running.stub
        request = export_pb2.StartExportRequest(
            search=blue_search(source), logical_dataset=export_pb2.LogicalDatasetTarget(name="later")
        )
        job = (await stub.StartExport(request, timeout=30)).job
        assert job.job.state == common_pb2.JOB_STATE_PENDING
        cancelled = (await stub.CancelExport(export_pb2.CancelExportRequest(job_id=job.job.id))).job
        assert cancelled.job.state == common_pb2.JOB_STATE_CANCELLED
        assert cancelled.job.HasField("end_time")
        dataset = (
            await stub.GetLogicalDataset(export_pb2.GetLogicalDatasetRequest(name="later"))
        ).logical_dataset
        assert (dataset.latest_version, dataset.version_count) == (0, 0)

        resumed = (await stub.ResumeExport(export_pb2.ResumeExportRequest(job_id=job.job.id))).job
        assert resumed.job.state == common_pb2.JOB_STATE_PENDING
        assert resumed.job.resume_count == 1
        assert not resumed.job.HasField("end_time")

        running.start_runner()
        done = await wait_on(stub, job.job.id)
        assert done.job.state == common_pb2.JOB_STATE_SUCCEEDED, done.job.error
        version = await stub.GetLogicalDatasetVersion(
            export_pb2.GetLogicalDatasetVersionRequest(
                logical_dataset_version_id=done.logical_dataset_version_id
            )
        )
        assert (version.version.name, version.version.item_count) == ("v1", 6)


async def test_bad_requests_are_precise_errors(stub: Stub, source: SourceDataset) -> None:
    async def code_of(call: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return caught.value.code()

    bad_name = export_pb2.StartExportRequest(
        search=blue_search(source), logical_dataset=export_pb2.LogicalDatasetTarget(name="Not Valid")
    )
    assert await code_of(stub.StartExport(bad_name)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        await code_of(
            stub.GetLogicalDatasetVersion(
                export_pb2.GetLogicalDatasetVersionRequest(
                    version_name=export_pb2.LogicalDatasetVersionName(name="cars", version="2")
                )
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(
            stub.GetLogicalDatasetVersion(
                export_pb2.GetLogicalDatasetVersionRequest(
                    version_name=export_pb2.LogicalDatasetVersionName(name="nothing-here")
                )
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(stub.ListLogicalDatasets(export_pb2.ListLogicalDatasetsRequest(page_size=5000)))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(stub.ListLogicalDatasets(export_pb2.ListLogicalDatasetsRequest(page_token="%%%")))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(stub.GetLogicalDataset(export_pb2.GetLogicalDatasetRequest()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
