"""The file-discovered subscriber: a thin batch consumer around ``DiscoveredPipeline``.

Offsets are committed only after a batch's upserts and events are durable
(``AckPolicy.NACK_ON_ERROR``: a batch that raises is rewound and delivered
again, after a pause so an outage is not hammered).
"""

from __future__ import annotations

import asyncio

from faststream import AckPolicy
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from viewfinder_common.logging import get_logger
from viewfinder_embedder.domain.pipeline import DiscoveredPipeline, IncomingRecord

log = get_logger(__name__)


def file_discovered_router(
    pipeline: DiscoveredPipeline,
    *,
    topic: str,
    group_id: str,
    max_records: int,
    batch_timeout_ms: int,
    session_timeout_ms: int,
    heartbeat_interval_ms: int,
    retry_backoff_s: float,
) -> KafkaRouter:
    """A router with the batch subscriber of ``topic`` in consumer group ``group_id``."""
    router = KafkaRouter()

    @router.subscriber(
        topic,
        batch=True,
        group_id=group_id,
        max_records=max_records,
        batch_timeout_ms=batch_timeout_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
    )
    async def on_file_discovered(message: KafkaMessage) -> None:
        raw = message.raw_message
        consumed = raw if isinstance(raw, tuple) else (raw,)
        records = [
            IncomingRecord(value=r.value or b"", key=r.key, partition=r.partition, offset=r.offset)
            for r in consumed
        ]
        try:
            report = await pipeline.process(records)
        except Exception:
            log.exception("embed_batch_failed", records=len(records), retry_in_s=retry_backoff_s)
            await asyncio.sleep(retry_backoff_s)
            raise
        log.info(
            "embed_batch_done",
            records=len(records),
            embedded=report.embedded,
            skipped=report.skipped,
            deleted=report.deleted,
            dead_lettered=report.dead_lettered,
        )

    return router
