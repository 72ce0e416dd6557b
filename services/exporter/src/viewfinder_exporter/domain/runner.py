"""One run of one export job: read the selection page by page, write it, keep the checkpoint.

The run only talks to three ports, so the same logic serves manifests and
logical datasets and is unit-tested with in-memory fakes:

* a ``RecordSource`` yields pages of records from a cursor (SearchService
  pages, or an explicit list of file ids);
* an ``ExportSink`` takes each page (``write``), decides when what it holds is
  durable (``commit`` returns the checkpoint it stored, or None while it only
  buffers), and produces the outputs at the end (``finish``);
* a ``JobLease`` reports progress (its heartbeat also says whether a cancel
  was requested) and records the final state, as long as this worker still
  holds the job.

A run stops after any page when cancellation is requested; the job then
reports the counts of its last durable checkpoint, which is where a resumed
run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from viewfinder_common.errors import DomainError
from viewfinder_common.logging import get_logger, redact_text
from viewfinder_exporter.domain.jobs import (
    ExportCheckpoint,
    ExportCounts,
    ExportOutputs,
    ExportPhase,
    JobState,
)
from viewfinder_exporter.domain.records import ExportRecord

log = get_logger(__name__)


class LeaseLost(Exception):
    """Another worker holds the job now (this one stalled past the lease); stop without writing."""


@dataclass(frozen=True)
class SourcePage:
    """One page of the selection."""

    records: Sequence[ExportRecord]
    # Selected files left out (e.g. no longer active).
    skipped: int
    # Where the next page starts; "" after the last page.
    next_cursor: str


class RecordSource(Protocol):
    """The selected files, page by page."""

    def pages(self, cursor: str) -> AsyncGenerator[SourcePage, None]:
        """Pages from ``cursor`` ("" = the beginning) to the end."""


class ExportSink(Protocol):
    """Where records go."""

    @property
    def bytes_written(self) -> int:
        """Bytes written so far, including what is buffered."""

    async def open(self, checkpoint: ExportCheckpoint) -> ExportCheckpoint:
        """Prepares to go on from ``checkpoint``; returns the (possibly extended, stored) checkpoint."""

    async def write(self, records: Sequence[ExportRecord]) -> None:
        """Takes one page."""

    async def commit(self, state: ExportCheckpoint) -> ExportCheckpoint | None:
        """Makes everything written so far durable if it is time to; returns the stored checkpoint."""

    async def finish(self, state: ExportCheckpoint) -> ExportOutputs:
        """Makes the rest durable and publishes the result."""


class JobLease(Protocol):
    """The job as this worker holds it. Every method raises ``LeaseLost`` once another worker holds it."""

    async def heartbeat(self, counts: ExportCounts) -> bool:
        """Reports progress; True when cancellation was requested."""

    async def succeed(self, outputs: ExportOutputs, counts: ExportCounts) -> None:
        """Marks the job SUCCEEDED with its outputs."""

    async def fail(self, reason: str, counts: ExportCounts) -> None:
        """Marks the job FAILED with a reason a user can act on."""

    async def cancelled(self, counts: ExportCounts) -> None:
        """Marks the job CANCELLED."""

    async def release(self, counts: ExportCounts) -> None:
        """Hands the job back (PENDING) so that another worker goes on at once (shutdown)."""


def failure_reason(error: Exception) -> str:
    """What a FAILED job says: the domain error's words, never internals or credentials."""
    if isinstance(error, DomainError):
        return redact_text(str(error))
    return f"internal error ({type(error).__name__}); the exporter's log has the details"


async def run_export(
    *,
    job_id: str,
    total_items: int,
    checkpoint: ExportCheckpoint,
    source: RecordSource,
    sink: ExportSink,
    lease: JobLease,
) -> JobState | None:
    """Runs the job to SUCCEEDED, FAILED or CANCELLED; None when the lease was lost."""
    durable = checkpoint
    try:
        durable = await sink.open(checkpoint)
        running = durable
        if durable.phase is ExportPhase.WRITING and not durable.source_done:
            # Closing the pages at once also stops a search call already in flight for the next page.
            async with contextlib.aclosing(source.pages(durable.cursor)) as pages:
                async for page in pages:
                    await sink.write(page.records)
                    running = running.after_page(
                        records=len(page.records),
                        skipped=page.skipped,
                        bytes_written=sink.bytes_written,
                        cursor=page.next_cursor,
                    )
                    stored = await sink.commit(running)
                    if stored is not None:
                        durable = running = stored
                    if await lease.heartbeat(ExportCounts.of(running, total_items)):
                        await lease.cancelled(ExportCounts.of(durable, total_items))
                        log.info("export_cancelled", job_id=job_id, records_kept=durable.records_written)
                        return JobState.CANCELLED
        outputs = await sink.finish(running)
        await lease.succeed(outputs, ExportCounts.of(running, total_items))
        log.info("export_succeeded", job_id=job_id, records=running.records_written)
        return JobState.SUCCEEDED
    except LeaseLost:
        log.warning("export_lease_lost", job_id=job_id)
        return None
    except asyncio.CancelledError:
        await asyncio.shield(lease.release(ExportCounts.of(durable, total_items)))
        raise
    except Exception as error:
        if not isinstance(error, DomainError):
            log.exception("export_crashed", job_id=job_id)
        reason = failure_reason(error)
        try:
            await lease.fail(reason, ExportCounts.of(durable, total_items))
        except LeaseLost:
            return None
        log.warning("export_failed", job_id=job_id, reason=reason)
        return JobState.FAILED
