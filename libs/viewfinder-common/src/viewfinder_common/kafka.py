"""The FastStream Kafka broker factory, the dead-letter helper and the consumer watchdog.

Every service builds its broker here, so security, batching and client ids are
set one way. FastStream has no built-in retry: a message a handler cannot
process goes, explicitly, to ``<topic>.dlq.<service>`` with its original bytes
and the reason in headers (DESIGN §2), and the consumer moves on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from viewfinder_common.logging import get_logger, redact_text
from viewfinder_common.settings import KafkaSettings

log = get_logger(__name__)

# Dead-letter headers: what failed, where it came from, and why.
DLQ_REASON = "x-dlq-reason"
DLQ_ERROR_TYPE = "x-dlq-error-type"
DLQ_SOURCE_TOPIC = "x-dlq-source-topic"
DLQ_SOURCE_PARTITION = "x-dlq-source-partition"
DLQ_SOURCE_OFFSET = "x-dlq-source-offset"
DLQ_SERVICE = "x-dlq-service"
DLQ_FAILED_AT_MS = "x-dlq-failed-at-ms"

_SASL = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


def _security(settings: KafkaSettings) -> BaseSecurity | None:
    if settings.security_protocol == "PLAINTEXT":
        return None
    use_ssl = settings.security_protocol.endswith("SSL")
    if settings.security_protocol.startswith("SASL"):
        mechanism = (settings.sasl_mechanism or "PLAIN").upper()
        if mechanism not in _SASL:
            raise ValueError(f"unsupported Kafka SASL mechanism {mechanism!r}; use one of {sorted(_SASL)}")
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
        return _SASL[mechanism](settings.sasl_username or "", password, use_ssl=use_ssl)
    return BaseSecurity(use_ssl=True)


def build_broker(settings: KafkaSettings, client_id: str) -> KafkaBroker:
    """A FastStream Kafka broker for one service process.

    ``linger_ms`` lets concurrent publishes share a produce request (measured
    here: ~8x the rate of one-by-one awaited sends, DESIGN §9).
    """
    return KafkaBroker(
        settings.bootstrap_servers,
        client_id=client_id,
        security=_security(settings),
        acks="all",
        linger_ms=5,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )


def dead_letter_topic(topic: str, service: str) -> str:
    """``<topic>.dlq.<service>``: one dead-letter topic per consumer of a topic."""
    return f"{topic}.dlq.{service}"


async def send_to_dead_letter(
    broker: KafkaBroker,
    *,
    service: str,
    source_topic: str,
    value: bytes,
    reason: str,
    error_type: str,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> str:
    """Publishes the original bytes with the failure in headers; returns the DLQ topic.

    The reason is redacted, so a credential inside an exception text never
    reaches the topic.
    """
    topic = dead_letter_topic(source_topic, service)
    headers = {
        DLQ_REASON: redact_text(reason)[:4000],
        DLQ_ERROR_TYPE: error_type,
        DLQ_SOURCE_TOPIC: source_topic,
        DLQ_SERVICE: service,
        DLQ_FAILED_AT_MS: str(int(time.time() * 1000)),
    }
    if partition is not None:
        headers[DLQ_SOURCE_PARTITION] = str(partition)
    if offset is not None:
        headers[DLQ_SOURCE_OFFSET] = str(offset)
    if extra_headers:
        headers.update(extra_headers)
    await broker.publish(value, topic, key=key, headers=headers)
    log.warning(
        "dead_lettered",
        dlq_topic=topic,
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        error_type=error_type,
        reason=reason,
    )
    return topic


# --- consumer watchdog -------------------------------------------------------

# A consumer that knows it has records to read, or hears nothing from the
# broker, and has not moved for this long while no handler runs, is restarted
# (the default of KafkaSettings.consumer_stall_after_s).
# A healthy consumer with a backlog moves within one fetch (milliseconds), so
# the margin is generous; it only bounds how long a stuck consumer stays stuck.
STALL_AFTER_S = 60.0
CHECK_EVERY_S = 5.0
# aiokafka's stop (leave the group, close connections) is bounded by its
# request timeout (40 s); this bounds it again in case the coordinator is what hangs.
RESTART_STOP_TIMEOUT_S = 60.0
# How long one position lookup may wait: a partition whose position is being
# reset (committed offset lookup) answers when that finishes.
_POSITION_TIMEOUT_S = 1.0


class _Subscriber(Protocol):
    """The part of a FastStream Kafka subscriber the watchdog uses."""

    running: bool
    consumer: AIOKafkaConsumer | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class _Progress:
    """What a subscriber's consumer looked like when it last changed."""

    positions: dict[TopicPartition, int | None]
    since: float
    busy_since: float | None = None
    slow_reported: bool = False


@dataclass(frozen=True)
class StalledConsumer:
    """A consumer the watchdog found stuck: why, and its partitions' state."""

    group_id: str | None
    topics: tuple[str, ...]
    reason: str
    stalled_s: float
    partitions: tuple[str, ...]


class ConsumerWatchdog:
    """Restarts a subscriber whose Kafka consumer has work but makes no progress.

    Why it exists (issue 10): after a restart of the broker (tansu with its log
    on S3), consumers were seen to stay alive but neither fetch nor rejoin
    their group, in some runs only. Nothing raises in such a state, so neither
    aiokafka nor FastStream notices and the service silently stops working.
    Production consumers face broker restarts too, so the service must notice
    itself, whatever left the consumer stuck.

    Every ``check_every_s`` it looks at each subscriber's consumer through
    aiokafka's public state: the assigned partitions, each one's position, the
    high watermark the last fetch reported and when the last fetch answered.
    A consumer is stalled when none of its positions moved for
    ``stall_after_s`` while no message was being handled, and it either knows
    it is behind (a position below the high watermark, or no valid position at
    all) or has had no fetch answer for that long. A stalled subscriber is
    stopped and started again: a new consumer joins the group and resumes from
    the committed offsets. Delivery is at-least-once and handlers are
    idempotent, so records re-read after a restart change nothing.

    A handler that runs longer than ``stall_after_s`` is reported once, not
    interrupted: slow work (a remote model) is not a stuck consumer.
    """

    def __init__(
        self,
        subscribers: Callable[[], Sequence[Any]],
        *,
        stall_after_s: float = STALL_AFTER_S,
        check_every_s: float = CHECK_EVERY_S,
        stop_timeout_s: float = RESTART_STOP_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        self._subscribers = subscribers
        self.stall_after_s = stall_after_s
        self.check_every_s = check_every_s
        self._stop_timeout_s = stop_timeout_s
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._progress: dict[int, _Progress] = {}
        # Subscribers the watchdog stopped but could not start again yet.
        self._to_start: dict[int, _Subscriber] = {}
        self.restarts = 0

    @classmethod
    def for_broker(cls, broker: KafkaBroker, **options: Any) -> ConsumerWatchdog:
        """A watchdog over every subscriber of ``broker`` (routers included)."""
        return cls(lambda: broker.subscribers, **options)

    async def run(self) -> None:
        """Checks forever; cancel the task to stop it."""
        while True:
            await asyncio.sleep(self.check_every_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The watchdog must outlive whatever confused one round.
                log.exception("consumer_watchdog_check_failed")

    async def check(self) -> list[StalledConsumer]:
        """One round over all subscribers; returns the stalled ones it restarted."""
        restarted: list[StalledConsumer] = []
        for key, subscriber in list(self._to_start.items()):
            await self._start(key, subscriber)
        for item in self._subscribers():
            subscriber = cast(_Subscriber, item)
            key = id(subscriber)
            if key in self._to_start:
                continue
            stalled = await self._stalled(key, subscriber)
            if stalled is not None:
                await self._restart(key, subscriber, stalled)
                restarted.append(stalled)
        return restarted

    async def _stalled(self, key: int, subscriber: _Subscriber) -> StalledConsumer | None:
        consumer = subscriber.consumer
        if consumer is None or not subscriber.running:
            self._progress.pop(key, None)
            return None
        now = self._clock()
        try:
            assigned = sorted(consumer.assignment())
            positions = {tp: await _position(consumer, tp) for tp in assigned}
        except IllegalStateError:
            # The assignment changed while we looked: that is movement.
            self._progress.pop(key, None)
            return None
        progress = self._progress.get(key)
        if progress is None or progress.positions != positions:
            self._progress[key] = _Progress(positions=positions, since=now)
            return None
        if _handling(subscriber):
            # A handler runs: the positions move when it finishes.
            progress.busy_since = progress.busy_since or now
            progress.since = now
            if now - progress.busy_since >= self.stall_after_s and not progress.slow_reported:
                progress.slow_reported = True
                log.warning(
                    "consumer_handler_slow",
                    group_id=_group_id(subscriber),
                    topics=_topics(consumer),
                    running_s=round(now - progress.busy_since, 1),
                )
            return None
        progress.busy_since, progress.slow_reported = None, False
        stalled_s = now - progress.since
        if stalled_s < self.stall_after_s:
            return None
        return self._diagnose(subscriber, consumer, positions, stalled_s)

    def _diagnose(
        self,
        subscriber: _Subscriber,
        consumer: AIOKafkaConsumer,
        positions: dict[TopicPartition, int | None],
        stalled_s: float,
    ) -> StalledConsumer | None:
        """Whether a consumer that has not moved has work it is not doing."""
        behind, silent, states = [], [], []
        wall_ms = self._wall_clock_ms()
        for tp, position in positions.items():
            highwater = consumer.highwater(tp)
            fetched_ms = consumer.last_poll_timestamp(tp)
            fetched_s_ago = None if fetched_ms is None else round((wall_ms - fetched_ms) / 1000, 1)
            states.append(
                f"{tp.topic}[{tp.partition}] position={position} highwater={highwater} "
                f"last_fetch_s_ago={fetched_s_ago}"
            )
            if position is None or (highwater is not None and position < highwater):
                behind.append(tp)
            if fetched_s_ago is None or fetched_s_ago >= self.stall_after_s:
                silent.append(tp)
        if behind:
            reason = f"behind on {len(behind)} partition(s) without moving"
        elif silent:
            reason = f"no fetch answer for {len(silent)} partition(s)"
        else:
            return None
        return StalledConsumer(
            group_id=_group_id(subscriber),
            topics=_topics(consumer),
            reason=reason,
            stalled_s=round(stalled_s, 1),
            partitions=tuple(states),
        )

    async def _restart(self, key: int, subscriber: _Subscriber, stalled: StalledConsumer) -> None:
        self.restarts += 1
        log.warning(
            "consumer_stalled_restarting",
            group_id=stalled.group_id,
            topics=list(stalled.topics),
            reason=stalled.reason,
            stalled_s=stalled.stalled_s,
            partitions=list(stalled.partitions),
        )
        self._progress.pop(key, None)
        try:
            await asyncio.wait_for(subscriber.stop(), timeout=self._stop_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Start anyway: a new consumer replaces the one that would not stop.
            log.exception("consumer_stop_failed", group_id=stalled.group_id)
        await self._start(key, subscriber)

    async def _start(self, key: int, subscriber: _Subscriber) -> None:
        try:
            await subscriber.start()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # E.g. the broker is still down: tried again next round (one line a round, no trace).
            log.warning("consumer_start_failed", group_id=_group_id(subscriber), error=repr(error))
            self._to_start[key] = subscriber
            return
        self._to_start.pop(key, None)
        log.info("consumer_restarted", group_id=_group_id(subscriber))


async def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The partition's position, or None while it has no valid one (being reset)."""
    try:
        position: int = await asyncio.wait_for(consumer.position(tp), timeout=_POSITION_TIMEOUT_S)
    except TimeoutError:
        return None
    return position


def _handling(subscriber: _Subscriber) -> bool:
    """Whether the subscriber is handling a message now.

    FastStream holds the subscriber's ``lock`` from receiving a message until
    it is acknowledged (the same lock graceful shutdown waits on).
    """
    lock = getattr(subscriber, "lock", None)
    return bool(getattr(lock, "qsize", 0))


def _group_id(subscriber: _Subscriber) -> str | None:
    group: str | None = getattr(subscriber, "group_id", None)
    return group


def _topics(consumer: AIOKafkaConsumer) -> tuple[str, ...]:
    return tuple(sorted(consumer.subscription()))
