"""Automatic labeling from file-discovered (consumer group on the real broker) for datasets set to automatic."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from viewfinder.v1 import events_pb2
from viewfinder_common.events import decode_event, encode_event, event_headers
from viewfinder_common.settings import KafkaSettings
from viewfinder_common.testing.fake_vlm import FakeVLMServer


def _discovered(seeded: Any, file_id: str, etag: str, change: int) -> events_pb2.FileDiscovered:
    key, data, _ = seeded.files[file_id]
    return events_pb2.FileDiscovered(
        event_id=uuid.uuid4().hex,
        dataset_id=seeded.dataset_id,
        dataset_version_id=seeded.version_id,
        file_id=file_id,
        uri=f"s3://{seeded.bucket}/{key}",
        bucket=seeded.bucket,
        key=key,
        etag=etag,
        size=len(data) if change == events_pb2.CHANGE_TYPE_UPSERT else 0,
        change_type=change,  # type: ignore[arg-type]
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )


async def _wait_for(records_needed: int, topic: str, helpers: Any, timeout_s: float = 90.0) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    records: list[Any] = []
    while time.monotonic() < deadline:
        records = await helpers.read_topic(topic, records_needed, timeout_s=5)
        if len(records) >= records_needed:
            return records
    return records


async def test_new_files_of_automatic_datasets_are_labeled_once_and_deletes_clear_tags(
    start_tagger: Any, seeder: Any, fake_vlm: FakeVLMServer, api_key: str, helpers: Any, db_pool: Any
) -> None:
    automatic = await seeder.version(["red", "green", "blue"])
    manual = await seeder.version(["yellow"])
    etags = {str(r["id"]): r["etag"] for r in await db_pool.fetch("SELECT id, etag FROM files")}
    connection = helpers.vlm_connection(fake_vlm.base_url, api_key)
    async with start_tagger(
        connections={"qwen": connection}, default_connection="qwen", auto_labeling=True
    ) as tagger:
        definition = (
            await tagger.stub.CreateTagDefinition(helpers.definition_request("colours"), timeout=5)
        ).tag_definition
        await db_pool.execute(
            "INSERT INTO dataset_labeling_settings (dataset_id, automatic, definition_id) VALUES ($1, true, $2)",
            uuid.UUID(automatic.dataset_id),
            uuid.UUID(definition.id),
        )
        await db_pool.execute(
            "INSERT INTO dataset_labeling_settings (dataset_id, automatic, definition_id) VALUES ($1, false, $2)",
            uuid.UUID(manual.dataset_id),
            uuid.UUID(definition.id),
        )
        topic = tagger.settings.kafka.topic_file_discovered
        producer = AIOKafkaProducer(bootstrap_servers=KafkaSettings().bootstrap_servers, acks="all")
        await producer.start()
        try:

            async def send(value: bytes, key: str, headers: dict[str, str] | None = None) -> None:
                await producer.send_and_wait(
                    topic,
                    value,
                    key=key.encode(),
                    headers=[(k, v.encode()) for k, v in (headers or {}).items()],
                )

            upserts = [
                _discovered(automatic, fid, etags[fid], events_pb2.CHANGE_TYPE_UPSERT)
                for fid in automatic.files
            ]
            for event in upserts:
                await send(encode_event(event), event.file_id, event_headers(event))
            await send(encode_event(upserts[0]), upserts[0].file_id)  # a redelivery
            [manual_id] = manual.files
            manual_event = _discovered(manual, manual_id, etags[manual_id], events_pb2.CHANGE_TYPE_UPSERT)
            await send(encode_event(manual_event), manual_id)
            await send(b'{"file_id": "not protobuf"}', "garbage")

            tagged = await _wait_for(3, tagger.settings.kafka.topic_file_tagged, helpers)
            assert sorted(r.key.decode() for r in tagged) == sorted(automatic.files)
            first_event = decode_event(events_pb2.FileTagged, tagged[0].value)
            assert first_event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
            assert first_event.label_job_id == ""
            # Each image of the automatic dataset went to the model once; the manual one never.
            assert fake_vlm.calls_per_image() == {
                hashlib.sha256(data).hexdigest(): 1 for _, data, _ in automatic.files.values()
            }
            dead = await _wait_for(1, tagger.dlq_topic, helpers)
            assert [r.value for r in dead] == [b'{"file_id": "not protobuf"}']
            headers = {k: v.decode() for k, v in dead[0].headers}
            assert headers["x-dlq-error-type"] == "MalformedEvent"
            assert "viewfinder.v1.FileDiscovered" in headers["x-dlq-reason"]
            assert headers["x-dlq-source-topic"] == topic

            # The file is deleted: its AI tags go, and the change is announced.
            gone = upserts[0].file_id
            assert (
                await db_pool.fetchval("SELECT count(*) FROM file_tags WHERE file_id = $1", uuid.UUID(gone))
                == 2
            )
            await send(encode_event(_discovered(automatic, gone, "", events_pb2.CHANGE_TYPE_DELETE)), gone)
            tagged = await _wait_for(4, tagger.settings.kafka.topic_file_tagged, helpers)
            deletes = [
                e
                for e in (decode_event(events_pb2.FileTagged, r.value) for r in tagged)
                if e.change_type == events_pb2.CHANGE_TYPE_DELETE
            ]
            assert [e.file_id for e in deletes] == [gone]
            assert list(deletes[0].tags) == []
            assert (
                await db_pool.fetchval("SELECT count(*) FROM file_tags WHERE file_id = $1", uuid.UUID(gone))
                == 0
            )

            # Once the group has committed everything, the manual dataset's event was seen and ignored.
            await _wait_until_consumed(topic, tagger.settings.consumer_group)
            assert hashlib.sha256(manual.files[manual_id][1]).hexdigest() not in fake_vlm.calls_per_image(
                status=None
            )
            assert (
                await db_pool.fetchval(
                    "SELECT count(*) FROM file_tags WHERE file_id = $1", uuid.UUID(manual_id)
                )
                == 0
            )
        finally:
            await producer.stop()


async def _wait_until_consumed(topic: str, group: str, timeout_s: float = 60.0) -> None:
    """Waits until ``group`` has committed the end offset of every partition of ``topic``."""
    bootstrap = KafkaSettings().bootstrap_servers
    # Reads the group's commits (OffsetFetch) without joining it: nothing is subscribed.
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or set())]
        ends = await reader.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {tp: await reader.committed(tp) for tp in partitions}
            if all((committed[tp] or 0) >= ends[tp] for tp in partitions):
                return
            assert time.monotonic() < deadline, f"group {group} did not commit {ends}: {committed}"
            await asyncio.sleep(0.2)
    finally:
        await reader.stop()
