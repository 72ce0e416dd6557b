"""Kafka subscribers of ``viewfinder.file-discovered`` and ``viewfinder.file-embedded``
(consumer group ``viewfinder-tagger``).

Batch subscribers (DESIGN §9: one-message-per-call costs ~115 µs a message)
that hand the raw records to the AutoLabeler, which decides per dataset which
of the two topics drives its labeling. Offsets are committed after a batch is
handled; a batch that raises (database or broker down) is rewound and
redelivered.
"""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from viewfinder_tagger.auto_labeling import AutoLabeler, ConsumedRecord
from viewfinder_tagger.config import TaggerSettings


def build_file_discovered_router(settings: TaggerSettings, auto_labeler: AutoLabeler) -> KafkaRouter:
    """The router with the file-discovered subscriber."""
    return _file_event_router(
        settings, auto_labeler, settings.kafka.topic_file_discovered, file_embedded=False
    )


def build_file_embedded_router(settings: TaggerSettings, auto_labeler: AutoLabeler) -> KafkaRouter:
    """The router with the file-embedded subscriber."""
    return _file_event_router(settings, auto_labeler, settings.kafka.topic_file_embedded, file_embedded=True)


def _file_event_router(
    settings: TaggerSettings, auto_labeler: AutoLabeler, topic: str, *, file_embedded: bool
) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(
        topic,
        group_id=settings.consumer_group,
        batch=True,
        max_records=settings.auto_batch_max_records,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
    )
    async def on_file_event(body: Any, message: KafkaMessage) -> None:
        # The body is ignored: the raw records keep key, partition and offset for the DLQ,
        # and FastStream's decoding would turn JSON-looking garbage into dicts.
        raw = message.raw_message
        records = raw if isinstance(raw, tuple) else (raw,)
        await auto_labeler.handle_batch(
            [ConsumedRecord(r.value or b"", r.key, r.partition, r.offset) for r in records],
            file_embedded=file_embedded,
        )

    return router
