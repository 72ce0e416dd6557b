"""Broker helpers for tests against the local stack: free ports, topics, reading a topic back."""

from __future__ import annotations

import socket
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from viewfinder_common.settings import KafkaSettings


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def create_topics(topics: dict[str, int]) -> None:
    """Creates topics (name -> partitions) on the stack's broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KafkaSettings().bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=p, replication_factor=1) for t, p in topics.items()]
        )
    finally:
        await admin.close()


async def read_topic(topic: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    """At least ``count`` records of ``topic`` from its beginning (fewer if the time runs out), then a short drain."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KafkaSettings().bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
            if len(records) >= count:
                # Anything beyond the expected count would show up now.
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
                break
        return records
    finally:
        await consumer.stop()
