"""The relay's pure parts: which SQS bodies are S3 test events, and the Kafka key."""

from __future__ import annotations

import json

from viewfinder_common.storage_relay import is_test_event, record_key


def _event(bucket: str, key: str) -> str:
    return json.dumps(
        {
            "Records": [
                {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
            ]
        }
    )


def test_test_event_is_recognised() -> None:
    assert is_test_event(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}))
    assert not is_test_event(_event("b", "k.jpg"))
    assert not is_test_event("not json")


def test_record_key_decodes_url_encoded_keys() -> None:
    # AWS encodes a space as '+'; moto also encodes '/' as %2F.
    assert record_key(_event("b", "cars%2Fred+car%C3%B6.jpg")) == "b/cars/red carö.jpg".encode()


def test_record_key_is_none_for_non_s3_bodies() -> None:
    assert record_key("{}") is None
    assert record_key("garbage") is None
    assert record_key(json.dumps({"Records": []})) is None
