"""The storage relay alone: SQS -> Kafka notifications per second, one loop against several.

The end-to-end benchmark (``run.py``) shows ingest cataloguing new uploads at
the pace the relay hands their notifications over. This isolates that stage:
``--messages`` S3-event notifications are queued on a fresh SQS queue of the
S3 API server, then ``StorageEventRelay`` moves them to a fresh topic of the
local broker, once with one receive-publish-delete loop (the baseline, as the
relay ran before) and once with ``--concurrency`` loops; both are timed until
the relay has published every message, then the topic is read back to check
that each one arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from viewfinder_common.s3 import s3_session
from viewfinder_common.settings import KafkaSettings, S3Settings
from viewfinder_common.storage_relay import StorageEventRelay
from viewfinder_common.testing.kafka import create_topics, read_topic


class _CountingRelay(StorageEventRelay):
    """The relay, noting when it has published ``target`` messages."""

    target: int = 0
    published: int = 0
    done: asyncio.Event | None = None

    async def publish(self, messages: list[dict[str, Any]]) -> int:
        count = await super().publish(messages)
        self.published += count
        if self.published >= self.target and self.done is not None:
            self.done.set()
        return count


def _event(key: str) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "bench"}, "object": {"key": key, "size": 1, "eTag": "x"}},
                }
            ]
        }
    )


async def relay_rate(sqs: object, messages: int, concurrency: int) -> float:
    """Messages/s of one relay run with ``concurrency`` loops over a fresh queue and topic."""
    run = uuid.uuid4().hex[:8]
    topic = f"bench-relay-{run}"
    await create_topics({topic: 3})
    client = sqs  # an aiobotocore SQS client
    queue_url: str = (await client.create_queue(QueueName=f"bench-relay-{run}"))["QueueUrl"]  # type: ignore[attr-defined]
    producer = AIOKafkaProducer(bootstrap_servers=KafkaSettings().bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        for first in range(0, messages, 10):
            entries = [
                {"Id": str(number), "MessageBody": _event(f"{run}/{number:06d}.png")}
                for number in range(first, min(first + 10, messages))
            ]
            await client.send_message_batch(QueueUrl=queue_url, Entries=entries)  # type: ignore[attr-defined]
        relay = StorageEventRelay(
            sqs=client,
            producer=producer,
            queue_url=queue_url,
            topic=topic,
            poll_wait_s=1,
            concurrency=concurrency,
        )
        stop = asyncio.Event()
        began = time.monotonic()
        running = asyncio.create_task(relay.run(stop))
        records = await read_topic(topic, messages, timeout_s=600)
        elapsed = time.monotonic() - began
        stop.set()
        await running
        if len({record.value for record in records}) != messages:
            raise SystemExit(f"expected {messages} distinct messages on {topic}, read {len(records)}")
        return messages / elapsed
    finally:
        await producer.stop()
        await client.delete_queue(QueueUrl=queue_url)  # type: ignore[attr-defined]


async def run(args: argparse.Namespace) -> int:
    s3 = S3Settings()
    async with s3_session(s3).client("sqs", endpoint_url=s3.endpoint_url) as sqs:
        print(
            f"storage relay benchmark: {args.messages} notifications from SQS (S3 API server) to the broker"
        )
        baseline = await relay_rate(sqs, args.messages, 1)
        print(f"  baseline, 1 loop: {baseline:.0f} notifications/s")
        concurrent = await relay_rate(sqs, args.messages, args.concurrency)
        print(f"  {args.concurrency} loops: {concurrent:.0f} notifications/s")
    print(f"  ratio {args.concurrency} loops / 1 loop: {concurrent / baseline:.2f}")
    return 0


def main() -> int:
    """Parses flags and runs the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=500, help="notifications queued per run")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="loops of the second run (the relay's default)"
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
