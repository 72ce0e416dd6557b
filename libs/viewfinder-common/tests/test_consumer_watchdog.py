"""The consumer watchdog's decisions, on fake consumers with a fake clock (no I/O).

The same watchdog against a real broker and FastStream subscriber is in
``test_consumer_watchdog_stack.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from aiokafka import TopicPartition

from viewfinder_common.kafka import ConsumerWatchdog

TP0 = TopicPartition("viewfinder.file-discovered", 0)
TP1 = TopicPartition("viewfinder.file-discovered", 1)
STALL_S = 60.0


class Clock:
    """Monotonic seconds and wall-clock milliseconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> float:
        return self.now * 1000


@dataclass
class FakeConsumer:
    """The public aiokafka state the watchdog reads."""

    clock: Clock
    positions: dict[TopicPartition, int | None]
    highwaters: dict[TopicPartition, int | None]
    last_fetch: dict[TopicPartition, float | None] = field(default_factory=dict)

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self.positions)

    async def position(self, tp: TopicPartition) -> int:
        position = self.positions[tp]
        if position is None:
            raise TimeoutError  # what waiting for a reset looks like once the wait times out
        return position

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        fetched = self.last_fetch.get(tp, self.clock.now)
        return None if fetched is None else int(fetched * 1000)

    def subscription(self) -> frozenset[str]:
        return frozenset({TP0.topic})


class FakeLock:
    def __init__(self) -> None:
        self.qsize = 0


@dataclass
class FakeSubscriber:
    """A FastStream subscriber as the watchdog sees it; ``start`` builds a fresh consumer."""

    consumer: FakeConsumer | None
    running: bool = True
    group_id: str = "viewfinder-embedder"
    lock: FakeLock = field(default_factory=FakeLock)
    starts: int = 0
    stops: int = 0
    fail_starts: int = 0

    async def stop(self) -> None:
        self.stops += 1
        self.running = False
        self.consumer = None

    async def start(self) -> None:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise ConnectionError("broker not reachable")
        clock = Clock()
        self.consumer = FakeConsumer(clock, positions={TP0: 5}, highwaters={TP0: 9})
        self.running = True


def _watchdog(clock: Clock, *subscribers: FakeSubscriber) -> ConsumerWatchdog:
    return ConsumerWatchdog(
        lambda: subscribers,
        stall_after_s=STALL_S,
        check_every_s=5.0,
        clock=clock.monotonic,
        wall_clock_ms=clock.wall_ms,
    )


async def _check_for(watchdog: ConsumerWatchdog, clock: Clock, seconds: float) -> list[str]:
    """Runs the watchdog's rounds over ``seconds`` of fake time; the reasons of all restarts."""
    reasons: list[str] = []
    end = clock.now + seconds
    while clock.now < end:
        clock.now += watchdog.check_every_s
        reasons += [stalled.reason for stalled in await watchdog.check()]
    return reasons


async def test_a_consumer_behind_that_does_not_move_is_restarted_once_after_the_stall_time() -> None:
    clock = Clock()
    consumer = FakeConsumer(clock, positions={TP0: 40, TP1: 12}, highwaters={TP0: 55, TP1: 12})
    subscriber = FakeSubscriber(consumer)
    watchdog = _watchdog(clock, subscriber)

    assert await _check_for(watchdog, clock, STALL_S - 10) == []
    assert subscriber.stops == 0
    reasons = await _check_for(watchdog, clock, 15)

    assert reasons == ["behind on 1 partition(s) without moving"]
    assert (subscriber.stops, subscriber.starts) == (1, 1)
    assert subscriber.consumer is not consumer, "a new consumer replaces the stuck one"


async def test_a_consumer_that_moves_or_is_caught_up_is_left_alone() -> None:
    clock = Clock()
    moving = FakeConsumer(clock, positions={TP0: 0}, highwaters={TP0: 10_000})
    idle = FakeConsumer(clock, positions={TP0: 70, TP1: 3}, highwaters={TP0: 70, TP1: 3})
    subscribers = (FakeSubscriber(moving), FakeSubscriber(idle, group_id="viewfinder-tagger"))
    watchdog = _watchdog(clock, *subscribers)

    for _ in range(60):
        clock.now += watchdog.check_every_s
        moving.positions[TP0] = (moving.positions[TP0] or 0) + 1
        assert await watchdog.check() == []

    assert [s.stops for s in subscribers] == [0, 0]


async def test_a_consumer_that_hears_nothing_from_the_broker_is_restarted() -> None:
    clock = Clock()
    # Caught up as far as it knows, but its last fetch answer is old: the fetcher is stuck.
    consumer = FakeConsumer(clock, positions={TP0: 8}, highwaters={TP0: 8}, last_fetch={TP0: clock.now - 1})
    subscriber = FakeSubscriber(consumer)

    reasons = await _check_for(_watchdog(clock, subscriber), clock, STALL_S + 10)

    assert reasons == ["no fetch answer for 1 partition(s)"]
    assert subscriber.starts == 1


async def test_a_consumer_without_a_valid_position_for_the_stall_time_is_restarted() -> None:
    clock = Clock()
    consumer = FakeConsumer(clock, positions={TP0: None}, highwaters={TP0: None})
    subscriber = FakeSubscriber(consumer)

    reasons = await _check_for(_watchdog(clock, subscriber), clock, STALL_S + 10)

    assert reasons == ["behind on 1 partition(s) without moving"]


async def test_a_long_running_handler_is_reported_but_not_interrupted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    consumer = FakeConsumer(clock, positions={TP0: 40}, highwaters={TP0: 90}, last_fetch={TP0: clock.now})
    subscriber = FakeSubscriber(consumer)
    subscriber.lock.qsize = 1  # a batch is being handled (say, a slow remote model)
    watchdog = _watchdog(clock, subscriber)

    assert await _check_for(watchdog, clock, 3 * STALL_S) == []
    assert subscriber.stops == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("consumer_handler_slow") == 1

    # The handler finishes; the position does not move afterwards: now it is a stall.
    subscriber.lock.qsize = 0
    assert await _check_for(watchdog, clock, STALL_S - 10) == []
    assert await _check_for(watchdog, clock, 15) == ["behind on 1 partition(s) without moving"]


async def test_a_restart_that_cannot_start_is_retried_on_later_rounds() -> None:
    clock = Clock()
    consumer = FakeConsumer(clock, positions={TP0: 1}, highwaters={TP0: 2})
    subscriber = FakeSubscriber(consumer, fail_starts=2)
    watchdog = _watchdog(clock, subscriber)

    await _check_for(watchdog, clock, STALL_S + 5)
    assert (subscriber.stops, subscriber.starts, subscriber.consumer) == (1, 1, None)

    await _check_for(watchdog, clock, 2 * watchdog.check_every_s)

    assert subscriber.starts == 3
    assert subscriber.consumer is not None
    assert subscriber.running
    assert subscriber.stops == 1, "a subscriber being started again is not also judged"


async def test_a_stopped_subscriber_is_not_judged() -> None:
    clock = Clock()
    consumer = FakeConsumer(clock, positions={TP0: 1}, highwaters={TP0: 2})
    subscriber = FakeSubscriber(consumer, running=False)

    assert await _check_for(_watchdog(clock, subscriber), clock, 3 * STALL_S) == []
    assert subscriber.starts == 0
