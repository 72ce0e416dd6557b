"""``make demo``: the main job end to end on the local stack, as far as it is built.

Runs against the servers ``make up`` started (addresses from .local/stack.env).
Each step says what it did; steps whose service is not built yet say so
instead of pretending.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
import uuid
from urllib.parse import unquote_plus

from aiokafka import AIOKafkaConsumer
from PIL import Image

from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import KafkaSettings, S3Settings

NOT_BUILT_YET = [
    "ingest (datasets, sync, file-discovered events)",
    "tagger (labeling against tag definitions)",
    "embedder (vectors into pgvector/Milvus)",
    "search (combined search and the DSL)",
    "exporter (manifests and logical dataset versions)",
]


async def _wait_for_notification(consumer: AIOKafkaConsumer, key: str, timeout_s: float) -> str | None:
    """The eventName of the first S3 event record for ``key``, or None after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=1000)
        for records in batch.values():
            for record in records:
                for rec in json.loads(record.value or b"{}").get("Records", []):
                    if unquote_plus(rec["s3"]["object"]["key"]) == key:
                        return str(rec["eventName"])
    return None


async def main() -> int:
    kafka = KafkaSettings()
    s3_settings = S3Settings()
    bucket = os.environ.get("VIEWFINDER_DEMO_BUCKET", "viewfinder-demo")
    key = f"demo/upload-{uuid.uuid4().hex[:8]}.png"

    consumer = AIOKafkaConsumer(
        kafka.topic_storage_events,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"demo-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
    )
    await consumer.start()
    try:
        # Wait for the group to own its partitions before the PUT, so the
        # notification cannot slip past a consumer that starts at "latest".
        while not consumer.assignment():  # noqa: ASYNC110 - aiokafka offers no assignment event
            await asyncio.sleep(0.2)
        for tp in consumer.assignment():
            await consumer.seek_to_end(tp)
        image = Image.new("RGB", (64, 48), (200, 30, 30))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        async with s3_client(s3_settings) as s3:
            await s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue(), ContentType="image/png")
        print(f"1. PUT s3://{bucket}/{key} ({len(buf.getvalue())} bytes) into the local S3 API server")
        started = time.monotonic()
        event_name = await _wait_for_notification(consumer, key, timeout_s=60)
        if event_name is None:
            print("2. no notification arrived within 60 s: check .local/logs/relay.log", file=sys.stderr)
            return 1
        print(
            f"2. bucket notification {event_name} for {key} arrived on Kafka topic "
            f"{kafka.topic_storage_events} after {time.monotonic() - started:.1f} s (S3 -> SQS -> relay -> Kafka)"
        )
    finally:
        await consumer.stop()
    print("\nNot built yet (the demo grows with them):")
    for item in NOT_BUILT_YET:
        print(f"  - {item}")
    print("\nThe stack keeps running; `make down` stops it.")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
