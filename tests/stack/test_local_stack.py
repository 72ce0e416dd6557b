"""The local stack's servers do what the services rely on, checked over their real protocols.

Needs ``make up``. Group joins on tansu take 3-18 s, hence the generous timeouts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote_plus

import aioboto3
import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from pymilvus import DataType, MilvusClient

from .conftest import StackAddresses

pytestmark = pytest.mark.stack

GROUP_TIMEOUT_S = 60.0


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def _consume(consumer: AIOKafkaConsumer, count: int, timeout_s: float) -> list[Any]:
    """At least ``count`` records, or fewer when ``timeout_s`` runs out first."""
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for batch in batches.values():
            records.extend(batch)
    return records


def _group_consumer(stack: StackAddresses, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=group,
        # Only a missing commit falls back to the start; a resumed group must not.
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )


async def test_consumer_group_resumes_from_committed_offsets(stack: StackAddresses, unique_name: str) -> None:
    topic, group = unique_name, f"{unique_name}-group"
    await _create_topic(stack.kafka_bootstrap, topic, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        first = [f"first-{i}".encode() for i in range(30)]
        sent = [await producer.send_and_wait(topic, value, key=value) for value in first]
        assert {meta.partition for meta in sent} == {0, 1, 2}, "keys should spread over all 3 partitions"

        consumer = _group_consumer(stack, topic, group)
        await consumer.start()
        try:
            records = await _consume(consumer, len(first), GROUP_TIMEOUT_S)
            assert sorted(r.value for r in records) == sorted(first)
            await consumer.commit()
            for partition in range(3):
                tp = TopicPartition(topic, partition)
                assert await consumer.committed(tp) == await consumer.position(tp)
        finally:
            await consumer.stop()

        second = [f"second-{i}".encode() for i in range(20)]
        for value in second:
            await producer.send_and_wait(topic, value, key=value)
    finally:
        await producer.stop()

    resumed = _group_consumer(stack, topic, group)
    await resumed.start()
    try:
        records = await _consume(resumed, len(second), GROUP_TIMEOUT_S)
        # A little longer: anything from the first round would show up now.
        records += await _consume(resumed, 1, 2.0)
    finally:
        await resumed.stop()
    assert sorted(r.value for r in records) == sorted(second)


async def test_faststream_group_round_trip_resumes(stack: StackAddresses, unique_name: str) -> None:
    topic, group = unique_name, f"{unique_name}-group"
    await _create_topic(stack.kafka_bootstrap, topic, partitions=3)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def make_broker() -> KafkaBroker:
        broker = KafkaBroker(stack.kafka_bootstrap)

        @broker.subscriber(
            topic,
            group_id=group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,  # commit after the handler returns
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        async def on_message(body: dict[str, Any]) -> None:
            await received.put(body)

        return broker

    broker = make_broker()
    await broker.start()
    try:
        await broker.publish({"n": 1}, topic=topic, key=b"a")
        assert await asyncio.wait_for(received.get(), GROUP_TIMEOUT_S) == {"n": 1}
    finally:
        await broker.stop()

    broker = make_broker()
    await broker.start()
    try:
        await broker.publish({"n": 2}, topic=topic, key=b"a")
        # The group committed {"n": 1}, so the restarted subscriber sees only {"n": 2}.
        assert await asyncio.wait_for(received.get(), GROUP_TIMEOUT_S) == {"n": 2}
        await asyncio.sleep(1.0)
        assert received.empty()
    finally:
        await broker.stop()


def _aioboto3_session(stack: StackAddresses) -> aioboto3.Session:
    return aioboto3.Session(
        aws_access_key_id=stack.s3_access_key_id,
        aws_secret_access_key=stack.s3_secret_access_key,
        region_name=stack.s3_region,
    )


async def test_s3_put_list_get(stack: StackAddresses, unique_name: str) -> None:
    # Its own bucket: objects in the demo bucket become storage events.
    bucket = unique_name.replace("_", "-")
    async with _aioboto3_session(stack).client("s3", endpoint_url=stack.s3_endpoint_url) as s3:
        await s3.create_bucket(Bucket=bucket)
        try:
            bodies = {f"images/{i:02d}.jpg": f"body {i}".encode() for i in range(12)}
            bodies["other/x.jpg"] = b"elsewhere"
            for key, body in bodies.items():
                await s3.put_object(Bucket=bucket, Key=key, Body=body)

            keys: list[str] = []
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(
                Bucket=bucket, Prefix="images/", PaginationConfig={"PageSize": 5}
            ):
                keys += [item["Key"] for item in page.get("Contents", [])]
            assert keys == sorted(k for k in bodies if k.startswith("images/"))

            got = await s3.get_object(Bucket=bucket, Key="images/07.jpg")
            async with got["Body"] as stream:
                assert await stream.read() == b"body 7"
            assert got["ContentLength"] == len(b"body 7")
        finally:
            for key in bodies:
                await s3.delete_object(Bucket=bucket, Key=key)
            await s3.delete_bucket(Bucket=bucket)


@pytest.fixture
async def storage_events(stack: StackAddresses) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer of the storage-events topic, positioned at its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # refreshes the metadata that partitions_for_topic reads
        partitions = consumer.partitions_for_topic(stack.storage_events_topic) or set()
        tps = [TopicPartition(stack.storage_events_topic, p) for p in sorted(partitions)]
        assert tps, f"{stack.storage_events_topic} does not exist: `make up` creates it"
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            # Resolves the end offsets now, before the test's PUT, not lazily after it.
            await consumer.position(tp)
        yield consumer
    finally:
        await consumer.stop()


async def _next_event_for(consumer: AIOKafkaConsumer, kafka_key: bytes, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            for record in batch:
                if record.key == kafka_key:
                    return record
    pytest.fail(f"no storage event keyed {kafka_key!r} within {timeout_s} s: is the relay running?")


async def test_put_to_demo_bucket_reaches_storage_events_topic(
    stack: StackAddresses, storage_events: AIOKafkaConsumer, unique_name: str
) -> None:
    # A space and a non-ASCII letter: S3 URL-encodes them in the event.
    key = f"stack-tests/{unique_name} größe.jpg"
    kafka_key = f"{stack.demo_bucket}/{key}".encode()
    async with _aioboto3_session(stack).client("s3", endpoint_url=stack.s3_endpoint_url) as s3:
        await s3.put_object(Bucket=stack.demo_bucket, Key=key, Body=b"not really a jpeg")
        created = await _next_event_for(storage_events, kafka_key, timeout_s=60)
        await s3.delete_object(Bucket=stack.demo_bucket, Key=key)
        removed = await _next_event_for(storage_events, kafka_key, timeout_s=60)

    record = json.loads(created.value)["Records"][0]
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["s3"]["bucket"]["name"] == stack.demo_bucket
    assert unquote_plus(record["s3"]["object"]["key"]) == key
    assert record["s3"]["object"]["size"] == len(b"not really a jpeg")
    assert json.loads(removed.value)["Records"][0]["eventName"].startswith("ObjectRemoved:")


def test_milvus_filtered_search(stack: StackAddresses, unique_name: str) -> None:
    client = MilvusClient(uri=stack.milvus_uri, timeout=30)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=8)
    schema.add_field("version_id", DataType.INT64)
    client.create_collection(unique_name, schema=schema)
    try:
        # Row i points along axis i % 8; even ids are in version 1, odd ids in version 2.
        rows = [
            {"id": i, "vector": [1.0 if d == i % 8 else 0.01 * i for d in range(8)], "version_id": 1 + i % 2}
            for i in range(16)
        ]
        assert client.insert(unique_name, rows)["insert_count"] == 16
        index = client.prepare_index_params()
        index.add_index(
            "vector", index_type="HNSW", metric_type="COSINE", params={"M": 8, "efConstruction": 64}
        )
        client.create_index(unique_name, index)
        client.load_collection(unique_name)

        # Nearest overall are ids 3 and 11 (axis 3, version 2); in version 1 there is no axis-3
        # row, so the answer must come from the filter, not from the nearest neighbour.
        query = [1.0 if d == 3 else 0.0 for d in range(8)]
        hits = client.search(
            unique_name, data=[query], limit=4, filter="version_id == 1", output_fields=["version_id"]
        )[0]
        assert len(hits) == 4
        assert all(hit["entity"]["version_id"] == 1 for hit in hits)
        assert {hit["id"] for hit in hits} <= {i for i in range(16) if i % 2 == 0}

        exact = client.search(unique_name, data=[query], limit=2, filter="version_id == 2")[0]
        assert sorted(hit["id"] for hit in exact) == [3, 11]
    finally:
        client.drop_collection(unique_name)
        client.close()


async def test_pgvector_hnsw_filtered_search(stack: StackAddresses, unique_name: str) -> None:
    conn = await asyncpg.connect(stack.db_url)
    try:
        await conn.execute(
            f"CREATE TABLE {unique_name} (id int PRIMARY KEY, version_id int NOT NULL, embedding vector(8))"
        )
        await conn.execute(
            f"CREATE INDEX {unique_name}_hnsw ON {unique_name} USING hnsw (embedding vector_cosine_ops)"
        )
        rows = [(i, 1 + i % 2, str([1.0 if d == i % 8 else 0.01 * i for d in range(8)])) for i in range(64)]
        await conn.executemany(f"INSERT INTO {unique_name} VALUES ($1, $2, $3::vector)", rows)

        query = str([1.0 if d == 3 else 0.0 for d in range(8)])
        sql = (
            f"SELECT id, version_id FROM {unique_name} WHERE version_id = $2 "
            "ORDER BY embedding <=> $1::vector LIMIT 3"
        )
        async with conn.transaction():
            # A table this small would be scanned sequentially; the point is the HNSW index.
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", query, 2))
            assert f"{unique_name}_hnsw" in plan
            hits = await conn.fetch(sql, query, 2)
            other = await conn.fetch(sql, query, 1)
        # Axis 3 rows are ids 3, 11, 19, ... (version 2); nearest first means smallest noise first.
        assert [r["id"] for r in hits] == [3, 11, 19]
        assert {r["version_id"] for r in other} == {1}
        assert all(r["id"] % 2 == 0 for r in other)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {unique_name}")
        await conn.close()
