"""The ExportService servicer: translates protobuf to the exporter's operations and back."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from viewfinder.v1 import export_pb2, export_pb2_grpc
from viewfinder_common.errors import InvalidArgument
from viewfinder_common.logging import get_logger
from viewfinder_exporter.adapters.jobs import ExportJobs
from viewfinder_exporter.adapters.logical import LogicalDatasets
from viewfinder_exporter.adapters.search_source import SearchRejected
from viewfinder_exporter.domain.page_tokens import page_size
from viewfinder_exporter.exports import ExportStarter
from viewfinder_exporter.handlers.messages import (
    export_job_message,
    item_message,
    logical_dataset_message,
    logical_version_message,
)

log = get_logger(__name__)

Context = grpc.aio.ServicerContext[object, object]


class ExportServicer(export_pb2_grpc.ExportServiceServicer):
    """ExportService over the export jobs and logical datasets of the catalogue."""

    def __init__(
        self,
        *,
        starter: ExportStarter,
        jobs: ExportJobs,
        logical: LogicalDatasets,
        wake_worker: Callable[[], None],
    ) -> None:
        self._starter = starter
        self._jobs = jobs
        self._logical = logical
        self._wake_worker = wake_worker

    async def StartExport(  # noqa: N802 (gRPC method name)
        self, request: export_pb2.StartExportRequest, context: Context
    ) -> export_pb2.StartExportResponse:
        """Checks and stores an export job; search's refusals keep their status and details."""
        try:
            job = await self._starter.start(request)
        except SearchRejected as error:
            # Passes on e.g. the QueryError detail that points at a DSL mistake.
            await context.abort(error.status, str(error), trailing_metadata=error.trailing_metadata)
        log.info("export_accepted", job_id=job.id, total_items=job.counts.total_items)
        return export_pb2.StartExportResponse(job=export_job_message(job))

    async def GetExport(  # noqa: N802
        self, request: export_pb2.GetExportRequest, context: Context
    ) -> export_pb2.GetExportResponse:
        """One export job."""
        return export_pb2.GetExportResponse(job=export_job_message(await self._jobs.get(request.job_id)))

    async def CancelExport(  # noqa: N802
        self, request: export_pb2.CancelExportRequest, context: Context
    ) -> export_pb2.CancelExportResponse:
        """Asks a job to stop; PENDING jobs stop at once."""
        job = await self._jobs.cancel(request.job_id)
        return export_pb2.CancelExportResponse(job=export_job_message(job))

    async def ResumeExport(  # noqa: N802
        self, request: export_pb2.ResumeExportRequest, context: Context
    ) -> export_pb2.ResumeExportResponse:
        """Puts a FAILED or CANCELLED job back in the queue."""
        job = await self._jobs.resume(request.job_id)
        self._wake_worker()
        return export_pb2.ResumeExportResponse(job=export_job_message(job))

    async def ListLogicalDatasets(  # noqa: N802
        self, request: export_pb2.ListLogicalDatasetsRequest, context: Context
    ) -> export_pb2.ListLogicalDatasetsResponse:
        """Logical datasets by name."""
        datasets, token = await self._logical.list_datasets(
            page_size=page_size(request.page_size), page_token=request.page_token
        )
        return export_pb2.ListLogicalDatasetsResponse(
            logical_datasets=[logical_dataset_message(record) for record in datasets], next_page_token=token
        )

    async def GetLogicalDataset(  # noqa: N802
        self, request: export_pb2.GetLogicalDatasetRequest, context: Context
    ) -> export_pb2.GetLogicalDatasetResponse:
        """A logical dataset by id or name."""
        lookup = request.WhichOneof("lookup")
        if lookup is None:
            raise InvalidArgument("give logical_dataset_id or name")
        record = await self._logical.get_dataset(dataset_id=request.logical_dataset_id, name=request.name)
        return export_pb2.GetLogicalDatasetResponse(logical_dataset=logical_dataset_message(record))

    async def DeleteLogicalDataset(  # noqa: N802
        self, request: export_pb2.DeleteLogicalDatasetRequest, context: Context
    ) -> export_pb2.DeleteLogicalDatasetResponse:
        """Deletes a logical dataset and its versions."""
        deleted = await self._logical.delete_dataset(request.logical_dataset_id)
        log.info("logical_dataset_deleted", logical_dataset_id=request.logical_dataset_id, versions=deleted)
        return export_pb2.DeleteLogicalDatasetResponse(deleted_versions=deleted)

    async def ListLogicalDatasetVersions(  # noqa: N802
        self, request: export_pb2.ListLogicalDatasetVersionsRequest, context: Context
    ) -> export_pb2.ListLogicalDatasetVersionsResponse:
        """Versions, newest first."""
        versions, token = await self._logical.list_versions(
            request.logical_dataset_id, page_size=page_size(request.page_size), page_token=request.page_token
        )
        return export_pb2.ListLogicalDatasetVersionsResponse(
            versions=[logical_version_message(record) for record in versions], next_page_token=token
        )

    async def GetLogicalDatasetVersion(  # noqa: N802
        self, request: export_pb2.GetLogicalDatasetVersionRequest, context: Context
    ) -> export_pb2.GetLogicalDatasetVersionResponse:
        """A version by id, or by dataset name and version name."""
        lookup = request.WhichOneof("lookup")
        if lookup == "logical_dataset_version_id":
            record = await self._logical.get_version(request.logical_dataset_version_id)
        elif lookup == "version_name":
            record = await self._logical.get_version_by_name(
                request.version_name.name, request.version_name.version
            )
        else:
            raise InvalidArgument("give logical_dataset_version_id or version_name")
        return export_pb2.GetLogicalDatasetVersionResponse(version=logical_version_message(record))

    async def DeleteLogicalDatasetVersion(  # noqa: N802
        self, request: export_pb2.DeleteLogicalDatasetVersionRequest, context: Context
    ) -> export_pb2.DeleteLogicalDatasetVersionResponse:
        """Deletes one version; the others keep their numbers."""
        record = await self._logical.delete_version(request.logical_dataset_version_id)
        log.info(
            "logical_dataset_version_deleted", logical_dataset_version_id=record.id, number=record.number
        )
        return export_pb2.DeleteLogicalDatasetVersionResponse(version=logical_version_message(record))

    async def ListLogicalDatasetItems(  # noqa: N802
        self, request: export_pb2.ListLogicalDatasetItemsRequest, context: Context
    ) -> export_pb2.ListLogicalDatasetItemsResponse:
        """A version's items in export order."""
        items, token = await self._logical.list_items(
            request.logical_dataset_version_id,
            page_size=page_size(request.page_size),
            page_token=request.page_token,
        )
        return export_pb2.ListLogicalDatasetItemsResponse(
            items=[item_message(item) for item in items], next_page_token=token
        )

    async def DiffLogicalDatasetVersions(  # noqa: N802
        self, request: export_pb2.DiffLogicalDatasetVersionsRequest, context: Context
    ) -> export_pb2.DiffLogicalDatasetVersionsResponse:
        """Items added and removed between two versions of one logical dataset."""
        diff = await self._logical.diff(
            request.base_version_id,
            request.target_version_id,
            page_size=page_size(request.page_size),
            page_token=request.page_token,
        )
        return export_pb2.DiffLogicalDatasetVersionsResponse(
            entries=[
                export_pb2.DiffEntry(
                    change=export_pb2.DIFF_CHANGE_ADDED if change == 1 else export_pb2.DIFF_CHANGE_REMOVED,
                    item=item_message(item),
                )
                for change, item in diff.entries
            ],
            next_page_token=diff.next_page_token,
            added_count=diff.added,
            removed_count=diff.removed,
        )
