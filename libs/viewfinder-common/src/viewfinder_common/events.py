"""Protobuf encoding of the Kafka events (FileDiscovered, FileTagged, FileEmbedded).

Events are protobuf messages defined in ``proto/viewfinder/v1/events.proto``;
the Kafka key is the file id so that all events of one file stay ordered in
one partition (DESIGN §1). Decoding failures are values (``MalformedEvent``)
with a reason a dead-letter record can carry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

CONTENT_TYPE = "application/x-protobuf"
HEADER_CONTENT_TYPE = "content-type"
HEADER_EVENT_TYPE = "x-event-type"

EventT = TypeVar("EventT", bound=Message)


class MalformedEvent(ValueError):
    """An event's bytes are not a valid message of the expected type."""


def event_headers(event: Message) -> dict[str, str]:
    """Headers that let any consumer (or a person with kcat) tell what a record holds."""
    return {HEADER_CONTENT_TYPE: CONTENT_TYPE, HEADER_EVENT_TYPE: event.DESCRIPTOR.full_name}


def encode_event(event: Message) -> bytes:
    """Serialises an event deterministically (same event, same bytes)."""
    return event.SerializeToString(deterministic=True)


def decode_event(message_type: type[EventT], data: bytes, *, required: Iterable[str] = ()) -> EventT:
    """Parses ``data`` as ``message_type``; fields in ``required`` must be set.

    Protobuf accepts many byte strings as some message, so the fields an event
    cannot do without are checked too.
    """
    event = message_type()
    try:
        event.ParseFromString(data)
    except DecodeError as exc:
        raise MalformedEvent(f"not a valid {message_type.DESCRIPTOR.full_name}: {exc}") from exc
    missing = [name for name in required if not _is_set(event, name)]
    if missing:
        raise MalformedEvent(
            f"{message_type.DESCRIPTOR.full_name} is missing required field(s): {', '.join(missing)}"
        )
    return event


def _is_set(event: Message, name: str) -> bool:
    value = getattr(event, name)
    if isinstance(value, Message):  # a singular sub-message: set means present
        return event.HasField(name)
    return bool(value)
