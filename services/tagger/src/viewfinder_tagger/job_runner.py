"""Runs label jobs: claims them from the catalogue, labels their files, keeps their counts.

Any replica may run any job: a worker claims the oldest PENDING job (or a
RUNNING one whose worker stopped heartbeating for ``lease_s``) with
``FOR UPDATE SKIP LOCKED``, and heartbeats by writing the job's counts every
``flush_interval_s``. The heartbeat also reads the cancel flag, so a cancel
reaches the worker within one interval (at once when it runs in the same
process).

Within a job, up to ``max_concurrency`` model calls are in flight; up to
twice as many files are in progress, so fetching images and storing results
overlap the calls. Cancelling stops new calls, lets the calls in flight
finish and be stored, then marks the job CANCELLED: every file is either
fully labeled (tags + run + event) or untouched, and a resumed run picks up
exactly the untouched ones (see ``domain.jobs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from viewfinder_common.errors import DomainError
from viewfinder_common.logging import get_logger, redact_text
from viewfinder_tagger.adapters.catalogue import Catalogue, FileRow, JobRecord
from viewfinder_tagger.adapters.events import TaggerEvents
from viewfinder_tagger.domain.definitions import TagDefinition
from viewfinder_tagger.domain.jobs import ItemFailure, JobState, LabelJobCounts, RunTally
from viewfinder_tagger.domain.models import LabelingFailed, LabelingModel, ModelUnavailable
from viewfinder_tagger.labeling import Labeler
from viewfinder_tagger.model_registry import ModelRegistry

log = get_logger(__name__)

_PAGE_SIZE = 256


@dataclass
class _JobControl:
    """Why a run stops early (at most one reason wins, by priority in ``_finish``)."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    lost_lease: bool = False
    shutting_down: bool = False
    fatal_error: str = ""


@dataclass(frozen=True)
class _JobRun:
    """Everything one run of one job shares between its file tasks."""

    job: JobRecord
    definition: TagDefinition
    model: LabelingModel
    model_slots: asyncio.Semaphore
    control: _JobControl
    tally: RunTally


@dataclass(frozen=True)
class RunnerSettings:
    """Timing and sizing of the job runner."""

    poll_interval_s: float = 2.0
    lease_s: float = 60.0
    flush_interval_s: float = 0.5
    max_parallel_jobs: int = 4
    recent_errors_kept: int = 20
    shutdown_grace_s: float = 5.0


class LabelJobRunner:
    """Claims and runs label jobs until cancelled (a background task of the service)."""

    def __init__(
        self,
        catalogue: Catalogue,
        labeler: Labeler,
        models: ModelRegistry,
        events: TaggerEvents,
        settings: RunnerSettings,
    ) -> None:
        self._catalogue = catalogue
        self._labeler = labeler
        self._models = models
        self._events = events
        self._settings = settings
        self.worker_id = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._controls: dict[str, _JobControl] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Look for pending jobs now (a job was started or resumed)."""
        self._wake.set()

    def cancel_local(self, job_id: str) -> None:
        """Stops a job this process runs without waiting for the next heartbeat."""
        control = self._controls.get(job_id)
        if control is not None:
            control.cancelled = True
            control.stop.set()

    async def run_forever(self) -> None:
        """Claims jobs while there is room; on cancellation hands running jobs back."""
        try:
            while True:
                try:
                    while len(self._controls) < self._settings.max_parallel_jobs:
                        job = await self._catalogue.claim_job(
                            worker_id=self.worker_id, lease_s=self._settings.lease_s
                        )
                        if job is None:
                            break
                        self._start(job)
                except Exception:
                    # The catalogue is unreachable for now; try again at the next poll.
                    log.exception("label_job_claim_failed")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval_s)
        finally:
            await self._shut_down()

    async def _shut_down(self) -> None:
        """Lets in-flight model calls finish for a grace period, then cancels; jobs go back to PENDING."""
        for control in self._controls.values():
            control.shutting_down = True
            control.stop.set()
        if not self._tasks:
            return
        _, still_running = await asyncio.wait(set(self._tasks), timeout=self._settings.shutdown_grace_s)
        for task in still_running:
            task.cancel()
        await asyncio.gather(*still_running, return_exceptions=True)

    def _start(self, job: JobRecord) -> None:
        control = _JobControl()
        self._controls[job.id] = control
        task = asyncio.create_task(self._run_guarded(job, control), name=f"label-job-{job.id}")
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            self._controls.pop(job.id, None)
            self._wake.set()

        task.add_done_callback(done)

    async def _run_guarded(self, job: JobRecord, control: _JobControl) -> None:
        try:
            await self._run(job, control)
        except Exception:
            # A bug or an outage (database gone): leave the job for the lease to expire.
            log.exception("label_job_crashed", job_id=job.id)

    async def _run(self, job: JobRecord, control: _JobControl) -> None:
        log.info(
            "label_job_started", job_id=job.id, mode=job.mode.value, resume_count=job.counts.resume_count
        )
        try:
            definition = await self._catalogue.get_definition(
                definition_id=job.params.definition_id, version=job.params.definition_version
            )
            # Fresh: a stored connection fixed since the last run (UpdateConnection) is used now.
            model = await self._models.get(job.params.model_connection, fresh=True)
        except DomainError as exc:
            await self._catalogue.finish_job(
                job.id, worker_id=self.worker_id, state=JobState.FAILED, counts=job.counts, error=str(exc)
            )
            return
        prices = self._models.prices(job.params.model_connection)
        scope = await self._catalogue.job_scope(job)
        base = job.counts.starting_run(total=scope.total, finished=scope.finished, skipped=scope.skipped)
        tally = RunTally()

        def current() -> LabelJobCounts:
            return tally.apply_to(base, prices, keep_errors=self._settings.recent_errors_kept)

        heartbeat = asyncio.create_task(self._heartbeat(job, control, current))
        try:
            await self._label_files(job, definition, model, control, tally)
        except asyncio.CancelledError:
            # Shutdown after the grace period: calls in flight were abandoned, their
            # files stay unlabeled; the next worker resumes the job at once.
            await self._catalogue.release_job(job.id, worker_id=self.worker_id, counts=current())
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await self._finish(job, control, current())

    async def _label_files(
        self,
        job: JobRecord,
        definition: TagDefinition,
        model: LabelingModel,
        control: _JobControl,
        tally: RunTally,
    ) -> None:
        concurrency = job.params.max_concurrency
        run = _JobRun(job, definition, model, asyncio.Semaphore(concurrency), control, tally)
        in_progress = asyncio.Semaphore(2 * concurrency)
        tasks: set[asyncio.Task[None]] = set()

        def done(finished: asyncio.Task[None]) -> None:
            tasks.discard(finished)
            in_progress.release()

        after_id: str | None = None
        try:
            while not control.stop.is_set():
                page = await self._catalogue.files_to_label(job, after_id=after_id, limit=_PAGE_SIZE)
                if not page:
                    break
                for file in page:
                    await in_progress.acquire()
                    if control.stop.is_set():
                        in_progress.release()
                        break
                    task = asyncio.create_task(self._label_one(run, file))
                    tasks.add(task)
                    task.add_done_callback(done)
                after_id = page[-1].id
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # only left over when this run itself is cancelled

    async def _label_one(self, run: _JobRun, file: FileRow) -> None:
        job, control, tally = run.job, run.control, run.tally
        try:
            result = await self._labeler.label(
                file,
                run.definition,
                run.model,
                model_slots=run.model_slots,
                stop=control.stop,
                label_job_id=job.id,
                trace_id=job.params.trace_id,
            )
        except LabelingFailed as exc:
            tally.failed += 1
            tally.retries += exc.retries
            tally.usage = tally.usage + exc.usage
            tally.failures.append(ItemFailure(file.id, file.uri, exc.reason, datetime.now(UTC)))
            log.warning("label_file_failed", job_id=job.id, file_id=file.id, reason=exc.reason)
            try:
                await self._events.dead_letter_file(
                    file,
                    reason=exc.reason,
                    error_type="LabelingFailed",
                    label_job_id=job.id,
                    trace_id=job.params.trace_id,
                )
            except Exception as dlq_error:
                self._fail(
                    control, f"could not dead-letter {file.uri}: {type(dlq_error).__name__}: {dlq_error}"
                )
            return
        except ModelUnavailable as exc:
            self._fail(control, str(exc))
            return
        except Exception as exc:
            log.exception("label_file_crashed", job_id=job.id, file_id=file.id)
            self._fail(control, f"internal error while labeling {file.uri}: {type(exc).__name__}: {exc}")
            return
        if result is None:
            return  # stopped before the model call: the file stays for a resumed run
        tally.labeled += 1
        tally.tags_written += len(result.validation.tags)
        tally.tags_dropped += result.validation.dropped_outside_definition
        tally.retries += result.answer.retries
        tally.usage = tally.usage + result.answer.usage

    @staticmethod
    def _fail(control: _JobControl, error: str) -> None:
        if not control.fatal_error:
            control.fatal_error = redact_text(error)
        control.stop.set()

    async def _heartbeat(
        self, job: JobRecord, control: _JobControl, current: Callable[[], LabelJobCounts]
    ) -> None:
        while True:
            try:
                ours, cancel = await self._catalogue.save_job_progress(
                    job.id, worker_id=self.worker_id, counts=current()
                )
            except Exception:
                # A missed heartbeat is harmless; only a lease that stays unrenewed moves the job.
                log.exception("label_job_heartbeat_failed", job_id=job.id)
                await asyncio.sleep(self._settings.flush_interval_s)
                continue
            if not ours:
                log.warning("label_job_lease_lost", job_id=job.id)
                control.lost_lease = True
                control.stop.set()
                return
            if cancel and not control.cancelled:
                control.cancelled = True
                control.stop.set()
            await asyncio.sleep(self._settings.flush_interval_s)

    async def _finish(self, job: JobRecord, control: _JobControl, counts: LabelJobCounts) -> None:
        if control.lost_lease:
            return  # another worker owns the job now
        if control.shutting_down and not control.cancelled and not control.fatal_error:
            await self._catalogue.release_job(job.id, worker_id=self.worker_id, counts=counts)
            log.info("label_job_released", job_id=job.id)
            return
        if control.fatal_error:
            state, error = JobState.FAILED, control.fatal_error
        elif control.cancelled:
            state, error = JobState.CANCELLED, ""
        else:
            state, error = JobState.SUCCEEDED, ""
        await self._catalogue.finish_job(
            job.id, worker_id=self.worker_id, state=state, counts=counts, error=error
        )
        log.info(
            "label_job_finished",
            job_id=job.id,
            state=state.value,
            labeled=counts.files_labeled,
            failed=counts.files_failed,
            skipped=counts.files_skipped,
            error=error,
        )
