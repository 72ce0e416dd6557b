"""datetime -> google.protobuf.Timestamp, for every service's messages and events."""

from __future__ import annotations

from datetime import datetime
from typing import overload

from google.protobuf.timestamp_pb2 import Timestamp


@overload
def to_timestamp(moment: datetime) -> Timestamp: ...


@overload
def to_timestamp(moment: None) -> None: ...


@overload
def to_timestamp(moment: datetime | None) -> Timestamp | None: ...


def to_timestamp(moment: datetime | None) -> Timestamp | None:
    """The Timestamp of ``moment`` (an aware datetime); None leaves a message field unset."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
