"""Comparing one listing page with the catalogue: what is new, changed, unchanged or gone.

Listing is split into key partitions: the objects directly under the dataset
prefix, and one partition per common prefix below it, listed concurrently. A
page covers the key range (previous page's last key, this page's last key] of
its partition, so the catalogue rows of that range that the page does not
list are objects that vanished. Everything stays bounded by the page size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from viewfinder_ingest.domain.models import CatalogueFile, FileStatus, ListedObject, SyncMode

# The partition of the objects directly under the dataset prefix (its own
# name, since every other partition is named by its common prefix).
DIRECT_PARTITION = ""


@dataclass(frozen=True, slots=True)
class KeyRange:
    """The catalogue keys one listing page is responsible for."""

    # Partition: DIRECT_PARTITION (keys under the dataset prefix without a
    # further delimiter) or a common prefix (every key starting with it).
    partition: str
    dataset_prefix: str
    # Exclusive lower bound; None from the partition's start.
    after: str | None
    # Inclusive upper bound; None to the partition's end (its last page).
    through: str | None


@dataclass(slots=True)
class PagePlan:
    """What one page means for the catalogue."""

    # Objects to inspect and write, with the row they replace (None: new key).
    to_inspect: list[tuple[ListedObject, CatalogueFile | None]] = field(default_factory=list)
    # Listed objects the catalogue already has with the same ETag, size and time.
    unchanged: int = 0
    # Catalogue rows of the page's range whose objects were not listed.
    vanished: list[CatalogueFile] = field(default_factory=list)


def page_range(
    partition: str, dataset_prefix: str, after: str | None, listed: Sequence[ListedObject], is_last: bool
) -> KeyRange:
    """The key range a page covers: from after the previous page through its last key."""
    through = None if is_last or not listed else listed[-1].key
    return KeyRange(partition=partition, dataset_prefix=dataset_prefix, after=after, through=through)


def same_object(listed: ListedObject, row: CatalogueFile) -> bool:
    """Whether a listed object is the one the catalogue recorded (ETag, size, last-modified).

    Times are compared to the second: listings report milliseconds, HEAD and
    GET responses whole seconds.
    """
    if row.etag != listed.etag or row.size != listed.size:
        return False
    if row.last_modified is None or listed.last_modified is None:
        return True
    return _seconds(row.last_modified) == _seconds(listed.last_modified)


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def plan_page(
    listed: Sequence[ListedObject], existing: Mapping[str, CatalogueFile], mode: SyncMode
) -> PagePlan:
    """Classifies a page against the catalogue rows of its key range (``existing`` by key).

    INCREMENTAL inspects only new and changed objects; FULL inspects every
    listed object again (events still go out only for real changes).
    """
    plan = PagePlan()
    seen: set[str] = set()
    for obj in listed:
        seen.add(obj.key)
        row = existing.get(obj.key)
        if row is not None and row.status is not FileStatus.DELETED and same_object(obj, row):
            if mode is SyncMode.FULL:
                plan.to_inspect.append((obj, row))
            else:
                plan.unchanged += 1
            continue
        plan.to_inspect.append((obj, row))
    plan.vanished = [
        row for key, row in existing.items() if key not in seen and row.status is not FileStatus.DELETED
    ]
    return plan


def in_partition(key: str, partition: str, dataset_prefix: str) -> bool:
    """Whether ``key`` belongs to ``partition`` (mirrors the catalogue's range query)."""
    if partition == DIRECT_PARTITION:
        return key.startswith(dataset_prefix) and "/" not in key[len(dataset_prefix) :]
    return key.startswith(partition)
