"""Label job counts, cost estimate and concurrency limits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from viewfinder_common.errors import InvalidArgument
from viewfinder_tagger.domain.jobs import (
    ItemFailure,
    JobParams,
    LabelJobCounts,
    Prices,
    RunTally,
    resolve_max_concurrency,
)
from viewfinder_tagger.domain.models import TokenUsage


def test_counts_and_params_round_trip_through_json() -> None:
    counts = LabelJobCounts(
        total_items=10,
        files_labeled=4,
        files_failed=1,
        files_skipped=2,
        tags_written=9,
        tags_dropped=3,
        retries=5,
        usage=TokenUsage(100, 20, 120),
        cost_amount=0.5,
        currency="CNY",
        resume_count=1,
        recent_errors=(ItemFailure("f", "s3://b/k", "bad", datetime.now(UTC)),),
    )
    assert LabelJobCounts.from_json(counts.to_json()) == counts
    assert counts.processed_items == 7
    assert counts.progress == pytest.approx(0.7)
    params = JobParams("d", 2, "qwen", 8, "trace")
    assert JobParams.from_json(params.to_json()) == params


def test_a_run_adds_its_tally_and_estimates_the_cost() -> None:
    prices = Prices(prompt_per_million=3.0, completion_per_million=9.0, currency="CNY")
    base = LabelJobCounts(files_labeled=5, usage=TokenUsage(1000, 100, 1100), cost_amount=0.1, currency="CNY")
    base = base.starting_run(total=20, finished=6, skipped=4)
    assert (base.total_items, base.files_labeled, base.files_skipped, base.files_failed) == (20, 6, 4, 0)
    tally = RunTally(
        labeled=3,
        failed=1,
        tags_written=7,
        tags_dropped=2,
        retries=4,
        usage=TokenUsage(2_000_000, 100_000, 2_100_000),
    )
    tally.failures.append(ItemFailure("f1", "s3://b/1", "first", datetime.now(UTC)))
    tally.failures.append(ItemFailure("f2", "s3://b/2", "second", datetime.now(UTC)))
    counts = tally.apply_to(base, prices, keep_errors=1)
    assert counts.files_labeled == 9
    assert counts.files_failed == 1
    assert counts.usage == TokenUsage(2_001_000, 100_100, 2_101_100)
    assert counts.cost_amount == pytest.approx(0.1 + 2 * 3.0 + 0.1 * 9.0)
    assert [e.reason for e in counts.recent_errors] == ["second"]  # newest first, bounded
    assert Prices().cost(TokenUsage(10, 10, 20)) == 0.0


def test_max_concurrency_defaults_to_5_and_is_bounded() -> None:
    assert resolve_max_concurrency(0) == 5
    assert resolve_max_concurrency(256) == 256
    for bad in (-1, 257):
        with pytest.raises(InvalidArgument, match="between 1 and 256"):
            resolve_max_concurrency(bad)
