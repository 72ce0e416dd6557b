"""The relay against the local stack: an SQS queue on the S3 API server and the local broker."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import AIOKafkaProducer

from viewfinder_common.s3 import s3_session
from viewfinder_common.settings import KafkaSettings, S3Settings
from viewfinder_common.storage_relay import StorageEventRelay, record_key
from viewfinder_common.testing.kafka import create_topics, read_topic

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def _event(bucket: str, key: str) -> str:
    return json.dumps(
        {
            "Records": [
                {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
            ]
        }
    )


async def test_concurrent_loops_relay_every_message_once_and_empty_the_queue(unique_name: str) -> None:
    topic = f"{unique_name}.storage-events"
    await create_topics({topic: 3})
    bodies = {_event("bucket", f"{unique_name}/{number:03d}.png") for number in range(47)}
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "bucket"})
    s3 = S3Settings()
    producer = AIOKafkaProducer(bootstrap_servers=KafkaSettings().bootstrap_servers, acks="all", linger_ms=5)
    async with s3_session(s3).client("sqs", endpoint_url=s3.endpoint_url) as sqs:
        queue_url: str = (await sqs.create_queue(QueueName=f"{unique_name}-events"))["QueueUrl"]
        try:
            for body in [test_event, *sorted(bodies)]:
                await sqs.send_message(QueueUrl=queue_url, MessageBody=body)
            await producer.start()
            relay = StorageEventRelay(
                sqs=sqs, producer=producer, queue_url=queue_url, topic=topic, poll_wait_s=1, concurrency=4
            )
            stop = asyncio.Event()
            running = asyncio.create_task(relay.run(stop))
            try:
                records = await read_topic(topic, len(bodies), timeout_s=60)
            finally:
                stop.set()
                await asyncio.wait_for(running, timeout=30)
            attributes = (
                await sqs.get_queue_attributes(
                    QueueUrl=queue_url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )
            )["Attributes"]
        finally:
            await producer.stop()
            await sqs.delete_queue(QueueUrl=queue_url)

    relayed = [record.value.decode() for record in records]
    assert sorted(relayed) == sorted(bodies), "every notification once, and not the S3 test event"
    assert all(record.key == record_key(record.value.decode()) for record in records)
    assert attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
