"""The ingest service's records: datasets, versions, files, sync jobs, bucket objects.

Plain dataclasses, free of protobuf and database types; the gRPC handlers
and the catalogue adapter translate at the edges.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class FileStatus(enum.StrEnum):
    """Catalogue status of a file (the values stored in ``files.status``)."""

    ACTIVE = "active"
    DELETED = "deleted"
    UNSUPPORTED = "unsupported"
    CORRUPT = "corrupt"


class ChangeType(enum.Enum):
    """What a FileDiscovered event tells consumers."""

    UPSERT = "upsert"
    DELETE = "delete"


class JobState(enum.StrEnum):
    """Stored job states (``jobs.state``); CANCELLING is derived, not stored."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class SyncMode(enum.StrEnum):
    """FULL inspects every listed object; INCREMENTAL only new and changed ones."""

    FULL = "full"
    INCREMENTAL = "incremental"


def file_id_for(version_id: str, key: str) -> str:
    """The file id of ``key`` in a version: the same for every sync and notification.

    Derived, not random, so that an event published before a crash and the
    row written after the restart name the same file. PostgreSQL computes the
    same value as ``md5(version_id::text || '/' || key)::uuid``.
    """
    digest = hashlib.md5(f"{version_id}/{key}".encode(), usedforsecurity=False).hexdigest()
    return str(uuid.UUID(hex=digest))


@dataclass(frozen=True, slots=True)
class Dataset:
    """A bucket prefix registered as a catalogue of images."""

    id: str
    name: str
    description: str
    storage_connection: str
    bucket: str
    prefix: str
    version_file_limit: int
    labeling: dict[str, Any]
    indexing: dict[str, Any]
    latest_version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """One version of a dataset and its file counts."""

    id: str
    dataset_id: str
    number: int
    name: str
    description: str
    active_file_count: int
    file_count: int
    last_sync_job_id: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What a header-only inspection found: a status and, for images, their shape."""

    status: FileStatus
    format: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    mode: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One object as a bucket listing (or a HEAD/GET) reports it."""

    key: str
    size: int
    etag: str
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class CatalogueFile:
    """The catalogue's row of one object in one version."""

    id: str
    dataset_id: str
    version_id: str
    bucket: str
    key: str
    uri: str
    size: int
    etag: str
    last_modified: datetime | None
    status: FileStatus
    format: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    mode: str | None = None
    error: str | None = None
    sequencer: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FileWrite:
    """A row to insert or update: object metadata plus the inspection result."""

    id: str
    key: str
    size: int
    etag: str
    last_modified: datetime | None
    info: ImageInfo
    sequencer: str | None = None


@dataclass(frozen=True, slots=True)
class DiscoveredChange:
    """One FileDiscovered event to publish, before protobuf encoding."""

    dataset_id: str
    version_id: str
    file_id: str
    bucket: str
    key: str
    etag: str
    size: int
    change_type: ChangeType
    last_modified: datetime | None
    storage_connection: str
    trace_id: str
    sync_job_id: str = ""
    info: ImageInfo | None = None


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one object of a job could not be processed."""

    uri: str
    reason: str
    occurred_at: datetime
    file_id: str = ""


@dataclass(frozen=True, slots=True)
class SyncCounts:
    """Per-job counters (dataset.proto SyncCounts)."""

    listed: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    unsupported: int = 0
    corrupt: int = 0
    events_published: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name, as stored in ``jobs.counts``."""
        return {
            "listed": self.listed,
            "added": self.added,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "unsupported": self.unsupported,
            "corrupt": self.corrupt,
            "events_published": self.events_published,
            "failed": self.failed,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SyncCounts:
        """Counters from ``jobs.counts``; missing ones are 0."""
        return cls(**{name: int(values.get(name, 0)) for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """How far the listing of one key partition got (persisted per finished page)."""

    # Last key whose page is fully written; the listing resumes after it.
    after: str | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class SyncJob:
    """A sync job as stored, plus what the API derives from it."""

    id: str
    dataset_id: str
    version_id: str
    mode: SyncMode
    state: JobState
    cancel_requested: bool
    counts: SyncCounts
    checkpoint: dict[str, Any]
    error: str | None
    recent_errors: list[ItemError]
    resume_count: int
    trace_id: str
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    partitions: dict[str, PartitionProgress] = field(default_factory=dict)
