"""Jobs of the four job-running services seen the same way: fetch, cancel, resume, watch."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from google.protobuf import message
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from viewfinder.v1 import common_pb2, dataset_pb2, embedding_pb2, export_pb2, labeling_pb2
from viewfinder_cli.connections import Connections
from viewfinder_cli.output import enum_text, timestamp_text

TERMINAL_STATES = frozenset(
    {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
)

ServiceJob = dataset_pb2.SyncJob | labeling_pb2.LabelJob | embedding_pb2.IndexJob | export_pb2.ExportJob


class JobService(enum.StrEnum):
    """Which service runs a job; job ids are only unique within one service."""

    SYNC = "sync"
    LABEL = "label"
    INDEX = "index"
    EXPORT = "export"


@dataclass(frozen=True)
class JobSnapshot:
    """A job as one service reported it at one moment."""

    service: JobService
    detail: ServiceJob

    @property
    def job(self) -> common_pb2.Job:
        """The part every job kind shares: state, progress, errors."""
        return self.detail.job

    @property
    def state_name(self) -> str:
        """The state in lower case, e.g. "running"."""
        return enum_text(self.job.state, common_pb2.JobState, "JOB_STATE_")

    @property
    def terminal(self) -> bool:
        """True once the job SUCCEEDED, FAILED or was CANCELLED."""
        return self.job.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """True when the job SUCCEEDED."""
        return self.job.state == common_pb2.JOB_STATE_SUCCEEDED

    def counts_text(self) -> str:
        """The kind-specific counts, e.g. "listed 10, added 8, ..."."""
        counts: message.Message = self.detail.counts
        parts = [
            f"{field.name.replace('_', ' ')} {getattr(counts, field.name)}"
            for field in counts.DESCRIPTOR.fields
        ]
        if isinstance(self.detail, labeling_pb2.LabelJob):
            parts.append(f"tokens {self.detail.token_usage.total_tokens}")
            cost = self.detail.cost_estimate
            if cost.currency:
                parts.append(f"cost {cost.amount:.4f} {cost.currency}")
        return ", ".join(parts)

    def outputs(self) -> list[tuple[str, str]]:
        """What the job produced or used that a person wants to see (index name, manifest ...)."""
        detail = self.detail
        if isinstance(detail, export_pb2.ExportJob):
            pairs = [
                ("manifest", detail.manifest_uri),
                ("manifest sha256", detail.manifest_sha256),
                ("summary", detail.summary_uri),
                ("logical dataset version", detail.logical_dataset_version_id),
            ]
        elif isinstance(detail, embedding_pb2.IndexJob):
            pairs = [
                ("index", detail.index_name),
                ("model", f"{detail.model.id} {detail.model.version}".strip()),
            ]
        elif isinstance(detail, labeling_pb2.LabelJob):
            pairs = [
                ("tag definition", f"{detail.tag_definition_id} v{detail.tag_definition_version}"),
                ("model connection", detail.model_connection),
            ]
        else:
            pairs = []
        return [(key, value) for key, value in pairs if value]


def fetch_job(connections: Connections, service: JobService, job_id: str) -> JobSnapshot:
    """The job as its service reports it now."""
    detail: ServiceJob
    match service:
        case JobService.SYNC:
            ingest = connections.datasets()
            detail = ingest.call(ingest.stub.GetJob, dataset_pb2.GetJobRequest(job_id=job_id)).job
        case JobService.LABEL:
            tagger = connections.labeling()
            detail = tagger.call(tagger.stub.GetLabelJob, labeling_pb2.GetLabelJobRequest(job_id=job_id)).job
        case JobService.INDEX:
            embedder = connections.embedding()
            detail = embedder.call(
                embedder.stub.GetIndexJob, embedding_pb2.GetIndexJobRequest(job_id=job_id)
            ).job
        case JobService.EXPORT:
            exporter = connections.export()
            detail = exporter.call(exporter.stub.GetExport, export_pb2.GetExportRequest(job_id=job_id)).job
    return JobSnapshot(service, detail)


def cancel_job(connections: Connections, service: JobService, job_id: str) -> JobSnapshot:
    """Requests cancellation; the job is CANCELLING or already terminal afterwards."""
    detail: ServiceJob
    match service:
        case JobService.SYNC:
            ingest = connections.datasets()
            detail = ingest.call(ingest.stub.CancelJob, dataset_pb2.CancelJobRequest(job_id=job_id)).job
        case JobService.LABEL:
            tagger = connections.labeling()
            detail = tagger.call(
                tagger.stub.CancelLabelJob, labeling_pb2.CancelLabelJobRequest(job_id=job_id)
            ).job
        case JobService.INDEX:
            embedder = connections.embedding()
            detail = embedder.call(
                embedder.stub.CancelIndexJob, embedding_pb2.CancelIndexJobRequest(job_id=job_id)
            ).job
        case JobService.EXPORT:
            exporter = connections.export()
            detail = exporter.call(
                exporter.stub.CancelExport, export_pb2.CancelExportRequest(job_id=job_id)
            ).job
    return JobSnapshot(service, detail)


def resume_job(connections: Connections, service: JobService, job_id: str) -> JobSnapshot:
    """Resumes a FAILED or CANCELLED job from where it stopped."""
    detail: ServiceJob
    match service:
        case JobService.SYNC:
            ingest = connections.datasets()
            detail = ingest.call(ingest.stub.ResumeJob, dataset_pb2.ResumeJobRequest(job_id=job_id)).job
        case JobService.LABEL:
            tagger = connections.labeling()
            detail = tagger.call(
                tagger.stub.ResumeLabelJob, labeling_pb2.ResumeLabelJobRequest(job_id=job_id)
            ).job
        case JobService.INDEX:
            embedder = connections.embedding()
            detail = embedder.call(
                embedder.stub.ResumeIndexJob, embedding_pb2.ResumeIndexJobRequest(job_id=job_id)
            ).job
        case JobService.EXPORT:
            exporter = connections.export()
            detail = exporter.call(
                exporter.stub.ResumeExport, export_pb2.ResumeExportRequest(job_id=job_id)
            ).job
    return JobSnapshot(service, detail)


def watch_job(
    fetch: Callable[[], JobSnapshot],
    *,
    poll_interval_s: float,
    on_update: Callable[[JobSnapshot], None],
    sleep: Callable[[float], None] = time.sleep,
) -> JobSnapshot:
    """Fetches the job until it reaches a terminal state, reporting every snapshot; returns the last."""
    while True:
        snapshot = fetch()
        on_update(snapshot)
        if snapshot.terminal:
            return snapshot
        sleep(poll_interval_s)


class JobProgressDisplay:
    """A live progress bar of one job (on stderr, so that stdout stays clean)."""

    def __init__(self, console: Console, title: str) -> None:
        self._title = title
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> Self:
        self._progress.__enter__()
        self._task = self._progress.add_task(self._title, total=None, state="pending")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, traceback)

    def update(self, snapshot: JobSnapshot) -> None:
        """Moves the bar to the snapshot's progress (indeterminate while the total is unknown)."""
        assert self._task is not None, "use JobProgressDisplay as a context manager"
        progress = snapshot.job.progress
        self._progress.update(
            self._task,
            total=progress.total_items or None,
            completed=progress.processed_items,
            state=snapshot.state_name,
        )


def job_summary(snapshot: JobSnapshot) -> Table:
    """The job's state, progress, counts, outputs and recent errors."""
    job = snapshot.job
    progress = job.progress
    table = Table(
        title=Text(f"{snapshot.service.value} job {job.id}: {snapshot.state_name}"),
        show_header=False,
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("mode", enum_text(job.mode, common_pb2.JobMode, "JOB_MODE_"))
    if job.dataset_id:
        table.add_row("dataset", job.dataset_id)
    if job.dataset_version_id:
        table.add_row("dataset version", job.dataset_version_id)
    table.add_row(
        "progress",
        f"{progress.processed_items}/{progress.total_items or '?'} processed: "
        f"{progress.succeeded_items} succeeded, {progress.failed_items} failed, {progress.skipped_items} skipped",
    )
    table.add_row("counts", snapshot.counts_text())
    for key, value in snapshot.outputs():
        table.add_row(key, Text(value))
    table.add_row("started", timestamp_text(job.start_time, present=job.HasField("start_time")))
    table.add_row("ended", timestamp_text(job.end_time, present=job.HasField("end_time")))
    if job.resume_count:
        table.add_row("resumed", f"{job.resume_count} time(s)")
    if job.error:
        table.add_row("error", Text(job.error, style="red"))
    for item_error in job.recent_errors:
        table.add_row("item error", Text(f"{item_error.uri or item_error.file_id}: {item_error.reason}"))
    return table
