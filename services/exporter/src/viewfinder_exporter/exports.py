"""Starting export jobs: check the request, size the selection, store the job, wake a worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from viewfinder.v1 import export_pb2
from viewfinder_common.errors import InvalidArgument
from viewfinder_exporter.adapters.catalogue import ExporterCatalogue
from viewfinder_exporter.adapters.jobs import ExportJobRecord, ExportJobs
from viewfinder_exporter.adapters.search_source import SearchClient
from viewfinder_exporter.domain.selection import logical_target_of, manifest_target_of, selection_of


@dataclass(frozen=True)
class TargetPolicy:
    """Where manifests may be written (from the settings)."""

    allowed_connections: frozenset[str]
    allowed_buckets: tuple[str, ...]


class ExportStarter:
    """StartExport: everything is checked before the job is stored, so a bad request writes nothing."""

    def __init__(
        self,
        *,
        jobs: ExportJobs,
        catalogue: ExporterCatalogue,
        search: SearchClient,
        policy: TargetPolicy,
        wake_worker: Callable[[], None],
    ) -> None:
        self._jobs = jobs
        self._catalogue = catalogue
        self._search = search
        self._policy = policy
        self._wake_worker = wake_worker

    async def start(self, request: export_pb2.StartExportRequest) -> ExportJobRecord:
        """Checks target and selection, counts the selection, stores a PENDING job."""
        target = request.WhichOneof("target")
        logical_name = ""
        if target == "manifest":
            manifest_target_of(
                request.manifest,
                allowed_connections=self._policy.allowed_connections,
                allowed_buckets=self._policy.allowed_buckets,
            )
        elif target == "logical_dataset":
            logical_name = logical_target_of(request.logical_dataset).name
        else:
            raise InvalidArgument("a target is required: manifest or logical_dataset")
        selection = selection_of(request)
        version = await self._catalogue.source_version(selection.dataset_version_id)
        stored = export_pb2.StartExportRequest()
        stored.CopyFrom(request)
        if selection.search is not None:
            # Search checks the request (DSL syntax, filters, vector query) now, not when the job runs.
            total = await self._search.count(selection.search)
        else:
            file_ids = await self._catalogue.check_file_selection(
                version.dataset_version_id, selection.file_ids
            )
            del stored.files.file_ids[:]
            stored.files.file_ids.extend(file_ids)
            total = len(file_ids)
        job = await self._jobs.create(
            request=stored,
            dataset_id=version.dataset_id,
            dataset_version_id=version.dataset_version_id,
            total_items=total,
            logical_dataset_name=logical_name,
        )
        self._wake_worker()
        return job
