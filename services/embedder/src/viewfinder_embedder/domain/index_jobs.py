"""Index jobs: (re)embedding the ACTIVE files of a dataset version into one index.

* FULL embeds every file; INCREMENTAL skips files whose vectors in the index
  were computed from the same ETag with the same model version, and removes
  the vectors of files that are no longer active in the version.
* Files are processed in pages ordered by file id. After each page (vectors
  upserted and recorded, FileEmbedded events published) the job's counts and
  a checkpoint (the page's last file id) are saved, so a resumed job goes on
  after the last finished page and never re-embeds it; a cancelled job stops
  after its current page.
* A job that activates its index on success (a switch of the dataset's
  indexing connections) succeeds and activates in one step, refused if a
  cancel came in first. A failed or cancelled build's index becomes FAILED
  (the pipeline stops writing new files to it) and the active index stays.
* One worker runs one job at a time; workers of several replicas claim
  pending jobs with ``FOR UPDATE SKIP LOCKED``, and a running job whose worker
  stopped reporting is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from viewfinder.v1 import events_pb2
from viewfinder_common.errors import DomainError
from viewfinder_common.logging import get_logger, redact_text
from viewfinder_common.timestamps import to_timestamp
from viewfinder_common.vectorstore import VectorRow, VectorStore
from viewfinder_embedder.domain.file_embedder import FileEmbedder, ImageSource
from viewfinder_embedder.domain.indexes import IndexDirectory
from viewfinder_embedder.domain.model import EmbeddingModel
from viewfinder_embedder.domain.pipeline import UPSERT, EventSink, file_embedded_event
from viewfinder_embedder.domain.ports import EmbeddedFile, IndexRecord, IndexState

log = get_logger(__name__)

# Item failures kept on a job (newest first).
RECENT_ERRORS = 20


class JobState(enum.Enum):
    """States as stored in ``jobs.state`` (CANCELLING is RUNNING + cancel requested)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobMode(enum.Enum):
    """FULL or INCREMENTAL (``jobs.mode``)."""

    FULL = "full"
    INCREMENTAL = "incremental"


@dataclass(frozen=True)
class ItemFailure:
    """One file that failed in a job."""

    file_id: str
    uri: str
    reason: str
    occur_time: datetime


@dataclass(frozen=True)
class JobCounts:
    """Counters of an index job."""

    total: int = 0
    embedded: int = 0
    deleted: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def processed(self) -> int:
        """Files finished so far, whatever their outcome."""
        return self.embedded + self.failed + self.skipped

    def plus(self, *, embedded: int = 0, deleted: int = 0, failed: int = 0, skipped: int = 0) -> JobCounts:
        """These counts with more added."""
        return replace(
            self,
            embedded=self.embedded + embedded,
            deleted=self.deleted + deleted,
            failed=self.failed + failed,
            skipped=self.skipped + skipped,
        )


@dataclass(frozen=True)
class IndexJob:
    """An index job as stored."""

    id: str
    mode: JobMode
    state: JobState
    dataset_id: str
    dataset_version_id: str
    index_name: str
    model_connection: str
    model_id: str
    model_version: str
    max_concurrency: int
    activate_on_success: bool
    counts: JobCounts = JobCounts()
    cancel_requested: bool = False
    error: str = ""
    recent_errors: Sequence[ItemFailure] = ()
    # Last file id of the last finished page ("" before the first page).
    after_file_id: str = ""
    resume_count: int = 0
    create_time: datetime | None = None
    start_time: datetime | None = None
    update_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class VersionFile:
    """An ACTIVE file of a dataset version, as an index job reads it."""

    file_id: str
    bucket: str
    key: str
    uri: str
    etag: str
    size: int
    last_modified: datetime | None


@dataclass
class PageOutcome:
    """What one page did."""

    counts: JobCounts = field(default_factory=JobCounts)
    failures: list[ItemFailure] = field(default_factory=list)


class IndexJobStore(Protocol):
    """The jobs table (kind 'index') and the file listing index jobs need."""

    async def create(self, job: IndexJob) -> IndexJob:
        """Inserts a PENDING job."""

    async def get(self, job_id: str) -> IndexJob | None:
        """A job by id."""

    async def active_job_for_index(self, index_name: str) -> IndexJob | None:
        """A pending or running job writing to the index."""

    async def claim_next(self, stale_after_s: float) -> IndexJob | None:
        """Marks the oldest pending (or stale running) job RUNNING and returns it."""

    async def save_progress(
        self, job_id: str, counts: JobCounts, failures: Sequence[ItemFailure], after_file_id: str
    ) -> bool:
        """Stores counts, new failures and the checkpoint; returns whether cancellation was requested."""

    async def finish(self, job_id: str, state: JobState, error: str = "") -> None:
        """Moves a job to a terminal state."""

    async def requeue(self, job_id: str) -> None:
        """RUNNING → PENDING, for a worker that stops before the job is done."""

    async def succeed_and_activate(self, job_id: str, index_name: str) -> bool:
        """At once, unless cancellation was requested: job SUCCEEDED and the index its dataset's active one.

        Returns False (and changes nothing) when cancellation was requested, so
        a switch cancelled at the last moment never becomes active.
        """

    async def request_cancel(self, job_id: str) -> IndexJob | None:
        """PENDING → CANCELLED; RUNNING → cancel requested; terminal: unchanged."""

    async def resume(self, job_id: str, *, rescan: bool = False) -> IndexJob | None:
        """FAILED/CANCELLED → PENDING (checkpoint kept); other states: unchanged.

        ``rescan`` starts the job over in INCREMENTAL mode (checkpoint and
        counts cleared): files already current in the index are skipped.
        """

    async def activation_jobs(self, dataset_id: str) -> list[IndexJob]:
        """The dataset's pending or running jobs that activate their index on success."""

    async def count_active_files(self, dataset_version_id: str) -> int:
        """ACTIVE files of the version."""

    async def active_files_page(
        self, dataset_version_id: str, after_file_id: str, limit: int
    ) -> list[VersionFile]:
        """The next ACTIVE files of the version in file id order."""

    async def vanished_files(self, index_name: str, dataset_version_id: str) -> list[str]:
        """Files of the version with vectors in the index that are no longer ACTIVE."""


def _now() -> datetime:
    return datetime.now(UTC)


class IndexJobRunner:
    """Claims and runs index jobs, one at a time per process."""

    def __init__(
        self,
        jobs: IndexJobStore,
        directory: IndexDirectory,
        embedder: FileEmbedder,
        sink: EventSink,
        *,
        page_size: int,
        default_concurrency: int,
        poll_interval_s: float,
        stale_after_s: float,
    ) -> None:
        self._jobs = jobs
        self._directory = directory
        self._embedder = embedder
        self._sink = sink
        self._page_size = page_size
        self.default_concurrency = default_concurrency
        self._poll_interval_s = poll_interval_s
        self._stale_after_s = stale_after_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Tells the worker a job is waiting (so it need not wait for the next poll)."""
        self._wake.set()

    async def run_forever(self) -> None:
        """Runs jobs as they come until cancelled."""
        while True:
            try:
                ran = await self.run_next()
            except Exception:  # the worker must outlive a database hiccup
                log.exception("index_job_worker_error")
                ran = False
            if not ran:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    async def run_next(self) -> bool:
        """Claims and runs one job; returns whether there was one."""
        job = await self._jobs.claim_next(self._stale_after_s)
        if job is None:
            return False
        await self.run(job)
        return True

    async def run(self, job: IndexJob) -> None:
        """Runs a claimed job to a terminal state (or until cancelled)."""
        log.info("index_job_started", job_id=job.id, index=job.index_name, mode=job.mode.value)
        try:
            final = await self._run(job)
        except asyncio.CancelledError:
            # The process is stopping: hand the job back (it resumes from its checkpoint).
            await asyncio.shield(self._jobs.requeue(job.id))
            raise
        except DomainError as exc:
            await self._fail(job, str(exc))
            return
        except Exception as exc:
            log.exception("index_job_failed", job_id=job.id)
            await self._fail(job, f"{type(exc).__name__}: {exc}")
            return
        if final is JobState.SUCCEEDED and job.activate_on_success:
            # Activation and success are one step, refused if a cancel came in meanwhile.
            if not await self._jobs.succeed_and_activate(job.id, job.index_name):
                final = JobState.CANCELLED
                await self._jobs.finish(job.id, final)
        else:
            await self._jobs.finish(job.id, final)
            if final is JobState.SUCCEEDED:
                await self._directory.catalogue.set_index_state(job.index_name, IndexState.READY)
        if final is JobState.CANCELLED:
            await self._directory.abandon_build(job.index_name)
        log.info("index_job_finished", job_id=job.id, state=final.value)

    async def _fail(self, job: IndexJob, reason: str) -> None:
        self._directory.forget_ensured(job.index_name)  # a resumed job checks its table again
        await self._jobs.finish(job.id, JobState.FAILED, redact_text(reason)[:2000])
        await self._directory.abandon_build(job.index_name)

    async def _run(self, job: IndexJob) -> JobState:
        index = await self._directory.catalogue.get_index(job.index_name)
        if index is None:
            raise DomainError(f"index {job.index_name!r} no longer exists")
        model = await self._directory.model_for(index)
        store = await self._directory.store_for(index)
        counts = replace(job.counts, total=await self._jobs.count_active_files(job.dataset_version_id))
        if job.mode is JobMode.INCREMENTAL and not job.after_file_id:
            vanished = await self._jobs.vanished_files(index.name, job.dataset_version_id)
            if vanished:
                await store.delete(index.name, vanished)
                await self._directory.catalogue.forget(index.name, vanished)
                counts = counts.plus(deleted=len(vanished))
        after = job.after_file_id
        if await self._jobs.save_progress(job.id, counts, [], after):
            return JobState.CANCELLED
        while True:
            page = await self._jobs.active_files_page(job.dataset_version_id, after, self._page_size)
            if not page:
                return JobState.SUCCEEDED
            outcome = await self._page(job, index, model, store, page)
            counts = counts.plus(
                embedded=outcome.counts.embedded, failed=outcome.counts.failed, skipped=outcome.counts.skipped
            )
            after = page[-1].file_id
            if await self._jobs.save_progress(job.id, counts, outcome.failures, after):
                return JobState.CANCELLED

    async def _page(
        self,
        job: IndexJob,
        index: IndexRecord,
        model: EmbeddingModel,
        store: VectorStore,
        page: list[VersionFile],
    ) -> PageOutcome:
        outcome = PageOutcome()
        todo = page
        if job.mode is JobMode.INCREMENTAL:
            current = await self._directory.catalogue.current_vectors(index.name, [f.file_id for f in page])
            todo = []
            for file in page:
                known = current.get(file.file_id)
                if (
                    known is not None
                    and known.etag == file.etag
                    and known.model_version == index.model.version
                ):
                    outcome.counts = outcome.counts.plus(skipped=1)
                else:
                    todo.append(file)
        if not todo:
            return outcome
        results = await self._embedder.embed(
            model,
            [(file, ImageSource(file.bucket, file.key)) for file in todo],
            concurrency=job.max_concurrency,
        )
        now = _now()
        outcome.failures = [
            ItemFailure(file.file_id, file.uri, reason, now) for file, reason in results.failures
        ]
        outcome.counts = outcome.counts.plus(failed=len(results.failures))
        if results.vectors:
            rows = [
                VectorRow(
                    file_id=file.file_id, dataset_version_id=job.dataset_version_id, etag=file.etag, vectors=v
                )
                for file, v in results.vectors
            ]
            await store.upsert(index.name, rows)
            await self._directory.catalogue.record_embedded(
                index.name,
                [EmbeddedFile(row.file_id, row.dataset_version_id, row.etag) for row in rows],
                index.model.version,
                job.id,
            )
            await self._sink.publish_embedded(
                [
                    file_embedded_event(
                        _as_discovered(job, file),
                        file_id=file.file_id,
                        index=index,
                        change_type=UPSERT,
                        now=now,
                        job_id=job.id,
                    )
                    for file, _ in results.vectors
                ]
            )
            outcome.counts = outcome.counts.plus(embedded=len(rows))
        return outcome


def _as_discovered(job: IndexJob, file: VersionFile) -> events_pb2.FileDiscovered:
    event = events_pb2.FileDiscovered(
        dataset_id=job.dataset_id,
        dataset_version_id=job.dataset_version_id,
        file_id=file.file_id,
        uri=file.uri,
        bucket=file.bucket,
        key=file.key,
        etag=file.etag,
        size=file.size,
        change_type=UPSERT,
    )
    if file.last_modified is not None:
        event.last_modified.CopyFrom(to_timestamp(file.last_modified))
    return event
