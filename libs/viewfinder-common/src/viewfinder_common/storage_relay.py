"""Relay of bucket change notifications from an SQS queue to a Kafka topic.

On AWS (and on the local moto server) S3 publishes its event notifications to
SQS, not to Kafka. This process moves each notification, byte for byte, to the
topic that ingest consumes (``viewfinder.storage-events``), as one would run it
next to a real bucket. MinIO and OSS can publish to Kafka or a webhook
themselves and need no relay.

Delivery is at-least-once: an SQS message is deleted only after the broker has
acknowledged the record (``acks=all``). A crash in between redelivers the
message once its visibility timeout expires, and ingest is idempotent.

One receive returns at most 10 messages (SQS's limit) and each batch waits for
a receive, a produce and a delete round trip in turn, so one loop caps the
relay at a few dozen notifications a second. Several loops run side by side
(``concurrency``) and share one producer, whose ``linger_ms`` lets their
records share produce requests. SQS standard queues promise no order anyway;
ingest orders the events of one object itself.

Run it with ``python -m viewfinder_common.storage_relay``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from viewfinder_common.logging import configure_logging
from viewfinder_common.runtime import run_until_signalled
from viewfinder_common.s3 import s3_session
from viewfinder_common.settings import KafkaSettings, S3Settings

logger = logging.getLogger(__name__)

# Logged once the relay has reached both the queue and the broker; the local
# stack waits for this line before it reports the relay as up.
READY_MESSAGE = "storage relay ready"

# What S3 sends to a queue when a notification configuration is put on a
# bucket; it is not a change and must not reach ingest.
_TEST_EVENT = "s3:TestEvent"
# Pause after a failed SQS or Kafka call, so that an outage is not a busy loop.
_RETRY_PAUSE_S = 2.0


class RelaySettings(BaseSettings):
    """The relay's own configuration (env prefix ``VIEWFINDER_RELAY_``)."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_RELAY_", extra="ignore")

    queue_url: str
    topic: str = "viewfinder.storage-events"
    # SQS long polling: a receive waits up to this long for a message (20 is SQS's maximum).
    poll_wait_s: int = Field(default=10, ge=0, le=20)
    # Messages per receive (10 is SQS's maximum).
    batch_size: int = Field(default=10, ge=1, le=10)
    # Receive-publish-delete loops running side by side.
    concurrency: int = Field(default=4, ge=1, le=64)
    log_level: str = "INFO"
    log_json: bool = True


def is_test_event(body: str) -> bool:
    """Whether ``body`` is the ``s3:TestEvent`` S3 sends when notifications are configured."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("Event") == _TEST_EVENT


def record_key(body: str) -> bytes | None:
    """The Kafka key for an S3 event notification: ``bucket/key`` of its first record.

    Object keys arrive URL-encoded (``+`` for space); the Kafka key carries
    the decoded key, so that all events about one object share one partition
    whatever the encoding. None when the body is not an S3 event.
    """
    try:
        s3 = json.loads(body)["Records"][0]["s3"]
        bucket = s3["bucket"]["name"]
        key = s3["object"]["key"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(bucket, str) or not isinstance(key, str):
        return None
    return f"{bucket}/{unquote_plus(key)}".encode()


@dataclass
class StorageEventRelay:
    """Moves messages from one SQS queue to one Kafka topic, at least once."""

    sqs: Any  # an aiobotocore SQS client
    producer: AIOKafkaProducer
    queue_url: str
    topic: str
    poll_wait_s: int = 10
    batch_size: int = 10
    concurrency: int = 1

    async def relay_batch(self) -> int:
        """Receives one batch, publishes it and deletes what the broker acknowledged.

        Returns how many messages were published.
        """
        return await self.publish(await self.receive())

    async def receive(self) -> list[dict[str, Any]]:
        """Up to ``batch_size`` messages, waiting up to ``poll_wait_s`` for the first."""
        response = await self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.poll_wait_s,
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    async def publish(self, messages: list[dict[str, Any]]) -> int:
        """Publishes ``messages`` and deletes from the queue those the broker acknowledged.

        Returns how many messages were published.
        """
        done: list[dict[str, Any]] = []
        pending: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []
        for message in messages:
            body: str = message["Body"]
            if is_test_event(body):
                done.append(message)
                continue
            key = record_key(body)
            if key is None:
                # Still relayed: ingest decides what an unknown body is and
                # dead-letters it; dropping it here would hide it.
                logger.warning("SQS message %s is not an S3 event notification", message.get("MessageId"))
            # send() only queues the record, so the whole batch shares broker round trips.
            pending.append((message, await self.producer.send(self.topic, value=body.encode(), key=key)))
        published = 0
        for message, delivery in pending:
            try:
                await delivery
            except KafkaError:
                # Left in the queue: SQS hands it out again after its visibility timeout.
                logger.exception(
                    "publishing SQS message %s to %s failed; it stays queued",
                    message.get("MessageId"),
                    self.topic,
                )
                continue
            done.append(message)
            published += 1
        if done:
            await self._delete(done)
        return published

    async def _delete(self, messages: list[dict[str, Any]]) -> None:
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
        ]
        result = await self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        for failure in result.get("Failed", []):
            # The record is already on the topic; a redelivery is a duplicate that ingest absorbs.
            logger.warning(
                "could not delete a relayed SQS message (%s: %s); it will be relayed again",
                failure.get("Code"),
                failure.get("Message"),
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Relays with ``concurrency`` loops until ``stop`` is set; batches in flight are finished first."""
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.gather(*(self._relay_until(stopping) for _ in range(self.concurrency)))
        finally:
            stopping.cancel()

    async def _relay_until(self, stopping: asyncio.Task[bool]) -> None:
        while not stopping.done():
            receiving = asyncio.create_task(self.receive())
            # Only the long poll is interrupted: a batch that has been
            # received is published and deleted before stopping.
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
                await asyncio.gather(receiving, return_exceptions=True)
                break
            try:
                relayed = await self.publish(receiving.result())
            except (ClientError, BotoCoreError, KafkaError, OSError):
                logger.exception("relay batch from %s failed; retrying", self.queue_url)
                await asyncio.sleep(_RETRY_PAUSE_S)
                continue
            if relayed:
                logger.info("relayed %d storage events to %s", relayed, self.topic)


async def run_relay(
    settings: RelaySettings, kafka: KafkaSettings, sqs: S3Settings, stop: asyncio.Event
) -> None:
    """Connects to the queue and the broker, then relays until ``stop`` is set.

    SQS is reached with the same endpoint and keys as the bucket it serves.
    """
    session = s3_session(sqs)
    # linger_ms: the loops' records share produce requests (DESIGN §9).
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=5)
    async with session.client("sqs", endpoint_url=sqs.endpoint_url) as client:
        # Fails fast, with the service's own error, when the queue does not exist.
        await client.get_queue_attributes(QueueUrl=settings.queue_url, AttributeNames=["QueueArn"])
        await producer.start()
        try:
            logger.info("%s: %s -> %s", READY_MESSAGE, settings.queue_url, settings.topic)
            relay = StorageEventRelay(
                sqs=client,
                producer=producer,
                queue_url=settings.queue_url,
                topic=settings.topic,
                poll_wait_s=settings.poll_wait_s,
                batch_size=settings.batch_size,
                concurrency=settings.concurrency,
            )
            await relay.run(stop)
        finally:
            await producer.stop()
    logger.info("storage relay stopped")


async def _main(stop: asyncio.Event) -> None:
    settings = RelaySettings()
    configure_logging("relay", settings.log_level, settings.log_json)
    await run_relay(settings, KafkaSettings(), S3Settings(), stop)


if __name__ == "__main__":
    run_until_signalled(_main)
