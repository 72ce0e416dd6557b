"""Bucket notifications from the storage-events topic and the webhook, on the real stack."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest

from viewfinder.v1 import dataset_pb2, events_pb2
from viewfinder_common.kafka import DLQ_REASON

pytestmark = pytest.mark.stack

# Joining a consumer group on tansu takes seconds.
GROUP_JOIN_S = 60.0
STATUS = dataset_pb2.FileStatus


def s3_notification(
    bucket: str, key: str, *, event: str, etag: str = "", sequencer: str | None, size: int = 0
) -> bytes:
    """An S3 event notification as S3 (or the SQS relay) delivers it: the key URL-encoded."""
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag}
    if sequencer is not None:
        obj["sequencer"] = sequencer
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-01-02T03:04:05.000Z",
        "eventName": event,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": obj},
    }
    return json.dumps({"Records": [record]}).encode()


async def files_by_key(harness: Any, version_id: str) -> dict[str, dataset_pb2.File]:
    return {f.key: f for f in await harness.all_files(version_id)}


async def test_a_put_notification_adds_the_file_and_publishes_without_a_sync_job(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    harness = await make_harness(subscribe=True)
    whole = await harness.create_dataset(f"{unique_name}-all")
    narrow = await harness.create_dataset(f"{unique_name}-n", prefix="n/")
    key = "n/with space+plus.png"
    etags = await harness.put_many({key: images.encode("PNG", size=(30, 20))})

    await harness.publish_notification(
        s3_notification(
            harness.bucket, key, event="ObjectCreated:Put", etag=etags[key], sequencer="0A", size=99
        )
    )

    records = await harness.events.wait_for(2, timeout_s=GROUP_JOIN_S)
    events = harness.events.file_events()
    assert len(records) == 2  # one per dataset registered on the bucket and prefix
    assert {e.dataset_version_id for e in events} == {whole.version.id, narrow.version.id}
    assert all(
        (e.key, e.etag, e.change_type, e.format, e.width, e.sync_job_id)
        == (key, etags[key], events_pb2.CHANGE_TYPE_UPSERT, "PNG", 30, "")
        for e in events
    )
    stored = (await files_by_key(harness, narrow.version.id))[key]
    assert (stored.status, stored.etag, stored.height) == (STATUS.FILE_STATUS_ACTIVE, etags[key], 20)
    assert {r.key.decode() for r in records} == {e.file_id for e in events}
    assert await harness.pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_duplicated_and_reordered_notifications_end_in_the_right_state(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    harness = await make_harness(subscribe=True)
    created = await harness.create_dataset(unique_name)
    bucket = harness.bucket

    # Two versions of one object; the newer one's sequencer is longer ("0100" > "FF" once padded).
    old = await harness.put_many({"k/one.png": images.encode("PNG", seed=1)})
    new = await harness.put_many({"k/one.png": images.encode("PNG", seed=2)})
    put_old = s3_notification(
        bucket, "k/one.png", event="ObjectCreated:Put", etag=old["k/one.png"], sequencer="FF"
    )
    put_new = s3_notification(
        bucket, "k/one.png", event="ObjectCreated:Put", etag=new["k/one.png"], sequencer="0100"
    )
    # Put then delete, delivered the other way round.
    gone = await harness.put_many({"k/two.png": images.encode("PNG", seed=3)})
    await harness.delete_many(["k/two.png"])
    put_gone = s3_notification(
        bucket, "k/two.png", event="ObjectCreated:Put", etag=gone["k/two.png"], sequencer="05"
    )
    delete_gone = s3_notification(bucket, "k/two.png", event="ObjectRemoved:Delete", sequencer="06")
    for body in (put_new, delete_gone, put_old, put_new, put_gone, put_old):
        await harness.publish_notification(body)

    await harness.events.wait_for(1, timeout_s=GROUP_JOIN_S, quiet_s=3.0)
    events = harness.events.file_events()
    assert [(e.key, e.etag, e.change_type) for e in events] == [
        ("k/one.png", new["k/one.png"], events_pb2.CHANGE_TYPE_UPSERT)
    ]
    files = await files_by_key(harness, created.version.id)
    assert (files["k/one.png"].status, files["k/one.png"].etag) == (
        STATUS.FILE_STATUS_ACTIVE,
        new["k/one.png"],
    )
    assert files["k/two.png"].status == STATUS.FILE_STATUS_DELETED  # a tombstone that remembers the order

    # Deleting the object: the removal, a duplicate of it and a late older put.
    await harness.delete_many(["k/one.png"])
    delete_one = s3_notification(bucket, "k/one.png", event="ObjectRemoved:Delete", sequencer="0101")
    for body in (delete_one, delete_one, put_new, put_old):
        await harness.publish_notification(body)
    await harness.events.wait_for(2, timeout_s=30.0, quiet_s=3.0)
    events = harness.events.file_events()
    assert [(e.key, e.change_type) for e in events[1:]] == [("k/one.png", events_pb2.CHANGE_TYPE_DELETE)]
    assert events[1].file_id == events[0].file_id
    files = await files_by_key(harness, created.version.id)
    assert files["k/one.png"].status == STATUS.FILE_STATUS_DELETED


async def test_bad_notifications_are_dead_lettered_and_later_ones_still_apply(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    harness = await make_harness(subscribe=True)
    created = await harness.create_dataset(unique_name)
    etags = await harness.put_many({"ok.png": images.encode("PNG")})

    await harness.publish_notification(b'{"Records": [ this is not json')
    await harness.publish_notification(
        s3_notification(
            "no-such-bucket-registered", "x.png", event="ObjectCreated:Put", etag="e", sequencer="1"
        )
    )
    await harness.publish_notification(
        s3_notification(
            harness.bucket, "ok.png", event="ObjectCreated:Put", etag=etags["ok.png"], sequencer="2"
        )
    )

    letters = await harness.dead_letters.wait_for(2, timeout_s=GROUP_JOIN_S)
    assert len(letters) == 2
    # The two may arrive in either order (the topic has two partitions).
    by_reason = {dict(letter.headers)[DLQ_REASON].decode(): letter for letter in letters}
    malformed = next(letter for reason, letter in by_reason.items() if "not valid JSON" in reason)
    assert malformed.value == b'{"Records": [ this is not json'  # the original bytes
    assert any(
        "no dataset is registered on bucket 'no-such-bucket-registered'" in reason for reason in by_reason
    )
    await harness.events.wait_for(1, timeout_s=30.0)
    assert [e.key for e in harness.events.file_events()] == ["ok.png"]
    files = await files_by_key(harness, created.version.id)
    assert files["ok.png"].status == STATUS.FILE_STATUS_ACTIVE


async def test_webhook_accepts_s3_and_oss_notifications(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    harness = await make_harness(webhook_token="s3cret")
    created = await harness.create_dataset(unique_name)
    etags = await harness.put_many({"w/a.jpg": images.encode("JPEG"), "w/b c.gif": images.encode("GIF")})
    port = await harness.parts.webhook.start()
    url = f"http://127.0.0.1:{port}{harness.settings.webhook_path}"
    oss = {
        "events": [
            {
                "eventName": "ObjectCreated:PutObject",
                "eventSource": "acs:oss",
                "eventTime": "2026-01-02T03:04:05.000Z",
                "oss": {
                    "bucket": {"name": harness.bucket},
                    "object": {"key": "w/b%20c.gif", "eTag": etags["w/b c.gif"].upper(), "size": 10},
                },
            }
        ]
    }
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer s3cret"}) as http:
            s3_body = s3_notification(
                harness.bucket, "w/a.jpg", event="ObjectCreated:Put", etag=etags["w/a.jpg"], sequencer="1"
            )
            async with http.post(url, data=s3_body) as response:
                assert response.status == 200
                assert (await response.json())["events"] == 1
            async with http.post(url, data=json.dumps(oss).encode()) as response:
                assert response.status == 200
                assert (await response.json())["applied"] == 1
            async with http.post(url, data=b"garbage") as response:
                assert response.status == 400
                assert "not valid JSON" in (await response.json())["dead_lettered"][0]
        async with aiohttp.ClientSession() as anonymous, anonymous.post(url, data=s3_body) as response:
            assert response.status == 401
    finally:
        await harness.parts.webhook.stop()

    await harness.events.wait_for(2)
    assert sorted(e.key for e in harness.events.file_events()) == ["w/a.jpg", "w/b c.gif"]
    files = await files_by_key(harness, created.version.id)
    assert (files["w/b c.gif"].format, files["w/b c.gif"].frames) == ("GIF", 1)
    assert len(await harness.dead_letters.wait_for(1)) == 1


async def test_without_sequencers_the_store_decides_the_order(
    make_harness: Any, images: Any, unique_name: str
) -> None:
    """moto and OSS send no sequencer: ETag, time and a read of the object keep the order right."""
    harness = await make_harness()
    created = await harness.create_dataset(unique_name)
    port = await harness.parts.webhook.start()
    url = f"http://127.0.0.1:{port}{harness.settings.webhook_path}"
    bucket = harness.bucket
    first = await harness.put_many({"o/x.png": images.encode("PNG", seed=1)})
    second = await harness.put_many({"o/x.png": images.encode("PNG", seed=2)})
    gone = await harness.put_many({"o/gone.png": images.encode("PNG", seed=3)})
    await harness.delete_many(["o/gone.png"])

    def body(key: str, event: str, etag: str = "") -> bytes:
        return s3_notification(bucket, key, event=event, etag=etag, sequencer=None)

    try:
        async with aiohttp.ClientSession() as http:
            for notification in (
                body("o/gone.png", "ObjectRemoved:Delete"),
                body("o/gone.png", "ObjectCreated:Put", gone["o/gone.png"]),
                body("o/x.png", "ObjectCreated:Put", second["o/x.png"]),
                body("o/x.png", "ObjectCreated:Put", second["o/x.png"]),
                body("o/x.png", "ObjectCreated:Put", first["o/x.png"]),
            ):
                async with http.post(url, data=notification) as response:
                    assert response.status == 200, await response.text()
    finally:
        await harness.parts.webhook.stop()

    await harness.events.wait_for(1)
    events = harness.events.file_events()
    assert [(e.key, e.etag) for e in events] == [("o/x.png", second["o/x.png"])]
    files = await files_by_key(harness, created.version.id)
    assert files["o/x.png"].etag == second["o/x.png"]
    assert files["o/gone.png"].status == STATUS.FILE_STATUS_DELETED
