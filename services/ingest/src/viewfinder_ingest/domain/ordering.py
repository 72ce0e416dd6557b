"""Ordering of notifications, and which catalogue changes become events.

Stores deliver notifications at least once and in no guaranteed order. S3
orders the changes of one key with ``sequencer``: hexadecimal strings that
compare correctly only after left-padding to equal length. Stores without a
sequencer (OSS) fall back to ETag and last-modified time. Whatever the
notification says, a created object is read from the store before it is
recorded, so the catalogue converges on what the bucket holds now.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from viewfinder_ingest.domain.models import CatalogueFile, ChangeType, FileStatus
from viewfinder_ingest.domain.notifications import ChangeKind, StorageChange


def compare_sequencers(left: str, right: str) -> int:
    """-1, 0 or 1 as ``left`` orders before, equal to or after ``right`` (S3 semantics)."""
    width = max(len(left), len(right))
    a, b = left.upper().rjust(width, "0"), right.upper().rjust(width, "0")
    return (a > b) - (a < b)


def newest(changes: Iterable[StorageChange]) -> StorageChange:
    """The latest of several changes to one key (by sequencer, else time, else arrival).

    Applying only the latest is equivalent to applying all of them in order,
    because the object is read from the store when it is recorded.
    """
    latest: StorageChange | None = None
    for change in changes:
        if latest is None or not _is_older(change, latest):
            latest = change
    if latest is None:
        raise ValueError("newest() needs at least one change")
    return latest


def _is_older(candidate: StorageChange, than: StorageChange) -> bool:
    if candidate.sequencer and than.sequencer:
        return compare_sequencers(candidate.sequencer, than.sequencer) < 0
    if candidate.event_time and than.event_time and candidate.event_time != than.event_time:
        return candidate.event_time < than.event_time
    return False  # same moment or unknown: the later arrival wins


class Action(enum.Enum):
    """What to do with a notification for one catalogue row."""

    # An older or repeated notification: change nothing.
    SKIP = "skip"
    # Read the object (header bytes) and record what the store holds now.
    READ = "read"
    # Mark the file deleted.
    DELETE = "delete"
    # Mark deleted only after confirming the object is gone (no sequencer to trust).
    DELETE_IF_GONE = "delete_if_gone"
    # The key is unknown (or already deleted): keep a DELETED row with the
    # sequencer, so that an older create arriving later is recognised as older.
    TOMBSTONE = "tombstone"


@dataclass(frozen=True, slots=True)
class Decision:
    """An action and, for SKIP, why (for logs and counters)."""

    action: Action
    reason: str = ""


def decide(change: StorageChange, current: CatalogueFile | None) -> Decision:  # noqa: PLR0911 - a decision table
    """What a notification means for the catalogue row of its key (None: no row yet)."""
    if current is not None and change.sequencer and current.sequencer:
        order = compare_sequencers(change.sequencer, current.sequencer)
        if order < 0:
            return Decision(Action.SKIP, "stale: an older sequencer than the one applied")
        if order == 0:
            return Decision(Action.SKIP, "duplicate: the same sequencer was applied")
    elif current is not None:
        # No sequencer on one side: ETag and last-modified decide.
        if (
            change.kind is ChangeKind.CREATED
            and change.etag
            and change.etag == current.etag
            and current.status is not FileStatus.DELETED
        ):
            return Decision(Action.SKIP, "duplicate: the catalogue has this ETag already")
        if change.event_time and current.last_modified and change.event_time < current.last_modified:
            return Decision(Action.SKIP, "stale: older than the object the catalogue records")
    if change.kind is ChangeKind.CREATED:
        return Decision(Action.READ)
    if current is None or current.status is FileStatus.DELETED:
        return Decision(Action.TOMBSTONE)
    if change.sequencer:
        return Decision(Action.DELETE)
    return Decision(Action.DELETE_IF_GONE)


def event_for(
    previous_status: FileStatus | None,
    previous_etag: str | None,
    new_status: FileStatus,
    new_etag: str,
) -> ChangeType | None:
    """The FileDiscovered change a catalogue transition publishes, or None.

    Only supported images reach consumers: an object that becomes (or changes
    while) ACTIVE is an UPSERT; an ACTIVE file that is deleted, or replaced by
    something unreadable, is a DELETE. Nothing else is announced, so a repeated
    sync publishes nothing for unchanged files.
    """
    was_active = previous_status is FileStatus.ACTIVE
    if new_status is FileStatus.ACTIVE:
        if not was_active or previous_etag != new_etag:
            return ChangeType.UPSERT
        return None
    return ChangeType.DELETE if was_active else None
