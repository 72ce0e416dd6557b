"""Runs export jobs: claims them from the catalogue and runs each with its source and sink.

A background task of the service. It claims jobs while fewer than
``max_parallel_jobs`` run here (see ``adapters.jobs`` for the lease), wakes
at once when StartExport or ResumeExport was called on this process and
otherwise polls for jobs started on other replicas. At shutdown the running
jobs are handed back as PENDING at their last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from viewfinder.v1 import export_pb2
from viewfinder_common.logging import get_logger
from viewfinder_exporter.adapters.catalogue import ExporterCatalogue, FileSelectionSource
from viewfinder_exporter.adapters.jobs import ExportJobRecord, ExportJobs, JobLeaseStore, request_json
from viewfinder_exporter.adapters.logical import LogicalVersionWriter
from viewfinder_exporter.adapters.search_source import SearchClient, SearchSource
from viewfinder_exporter.domain.runner import ExportSink, LeaseLost, RecordSource, failure_reason, run_export
from viewfinder_exporter.domain.selection import logical_target_of, manifest_target_of, selection_of
from viewfinder_exporter.domain.sinks import LogicalDatasetSink, ManifestJob, ManifestSink, ObjectStore
from viewfinder_exporter.exports import TargetPolicy

log = get_logger(__name__)


@dataclass(frozen=True)
class RunnerSettings:
    """Sizing and timing of the job runner."""

    max_parallel_jobs: int = 2
    lease_s: float = 120.0
    poll_interval_s: float = 5.0
    part_size: int = 8 * 1024 * 1024
    search_page_size: int = 1000


class ExportJobRunner:
    """Claims and runs export jobs until cancelled."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        jobs: ExportJobs,
        catalogue: ExporterCatalogue,
        search: SearchClient,
        objects: ObjectStore,
        policy: TargetPolicy,
        settings: RunnerSettings,
    ) -> None:
        self._pool = pool
        self._jobs = jobs
        self._catalogue = catalogue
        self._search = search
        self._objects = objects
        self._policy = policy
        self._settings = settings
        self.worker_id = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Look for PENDING jobs now."""
        self._wake.set()

    async def run_forever(self) -> None:
        """Claims jobs while there is room; on cancellation hands the running ones back."""
        try:
            while True:
                while len(self._tasks) < self._settings.max_parallel_jobs:
                    job = await self._jobs.claim(worker_id=self.worker_id, lease_s=self._settings.lease_s)
                    if job is None:
                        break
                    self._start(job)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval_s)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start(self, job: ExportJobRecord) -> None:
        task = asyncio.create_task(self._run_guarded(job), name=f"export-job-{job.id}")
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            self._wake.set()

        task.add_done_callback(done)

    async def _run_guarded(self, job: ExportJobRecord) -> None:
        lease = self._jobs.lease(job.id, self.worker_id)
        try:
            try:
                source, sink = await self._parts(job, lease)
            except Exception as error:
                # The request no longer fits (target disallowed since, version deleted …).
                await lease.fail(failure_reason(error), job.counts)
                return
            log.info("export_started", job_id=job.id, resume_count=job.resume_count)
            await run_export(
                job_id=job.id,
                total_items=job.counts.total_items,
                checkpoint=job.checkpoint,
                source=source,
                sink=sink,
                lease=lease,
            )
        except LeaseLost:
            log.warning("export_lease_lost", job_id=job.id)
        except Exception:
            # The catalogue itself is gone: the job stays RUNNING until its lease expires
            # and a worker takes it over from its checkpoint.
            log.exception("export_job_crashed", job_id=job.id)

    async def _parts(self, job: ExportJobRecord, lease: JobLeaseStore) -> tuple[RecordSource, ExportSink]:
        """The source and sink of a job's request."""
        request = job.request
        selection = selection_of(request)
        version = await self._catalogue.source_version(selection.dataset_version_id)
        source: RecordSource
        if selection.search is not None:
            source = SearchSource(
                self._search,
                selection.search,
                storage_connection=version.storage_connection,
                page_size=self._settings.search_page_size,
            )
        else:
            source = FileSelectionSource(
                self._catalogue, selection.file_ids, storage_connection=version.storage_connection
            )
        sink: ExportSink
        if request.WhichOneof("target") == "manifest":
            location = manifest_target_of(
                request.manifest,
                allowed_connections=self._policy.allowed_connections,
                allowed_buckets=self._policy.allowed_buckets,
            )
            selection_json = summary_selection(request)
            sink = ManifestSink(
                job=ManifestJob(job.id, version.dataset_id, version.dataset_version_id, selection_json),
                location=location,
                objects=self._objects,
                checkpoints=lease,
                part_size=self._settings.part_size,
            )
        else:
            target = logical_target_of(request.logical_dataset)
            sink = LogicalDatasetSink(
                LogicalVersionWriter(
                    self._pool,
                    lease,
                    dataset_name=target.name,
                    description=target.description,
                    append=target.append,
                )
            )
        return source, sink


def summary_selection(request: export_pb2.StartExportRequest) -> dict[str, Any]:
    """The selection as the summary object records it (a file selection by its size, not its ids)."""
    body = request_json(request)
    if "files" in body:
        files = body["files"]
        return {
            "files": {
                "dataset_version_id": files.get("dataset_version_id", ""),
                "file_count": len(request.files.file_ids),
            }
        }
    if "search" in body and request.search.image_bytes:
        # A query image would bloat the small summary: record which image it was instead.
        image = request.search.image_bytes
        body["search"].pop("image_bytes", None)
        body["search"]["image_sha256"] = hashlib.sha256(image).hexdigest()
        body["search"]["image_size"] = len(image)
    return {name: value for name, value in body.items() if name in {"search", "query"}}
