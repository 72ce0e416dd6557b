"""Label jobs: their parameters, counts, cost estimate and what a resumed run still has to do.

A label job is a row in the shared ``jobs`` table (kind ``label``): its
parameters in ``params``, its counts in ``counts``. Which files a job has
finished is never kept in the job itself but read from ``file_label_runs``:
a file is finished by this job when its run for the job's definition version
is at least as recent as the job's creation and has the file's current ETag.
So a cancelled, failed or crashed job resumes exactly where it stopped, and a
resumed job never calls the model again for a finished file.

Per run, the counts of finished and skipped files are recomputed from the
catalogue (so they survive a crash between flushes); token usage, cost, tags
written and retries accumulate over runs, because nothing else records them.
Failed files are retried by a resumed run, so ``files_failed`` restarts at 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from viewfinder_common.errors import InvalidArgument
from viewfinder_tagger.domain.models import TokenUsage

JOB_KIND_LABEL = "label"
DEFAULT_MAX_CONCURRENCY = 5
MAX_MAX_CONCURRENCY = 256


class JobMode(StrEnum):
    """FULL relabels every file; INCREMENTAL only files without a current run."""

    FULL = "full"
    INCREMENTAL = "incremental"


class JobState(StrEnum):
    """States stored in ``jobs.state``; CANCELLING is ``running`` with ``cancel_requested``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """No worker will touch the job again unless it is resumed."""
        return self in {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


@dataclass(frozen=True)
class Prices:
    """What a model connection charges per million tokens; currency empty when unknown."""

    prompt_per_million: float = 0.0
    completion_per_million: float = 0.0
    currency: str = ""

    def cost(self, usage: TokenUsage) -> float:
        """Estimated amount for ``usage``; 0 without prices."""
        if not self.currency:
            return 0.0
        return (
            usage.prompt_tokens * self.prompt_per_million
            + usage.completion_tokens * self.completion_per_million
        ) / 1_000_000


@dataclass(frozen=True)
class JobParams:
    """What a label job was asked to do (``jobs.params``)."""

    definition_id: str
    definition_version: int
    model_connection: str
    max_concurrency: int
    trace_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The ``jobs.params`` column."""
        return {
            "tag_definition_id": self.definition_id,
            "tag_definition_version": self.definition_version,
            "model_connection": self.model_connection,
            "max_concurrency": self.max_concurrency,
            "trace_id": self.trace_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobParams:
        """Inverse of ``to_json``."""
        return cls(
            definition_id=str(data["tag_definition_id"]),
            definition_version=int(data["tag_definition_version"]),
            model_connection=str(data["model_connection"]),
            max_concurrency=int(data.get("max_concurrency", DEFAULT_MAX_CONCURRENCY)),
            trace_id=str(data.get("trace_id", "")),
        )


@dataclass(frozen=True)
class ItemFailure:
    """One file that failed, for Job.recent_errors."""

    file_id: str
    uri: str
    reason: str
    occurred_at: datetime

    def to_json(self) -> dict[str, Any]:
        """One entry of ``counts.recent_errors``."""
        return {
            "file_id": self.file_id,
            "uri": self.uri,
            "reason": self.reason,
            "occurred_at": self.occurred_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemFailure:
        """Inverse of ``to_json``."""
        return cls(
            str(data["file_id"]),
            str(data["uri"]),
            str(data["reason"]),
            datetime.fromisoformat(data["occurred_at"]),
        )


@dataclass(frozen=True)
class LabelJobCounts:
    """Counts of a label job (``jobs.counts``)."""

    total_items: int = 0
    files_labeled: int = 0
    files_failed: int = 0
    files_skipped: int = 0
    tags_written: int = 0
    tags_dropped: int = 0
    retries: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost_amount: float = 0.0
    currency: str = ""
    resume_count: int = 0
    recent_errors: tuple[ItemFailure, ...] = field(default=())

    @property
    def processed_items(self) -> int:
        """Files finished so far, whatever the outcome."""
        return self.files_labeled + self.files_failed + self.files_skipped

    @property
    def progress(self) -> float:
        """Fraction done in [0, 1] (``jobs.progress``)."""
        if self.total_items <= 0:
            return 0.0
        return min(1.0, self.processed_items / self.total_items)

    def to_json(self) -> dict[str, Any]:
        """The ``jobs.counts`` column."""
        return {
            "total_items": self.total_items,
            "files_labeled": self.files_labeled,
            "files_failed": self.files_failed,
            "files_skipped": self.files_skipped,
            "tags_written": self.tags_written,
            "tags_dropped": self.tags_dropped,
            "retries": self.retries,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total_tokens,
            "cost_amount": self.cost_amount,
            "currency": self.currency,
            "resume_count": self.resume_count,
            "recent_errors": [e.to_json() for e in self.recent_errors],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelJobCounts:
        """Inverse of ``to_json``; missing keys are zero."""
        return cls(
            total_items=int(data.get("total_items", 0)),
            files_labeled=int(data.get("files_labeled", 0)),
            files_failed=int(data.get("files_failed", 0)),
            files_skipped=int(data.get("files_skipped", 0)),
            tags_written=int(data.get("tags_written", 0)),
            tags_dropped=int(data.get("tags_dropped", 0)),
            retries=int(data.get("retries", 0)),
            usage=TokenUsage(
                int(data.get("prompt_tokens", 0)),
                int(data.get("completion_tokens", 0)),
                int(data.get("total_tokens", 0)),
            ),
            cost_amount=float(data.get("cost_amount", 0.0)),
            currency=str(data.get("currency", "")),
            resume_count=int(data.get("resume_count", 0)),
            recent_errors=tuple(ItemFailure.from_json(e) for e in data.get("recent_errors", ())),
        )

    def starting_run(self, *, total: int, finished: int, skipped: int) -> LabelJobCounts:
        """Counts at the start of a (re)run, with finished/skipped recomputed from the catalogue."""
        return replace(self, total_items=total, files_labeled=finished, files_skipped=skipped, files_failed=0)


@dataclass
class RunTally:
    """What one run adds to a job's counts, mutated by the workers as files finish."""

    labeled: int = 0
    failed: int = 0
    tags_written: int = 0
    tags_dropped: int = 0
    retries: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    failures: list[ItemFailure] = field(default_factory=list)

    def apply_to(self, counts: LabelJobCounts, prices: Prices, *, keep_errors: int) -> LabelJobCounts:
        """``counts`` (as the run started) plus everything this run did so far."""
        usage = counts.usage + self.usage
        errors = (*reversed(self.failures), *counts.recent_errors)[:keep_errors]
        return replace(
            counts,
            files_labeled=counts.files_labeled + self.labeled,
            files_failed=counts.files_failed + self.failed,
            tags_written=counts.tags_written + self.tags_written,
            tags_dropped=counts.tags_dropped + self.tags_dropped,
            retries=counts.retries + self.retries,
            usage=usage,
            cost_amount=counts.cost_amount + prices.cost(self.usage),
            currency=prices.currency or counts.currency,
            recent_errors=errors,
        )


def resolve_max_concurrency(requested: int) -> int:
    """0 means the default (5); otherwise 1 to 256 (INVALID_ARGUMENT outside)."""
    if requested == 0:
        return DEFAULT_MAX_CONCURRENCY
    if not 1 <= requested <= MAX_MAX_CONCURRENCY:
        raise InvalidArgument(f"max_concurrency must be between 1 and {MAX_MAX_CONCURRENCY}; got {requested}")
    return requested
