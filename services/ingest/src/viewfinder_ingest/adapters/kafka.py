"""FileDiscovered events and dead letters on the Kafka broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from faststream.kafka import KafkaBroker

from viewfinder.v1 import events_pb2
from viewfinder_common.events import encode_event, event_headers
from viewfinder_common.kafka import send_to_dead_letter
from viewfinder_common.timestamps import to_timestamp
from viewfinder_ingest.domain.models import ChangeType, DiscoveredChange
from viewfinder_ingest.domain.ports import DeadLetter

_CHANGE_TYPES = {
    ChangeType.UPSERT: events_pb2.CHANGE_TYPE_UPSERT,
    ChangeType.DELETE: events_pb2.CHANGE_TYPE_DELETE,
}
# Records handed to the producer before waiting for their acknowledgements;
# bounds memory while still filling produce requests.
_IN_FLIGHT = 2000


def to_file_discovered(change: DiscoveredChange, now: datetime | None = None) -> events_pb2.FileDiscovered:
    """The protobuf event for one change."""
    event = events_pb2.FileDiscovered(
        event_id=str(uuid.uuid4()),
        dataset_id=change.dataset_id,
        dataset_version_id=change.version_id,
        file_id=change.file_id,
        uri=f"s3://{change.bucket}/{change.key}",
        bucket=change.bucket,
        key=change.key,
        etag=change.etag,
        size=change.size,
        change_type=_CHANGE_TYPES[change.change_type],
        trace_id=change.trace_id,
        storage_connection=change.storage_connection,
        sync_job_id=change.sync_job_id,
    )
    event.event_time.FromDatetime(now or datetime.now(UTC))
    if change.last_modified is not None:
        event.last_modified.CopyFrom(to_timestamp(change.last_modified))
    info = change.info
    if info is not None and change.change_type is ChangeType.UPSERT:
        event.format = info.format or ""
        event.width = info.width or 0
        event.height = info.height or 0
        event.frames = info.frames or 0
        event.mode = info.mode or ""
    return event


class KafkaEventPublisher:
    """Publishes FileDiscovered events keyed by file id and waits for every acknowledgement.

    Records are handed to the producer without waiting one by one, so they
    share produce requests (the broker's linger), then all acknowledgements
    are awaited: a page or batch counts as published only when all are in.
    """

    def __init__(self, broker: KafkaBroker, topic: str) -> None:
        self._broker = broker
        self._topic = topic

    async def publish(self, changes: Sequence[DiscoveredChange]) -> None:
        """Publishes every change; raises if any was not acknowledged."""
        now = datetime.now(UTC)
        pending: list[Any] = []
        for change in changes:
            event = to_file_discovered(change, now)
            pending.append(
                await self._broker.publish(
                    encode_event(event),
                    self._topic,
                    key=change.file_id.encode(),
                    headers=event_headers(event),
                    no_confirm=True,
                )
            )
            if len(pending) >= _IN_FLIGHT:
                await asyncio.gather(*pending)
                pending.clear()
        if pending:
            await asyncio.gather(*pending)


class KafkaDeadLetterSink:
    """Sends unusable notifications to ``<storage-events topic>.dlq.<service>``."""

    def __init__(self, broker: KafkaBroker, *, service: str, source_topic: str) -> None:
        self._broker = broker
        self._service = service
        self._source_topic = source_topic

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Publishes each letter with its original bytes and the reason in headers."""
        for letter in letters:
            source = dict(letter.source)
            partition = source.pop("partition", None)
            offset = source.pop("offset", None)
            key = source.pop("key", None)
            await send_to_dead_letter(
                self._broker,
                service=self._service,
                source_topic=self._source_topic,
                value=letter.body,
                reason=letter.reason,
                error_type=letter.error_type,
                key=key.encode() if key else None,
                partition=int(partition) if partition is not None else None,
                offset=int(offset) if offset is not None else None,
                extra_headers={f"x-dlq-{name}": value for name, value in source.items()},
            )
