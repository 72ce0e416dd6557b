"""The consumer watchdog against the local broker, with a real FastStream batch subscriber.

The consumer is made to stop fetching (its partitions paused behind
FastStream's back), as the consumers of issue 10 stopped after a broker
restart: alive, in their group, silent. The watchdog must notice and restart
the subscriber, and every record must then be handled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import LogicSubscriber

from viewfinder_common.kafka import ConsumerWatchdog, build_broker
from viewfinder_common.settings import KafkaSettings
from viewfinder_common.testing.kafka import create_topics

pytestmark = [pytest.mark.stack, pytest.mark.slow]


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s")


async def test_a_consumer_that_stops_fetching_is_restarted_and_reads_everything(unique_name: str) -> None:
    settings = KafkaSettings()
    topic = f"{unique_name}.watchdog"
    await create_topics({topic: 2})
    broker = build_broker(settings, client_id=f"{unique_name}-watchdog")
    handled: list[bytes] = []

    @broker.subscriber(
        topic,
        batch=True,
        group_id=f"{unique_name}-group",
        max_records=10,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )
    async def on_records(message: KafkaMessage) -> None:
        raw = message.raw_message
        handled.extend(record.value or b"" for record in (raw if isinstance(raw, tuple) else (raw,)))

    first = [f"before-{n}".encode() for n in range(5)]
    later = [f"after-{n}".encode() for n in range(20)]
    await broker.start()
    watchdog_task: asyncio.Task[None] | None = None
    try:
        for value in first:
            await broker.publish(value, topic, key=value)
        await _until(lambda: len(handled) >= len(first), 60, "the first records are handled")
        (only,) = broker.subscribers
        subscriber = cast("LogicSubscriber[Any]", only)
        stuck = subscriber.consumer
        assert stuck is not None
        stuck.pause(*stuck.assignment())
        for value in later:
            await broker.publish(value, topic, key=value)
        await asyncio.sleep(2.0)
        assert len(handled) == len(first), "the paused consumer still fetched"

        watchdog = ConsumerWatchdog.for_broker(broker, stall_after_s=3.0, check_every_s=0.5)
        watchdog_task = asyncio.create_task(watchdog.run())
        await _until(
            lambda: set(first + later) <= set(handled), 60, "every record is handled after the restart"
        )

        assert watchdog.restarts == 1
        assert subscriber.consumer is not stuck
    finally:
        if watchdog_task is not None:
            watchdog_task.cancel()
            await asyncio.gather(watchdog_task, return_exceptions=True)
        await broker.stop()
