"""Parsing bucket notifications (S3/MinIO, OSS, EventBridge) and ordering them."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from viewfinder_ingest.domain.models import CatalogueFile, ChangeType, FileStatus
from viewfinder_ingest.domain.notifications import (
    ChangeKind,
    MalformedNotification,
    StorageChange,
    parse_notification,
)
from viewfinder_ingest.domain.ordering import Action, compare_sequencers, decide, event_for, newest


def s3_record(
    key: str, event: str = "ObjectCreated:Put", sequencer: str | None = "0A1B", **obj: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "size": 10, "eTag": '"abc"', **obj}
    if sequencer is not None:
        body["sequencer"] = sequencer
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-01-02T03:04:05.000Z",
        "eventName": event,
        "s3": {"bucket": {"name": "photos"}, "object": body},
    }


def test_s3_record_with_url_encoded_key() -> None:
    body = json.dumps({"Records": [s3_record("cats/a+b%2Bc%C3%A9.jpg")]}).encode()
    parsed = parse_notification(body)
    assert parsed.errors == []
    (change,) = parsed.changes
    assert change == StorageChange(
        bucket="photos",
        key="cats/a b+cé.jpg",
        kind=ChangeKind.CREATED,
        etag="abc",
        size=10,
        sequencer="0A1B",
        event_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        event_name="ObjectCreated:Put",
    )


def test_minio_event_names_and_removals() -> None:
    body = json.dumps(
        {
            "EventName": "s3:ObjectRemoved:Delete",
            "Key": "photos/x.png",
            "Records": [s3_record("x.png", event="s3:ObjectRemoved:Delete", sequencer="17A", size="0")],
        }
    ).encode()
    (change,) = parse_notification(body).changes
    assert (change.kind, change.key, change.size, change.sequencer) == (ChangeKind.REMOVED, "x.png", 0, "17A")


def test_oss_event_shape() -> None:
    body = {
        "events": [
            {
                "eventName": "ObjectCreated:PutObject",
                "eventSource": "acs:oss",
                "eventTime": "2026-01-02T03:04:05.000Z",
                "oss": {
                    "bucket": {"name": "photos", "arn": "acs:oss:cn-hangzhou:1:photos"},
                    "object": {
                        "key": "dir/a%20b.jpg",
                        "eTag": "688A7BF4",
                        "size": 122539,
                        "deltaSize": 122539,
                    },
                },
                "region": "cn-hangzhou",
            },
            {
                "eventName": "ObjectRemoved:DeleteObject",
                "oss": {"bucket": {"name": "photos"}, "object": {"key": "z.jpg"}},
            },
        ]
    }
    changes = parse_notification(json.dumps(body).encode()).changes
    assert [(c.kind, c.key, c.etag, c.sequencer) for c in changes] == [
        (ChangeKind.CREATED, "dir/a b.jpg", "688A7BF4", None),
        (ChangeKind.REMOVED, "z.jpg", "", None),
    ]


def test_eventbridge_cloudevent_and_base64_mns_body() -> None:
    record = {
        "eventName": "ObjectCreated:PutObject",
        "oss": {"bucket": {"name": "photos"}, "object": {"key": "k.jpg", "eTag": "E1", "size": 3}},
    }
    cloud_event = {
        "specversion": "1.0",
        "type": "oss:ObjectCreated:PutObject",
        "source": "acs.oss",
        "data": record,
    }
    for body in (
        json.dumps(cloud_event).encode(),
        base64.b64encode(json.dumps({"events": [record]}).encode()),
    ):
        (change,) = parse_notification(body).changes
        assert (change.bucket, change.key, change.etag) == ("photos", "k.jpg", "E1")


def test_test_event_and_other_event_kinds_are_ignored() -> None:
    assert (
        parse_notification(b'{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"photos"}').ignored == 1
    )
    parsed = parse_notification(
        json.dumps({"Records": [s3_record("a.jpg", event="ObjectRestore:Completed")]}).encode()
    )
    assert (parsed.changes, parsed.ignored, parsed.errors) == ([], 1, [])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"hello": "world"}', "not a bucket notification"),
        (b'{"Records": []}', "'Records' is empty"),
        (
            json.dumps(
                {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}
            ).encode(),
            "missing s3.object",
        ),
        (json.dumps({"Records": [s3_record("a.jpg", sequencer="xyz")]}).encode(), "not a hexadecimal"),
    ],
)
def test_malformed_notifications_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedNotification, match=reason):
        parse_notification(body)


def test_one_bad_record_does_not_spoil_the_good_ones() -> None:
    body = json.dumps({"Records": [s3_record("good.jpg"), {"eventName": "ObjectCreated:Put"}]}).encode()
    parsed = parse_notification(body)
    assert [c.key for c in parsed.changes] == ["good.jpg"]
    assert parsed.errors == ["Records[1]: missing s3"]


def test_sequencers_compare_after_left_padding() -> None:
    assert compare_sequencers("0055AED6DCD90281E5", "55AED6DCD90281E6") == -1
    assert compare_sequencers("FF", "0100") == -1
    assert compare_sequencers("00ff", "FF") == 0
    assert compare_sequencers("10", "F") == 1


def change(
    kind: ChangeKind, sequencer: str | None = None, etag: str = "e", at: int | None = None
) -> StorageChange:
    moment = datetime(2026, 1, 1, 0, 0, at, tzinfo=UTC) if at is not None else None
    return StorageChange("b", "k", kind, etag=etag, sequencer=sequencer, event_time=moment)


def row(
    status: FileStatus = FileStatus.ACTIVE, sequencer: str | None = None, etag: str = "e", at: int = 10
) -> CatalogueFile:
    return CatalogueFile(
        id="f",
        dataset_id="d",
        version_id="v",
        bucket="b",
        key="k",
        uri="s3://b/k",
        size=1,
        etag=etag,
        last_modified=datetime(2026, 1, 1, 0, 0, at, tzinfo=UTC),
        status=status,
        sequencer=sequencer,
    )


def test_newest_prefers_sequencer_then_time_then_arrival() -> None:
    first, second = change(ChangeKind.CREATED, "0A"), change(ChangeKind.REMOVED, "B")
    assert newest([second, first]) is second
    early, late = change(ChangeKind.CREATED, at=1), change(ChangeKind.REMOVED, at=2)
    assert newest([late, early]) is late
    a, b = change(ChangeKind.CREATED), change(ChangeKind.REMOVED)
    assert newest([a, b]) is b


@pytest.mark.parametrize(
    ("incoming", "current", "action"),
    [
        (change(ChangeKind.CREATED, "05"), None, Action.READ),
        (change(ChangeKind.CREATED, "05"), row(sequencer="06"), Action.SKIP),
        (change(ChangeKind.CREATED, "06"), row(sequencer="06"), Action.SKIP),
        (change(ChangeKind.CREATED, "0007"), row(sequencer="6"), Action.READ),
        (change(ChangeKind.REMOVED, "07"), row(sequencer="06"), Action.DELETE),
        (change(ChangeKind.REMOVED, "07"), None, Action.TOMBSTONE),
        (change(ChangeKind.REMOVED, "07"), row(FileStatus.DELETED, sequencer="06"), Action.TOMBSTONE),
        # No sequencer (OSS): ETag and time decide, a removal is confirmed against the store.
        (change(ChangeKind.CREATED, etag="e"), row(etag="e"), Action.SKIP),
        (change(ChangeKind.CREATED, etag="new", at=5), row(etag="e", at=10), Action.SKIP),
        (change(ChangeKind.CREATED, etag="new", at=20), row(etag="e", at=10), Action.READ),
        (change(ChangeKind.REMOVED, at=5), row(at=10), Action.SKIP),
        (change(ChangeKind.REMOVED, at=20), row(at=10), Action.DELETE_IF_GONE),
    ],
)
def test_decide(incoming: StorageChange, current: CatalogueFile | None, action: Action) -> None:
    assert decide(incoming, current).action is action


def test_events_only_for_changes_consumers_care_about() -> None:
    assert event_for(None, None, FileStatus.ACTIVE, "a") is ChangeType.UPSERT
    assert event_for(FileStatus.ACTIVE, "a", FileStatus.ACTIVE, "a") is None
    assert event_for(FileStatus.ACTIVE, "a", FileStatus.ACTIVE, "b") is ChangeType.UPSERT
    assert event_for(FileStatus.ACTIVE, "a", FileStatus.DELETED, "a") is ChangeType.DELETE
    assert event_for(FileStatus.ACTIVE, "a", FileStatus.CORRUPT, "b") is ChangeType.DELETE
    assert event_for(FileStatus.CORRUPT, "a", FileStatus.DELETED, "a") is None
    assert event_for(None, None, FileStatus.UNSUPPORTED, "a") is None
    assert event_for(FileStatus.DELETED, "a", FileStatus.ACTIVE, "a") is ChangeType.UPSERT
