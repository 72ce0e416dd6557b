"""What the ingest logic needs from the outside world, as protocols.

The sync runner and the notification processor are written against these;
``viewfinder_ingest.adapters`` implements them with asyncpg, aioboto3 and
FastStream. Keeping the frameworks out of ``domain`` keeps the logic readable
on its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from viewfinder_ingest.domain.models import (
    CatalogueFile,
    Dataset,
    DiscoveredChange,
    FileWrite,
    ItemError,
    JobState,
    ListedObject,
    PartitionProgress,
    SyncCounts,
    SyncJob,
)
from viewfinder_ingest.domain.sync_plan import KeyRange


@dataclass(frozen=True, slots=True)
class ListingPage:
    """One ListObjectsV2 page."""

    objects: list[ListedObject]
    common_prefixes: list[str]
    is_last: bool


@dataclass(frozen=True, slots=True)
class ObjectHead:
    """The first bytes of an object and the metadata of the object they came from."""

    data: bytes
    size: int
    etag: str
    last_modified: datetime | None


class ObjectAccessError(Exception):
    """An object exists but cannot be read (access denied, archived …); the message says why."""


class ObjectStore(Protocol):
    """Reading a bucket: listing pages, the first bytes of an object, an object's metadata."""

    def list_pages(
        self, bucket: str, prefix: str, *, delimiter: str | None, start_after: str | None, page_size: int
    ) -> AsyncIterator[ListingPage]:
        """Pages of a listing in key order, starting after ``start_after``."""
        ...

    async def read_head(self, bucket: str, key: str, length: int) -> ObjectHead | None:
        """The first ``length`` bytes (ranged GET); None if the object does not exist."""
        ...

    async def stat(self, bucket: str, key: str) -> ListedObject | None:
        """The object's metadata (HEAD); None if it does not exist."""
        ...


class EventPublisher(Protocol):
    """Publishing FileDiscovered events."""

    async def publish(self, changes: Sequence[DiscoveredChange]) -> None:
        """Publishes all and returns once the broker has acknowledged every one."""
        ...


@dataclass(frozen=True, slots=True)
class SyncPageWrite:
    """Everything one finished listing page changes, written in one transaction."""

    job_id: str
    dataset_id: str
    version_id: str
    bucket: str
    writes: Sequence[FileWrite]
    deletions: Sequence[CatalogueFile]
    # A row changed after this moment (by a notification) is newer than the
    # listing and is not marked deleted.
    listed_at: datetime
    counts: SyncCounts
    partition: str
    progress: PartitionProgress
    new_partitions: Sequence[str] = ()
    errors: Sequence[ItemError] = ()


@dataclass(frozen=True, slots=True)
class NotificationWrite:
    """The catalogue changes of a batch of notifications for one version."""

    dataset_id: str
    version_id: str
    bucket: str
    upserts: Sequence[FileWrite] = ()
    deletions: Sequence[tuple[CatalogueFile, str | None]] = ()
    # Keys without a row: a DELETED row keeps the sequencer of the removal.
    tombstones: Sequence[tuple[str, str | None]] = ()
    # Rows whose content did not change: only the sequencer advances.
    sequencers: Sequence[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DatasetTarget:
    """A dataset registered on a bucket, with the version notifications go to."""

    dataset: Dataset
    version_id: str
    version_number: int
    version_file_limit: int


class SyncCatalogue(Protocol):
    """The catalogue as the sync runner uses it."""

    async def claim_sync_job(self, job_id: str) -> SyncJob | None:
        """Moves a PENDING job to RUNNING and returns it; None if it is not pending."""
        ...

    async def get_dataset(self, dataset_id: str) -> Dataset:
        """The dataset; NotFound if it is gone."""
        ...

    async def count_live_files(self, version_id: str) -> int:
        """Rows of a version that count toward its file limit (all but DELETED)."""
        ...

    async def files_in_range(self, version_id: str, key_range: KeyRange) -> dict[str, CatalogueFile]:
        """The version's rows in a page's key range, by key."""
        ...

    async def commit_sync_page(self, page: SyncPageWrite) -> bool:
        """Writes a page's rows, counts and checkpoint; returns whether cancellation was requested."""
        ...

    async def add_partitions(self, job_id: str, partitions: Sequence[str]) -> None:
        """Records newly discovered partitions in the job's checkpoint."""
        ...

    async def heartbeat(self, job_id: str) -> bool:
        """Proves the job is alive; returns whether cancellation was requested."""
        ...

    async def finish_job(self, job_id: str, state: JobState, error: str | None = None) -> None:
        """Moves a job to a terminal state."""
        ...


class NotificationCatalogue(Protocol):
    """The catalogue as the notification processor uses it."""

    async def targets_for_buckets(self, buckets: Sequence[str]) -> dict[str, list[DatasetTarget]]:
        """Datasets registered on each bucket, each with its latest version."""
        ...

    async def files_by_key(self, version_id: str, keys: Sequence[str]) -> dict[str, CatalogueFile]:
        """The version's rows for these keys."""
        ...

    async def count_live_files(self, version_id: str) -> int:
        """Rows of a version that count toward its file limit (all but DELETED)."""
        ...

    async def apply_notifications(self, writes: Sequence[NotificationWrite]) -> None:
        """Writes the changes of a batch in one transaction (older sequencers never win)."""
        ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A notification that could not be (fully) applied, and why."""

    body: bytes
    reason: str
    error_type: str
    source: Mapping[str, str] = field(default_factory=dict)


class DeadLetterSink(Protocol):
    """Where unusable notifications go, with their original bytes and the reason."""

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Publishes every dead letter."""
        ...
