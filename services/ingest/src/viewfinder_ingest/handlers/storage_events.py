"""The ``viewfinder.storage-events`` subscriber: bucket notifications from Kafka, in batches.

A batch subscriber (one handler call per fetched batch) keeps the per-message
overhead small on this hot path. Unusable notifications are dead-lettered by
the processor and the batch is committed; an infrastructure failure (database,
broker, store down) raises, the batch is not committed and is redelivered
after a pause, and the processor's idempotence absorbs the repeats.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from viewfinder_common.logging import get_logger
from viewfinder_common.settings import KafkaSettings
from viewfinder_ingest.domain.notification_processor import NotificationInput, NotificationProcessor

log = get_logger(__name__)

# Pause before a failed batch is redelivered, so an outage is not a busy loop.
RETRY_PAUSE_S = 2.0


def _trace_id(headers: dict[str, Any]) -> str:
    """The trace id of a W3C ``traceparent`` header, or a new one."""
    parent = headers.get("traceparent", "")
    parts = parent.split("-") if isinstance(parent, str) else []
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    return uuid.uuid4().hex


def inputs_from_records(records: tuple[Any, ...]) -> list[NotificationInput]:
    """Notification inputs from raw Kafka records (bytes, key, position, trace id)."""
    inputs = []
    for record in records:
        headers = {name: value.decode(errors="replace") for name, value in (record.headers or ())}
        source = {"partition": str(record.partition), "offset": str(record.offset)}
        if record.key:
            source["key"] = record.key.decode(errors="replace")
        inputs.append(NotificationInput(body=record.value or b"", source=source, trace_id=_trace_id(headers)))
    return inputs


async def _raw_values(message: Any) -> list[bytes]:
    # The processor parses the JSON itself; FastStream must not decode it first.
    return [record.value or b"" for record in message.raw_message]


def storage_events_router(
    processor: NotificationProcessor, kafka: KafkaSettings, *, group_id: str, max_records: int
) -> KafkaRouter:
    """A router with the batch subscriber on the storage-events topic."""
    router = KafkaRouter()

    @router.subscriber(
        kafka.topic_storage_events,
        batch=True,
        max_records=max_records,
        group_id=group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        decoder=_raw_values,
    )
    async def on_storage_events(bodies: list[bytes], message: KafkaMessage) -> None:
        """Applies one batch of bucket notifications."""
        records = message.raw_message if isinstance(message.raw_message, tuple) else (message.raw_message,)
        try:
            outcome = await processor.process(inputs_from_records(records))
        except Exception:
            log.exception("storage_events_batch_failed", size=len(records))
            await asyncio.sleep(RETRY_PAUSE_S)
            raise
        log.info(
            "storage_events_applied",
            size=len(records),
            applied=outcome.applied,
            skipped=outcome.skipped,
            events=outcome.events,
            dead_lettered=len(outcome.dead_letters),
        )

    return router
