"""Bucket change notifications: the shapes stores send, parsed into ``StorageChange`` values.

Accepted shapes (all JSON, optionally base64-encoded as MNS queues deliver it):

* AWS S3 / MinIO / Ceph: ``{"Records": [{"eventName": "ObjectCreated:Put",
  "eventTime": ..., "s3": {"bucket": {"name": ...}, "object": {"key": <URL-encoded>,
  "size": ..., "eTag": ..., "sequencer": <hex>}}}]}``; MinIO prefixes event
  names with ``s3:``.
* Alibaba OSS (MNS / Function Compute): ``{"events": [{"eventName":
  "ObjectCreated:PutObject", "eventTime": ..., "oss": {"bucket": {"name": ...},
  "object": {"key": ..., "size": ..., "eTag": ...}}}]}``; no sequencer.
* Alibaba EventBridge (CloudEvents): ``{"specversion": ..., "type":
  "oss:ObjectCreated:PutObject", "data": <one OSS event record>}``.

The S3 ``s3:TestEvent`` a bucket sends when notifications are configured is
recognised and ignored. Anything else is malformed, with a reason for the
dead-letter record.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote, unquote_plus


class ChangeKind(enum.Enum):
    """Whether the object now exists (created or overwritten) or not (removed)."""

    CREATED = "created"
    REMOVED = "removed"


class MalformedNotification(ValueError):
    """A notification body that is not any accepted shape; the message says why."""


@dataclass(frozen=True, slots=True)
class StorageChange:
    """One object change reported by a store."""

    bucket: str
    key: str
    kind: ChangeKind
    etag: str = ""
    size: int | None = None
    # S3 sequencer, upper-case hex; orders changes of one key. None for OSS.
    sequencer: str | None = None
    event_time: datetime | None = None
    event_name: str = ""


@dataclass(slots=True)
class ParsedNotification:
    """The changes of one notification, plus the records that could not be used."""

    changes: list[StorageChange] = field(default_factory=list)
    # "Records[2]: missing s3.object.key" …; the notification is dead-lettered
    # with these reasons while its good records are still applied.
    errors: list[str] = field(default_factory=list)
    # Records about something other than object changes (e.g. ObjectRestore, test events).
    ignored: int = 0


_HEX = re.compile(r"^[0-9A-Fa-f]+$")
_CREATED_PREFIXES = ("ObjectCreated:", "ObjectReplication:ObjectCreated", "ObjectReplication:ObjectModified")
_REMOVED_PREFIXES = ("ObjectRemoved:", "ObjectReplication:ObjectRemoved", "LifecycleExpiration:Delete")


def parse_notification(body: bytes) -> ParsedNotification:
    """Parses one notification body; raises ``MalformedNotification`` if nothing in it is usable."""
    document = _load_json(body)
    if not isinstance(document, dict):
        raise MalformedNotification(f"notification must be a JSON object, got {type(document).__name__}")
    if document.get("Event") == "s3:TestEvent":
        return ParsedNotification(ignored=1)
    if "Records" in document:
        return _parse_records(document["Records"], "Records", _s3_record)
    if "events" in document:
        return _parse_records(document["events"], "events", _oss_record)
    data = document.get("data")
    if "specversion" in document and isinstance(data, dict):
        if "events" in data:
            return _parse_records(data["events"], "data.events", _oss_record)
        if "Records" in data:
            return _parse_records(data["Records"], "data.Records", _s3_record)
        return _parse_records([data], "data", _oss_record)
    raise MalformedNotification(
        "not a bucket notification: expected a JSON object with 'Records' (S3/MinIO), "
        "'events' (OSS) or a CloudEvents 'data' record (EventBridge)"
    )


def _load_json(body: bytes) -> Any:
    if not body.strip():
        raise MalformedNotification("empty notification body")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as first:
        # MNS queues deliver message bodies base64-encoded by default.
        try:
            decoded = base64.b64decode(body, validate=True)
            return json.loads(decoded)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise MalformedNotification(f"notification body is not valid JSON: {first}") from None


def _parse_records(records: Any, where: str, parse_one: Any) -> ParsedNotification:
    if not isinstance(records, list):
        raise MalformedNotification(f"'{where}' must be a list, got {type(records).__name__}")
    if not records:
        raise MalformedNotification(f"'{where}' is empty")
    parsed = ParsedNotification()
    for index, record in enumerate(records):
        try:
            change = parse_one(record)
        except MalformedNotification as exc:
            parsed.errors.append(f"{where}[{index}]: {exc}")
            continue
        if change is None:
            parsed.ignored += 1
        else:
            parsed.changes.append(change)
    if not parsed.changes and parsed.errors and not parsed.ignored:
        raise MalformedNotification("; ".join(parsed.errors))
    return parsed


def _s3_record(record: Any) -> StorageChange | None:
    if not isinstance(record, dict):
        raise MalformedNotification("record is not an object")
    kind, event_name = _kind(record.get("eventName"))
    if kind is None:
        return None
    s3 = _object(record, "s3")
    bucket = _string(_object(s3, "bucket", "s3"), "name", "s3.bucket")
    obj = _object(s3, "object", "s3")
    # S3 URL-encodes keys in notifications, with '+' for a space.
    key = unquote_plus(_string(obj, "key", "s3.object"))
    return StorageChange(
        bucket=bucket,
        key=key,
        kind=kind,
        etag=_etag(obj.get("eTag")),
        size=_size(obj.get("size")),
        sequencer=_sequencer(obj.get("sequencer")),
        event_time=_time(record.get("eventTime")),
        event_name=event_name,
    )


def _oss_record(record: Any) -> StorageChange | None:
    if not isinstance(record, dict):
        raise MalformedNotification("record is not an object")
    kind, event_name = _kind(record.get("eventName"))
    if kind is None:
        return None
    oss = _object(record, "oss")
    bucket = _string(_object(oss, "bucket", "oss"), "name", "oss.bucket")
    obj = _object(oss, "object", "oss")
    # OSS percent-encodes special characters of keys (a '+' stays a '+').
    key = unquote(_string(obj, "key", "oss.object"))
    return StorageChange(
        bucket=bucket,
        key=key,
        kind=kind,
        etag=_etag(obj.get("eTag")),
        size=_size(obj.get("size")),
        sequencer=None,
        event_time=_time(record.get("eventTime")),
        event_name=event_name,
    )


def _kind(raw: Any) -> tuple[ChangeKind | None, str]:
    if not isinstance(raw, str) or not raw:
        raise MalformedNotification("missing eventName")
    name = raw
    for vendor in ("s3:", "oss:"):
        name = name.removeprefix(vendor)
    if name.startswith(_CREATED_PREFIXES):
        return ChangeKind.CREATED, name
    if name.startswith(_REMOVED_PREFIXES):
        return ChangeKind.REMOVED, name
    return None, name


def _object(parent: dict[str, Any], name: str, where: str = "") -> dict[str, Any]:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise MalformedNotification(f"missing {where + '.' if where else ''}{name}")
    return value


def _string(parent: dict[str, Any], name: str, where: str) -> str:
    value = parent.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedNotification(f"missing {where}.{name}")
    return value


def _etag(raw: Any) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise MalformedNotification("eTag is not a string")
    return raw.strip('"')


def _size(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise MalformedNotification("size is not a number")
    try:
        size = int(raw)
    except (TypeError, ValueError):
        raise MalformedNotification(f"size is not a number: {raw!r}") from None
    if size < 0:
        raise MalformedNotification(f"size is negative: {size}")
    return size


def _sequencer(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not _HEX.match(raw):
        raise MalformedNotification(f"sequencer is not a hexadecimal string: {raw!r}")
    return raw.upper()


def _time(raw: Any) -> datetime | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise MalformedNotification("eventTime is not a string")
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedNotification(f"eventTime is not an ISO-8601 time: {raw!r}") from None
    if parsed.tzinfo is None:
        raise MalformedNotification(f"eventTime has no time zone: {raw!r}")
    return parsed
