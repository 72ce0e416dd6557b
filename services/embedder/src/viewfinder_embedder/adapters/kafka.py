"""Publishing the embedder's events: FileEmbedded and dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from faststream.kafka import KafkaBroker

from viewfinder.v1 import events_pb2
from viewfinder_common.events import encode_event, event_headers
from viewfinder_common.kafka import send_to_dead_letter
from viewfinder_embedder.domain.ports import DeadLetter

# Produce requests in flight before their acknowledgements are awaited.
_IN_FLIGHT = 1000


class KafkaEventSink:
    """``EventSink`` over the service's broker.

    FileEmbedded records are handed to the producer without waiting one by
    one (they share produce requests through the broker's linger), then all
    acknowledgements are awaited: the batch is published only when all are in.
    """

    def __init__(self, broker: KafkaBroker, *, service: str, embedded_topic: str, source_topic: str) -> None:
        self._broker = broker
        self._service = service
        self._embedded_topic = embedded_topic
        self._source_topic = source_topic

    async def publish_embedded(self, events: Sequence[events_pb2.FileEmbedded]) -> None:
        """Publishes every event keyed by file id; raises if any was not acknowledged."""
        pending: list[Any] = []
        for event in events:
            pending.append(
                await self._broker.publish(
                    encode_event(event),
                    self._embedded_topic,
                    key=event.file_id.encode(),
                    headers=event_headers(event),
                    no_confirm=True,
                )
            )
            if len(pending) >= _IN_FLIGHT:
                await asyncio.gather(*pending)
                pending.clear()
        if pending:
            await asyncio.gather(*pending)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Sends each record to ``<file-discovered>.dlq.<service>`` with its reason."""
        for letter in letters:
            await send_to_dead_letter(
                self._broker,
                service=self._service,
                source_topic=self._source_topic,
                value=letter.value,
                reason=letter.reason,
                error_type=letter.error_type,
                key=letter.key,
                partition=letter.partition,
                offset=letter.offset,
                extra_headers=dict(letter.headers) or None,
            )
