"""Catalogue rows as search reads them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class FileRecord:
    """One row of ``files``."""

    id: str
    dataset_id: str
    version_id: str
    bucket: str
    key: str
    uri: str
    size: int
    etag: str
    last_modified: datetime | None
    format: str | None
    width: int | None
    height: int | None
    frames: int | None
    mode: str | None
    status: str
    error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TagRecord:
    """One tag in effect on a file (a ``file_tags`` row that is not removed or hidden)."""

    file_id: str
    name: str
    value: str
    source: str
    confidence: float | None
    model: str | None
    definition_id: str | None
    definition_version: int | None


@dataclass(frozen=True)
class TagCountRecord:
    """How many files of a set carry one tag (name and value)."""

    name: str
    value: str
    count: int


@dataclass(frozen=True)
class FacetRecord:
    """The shape of a matching set."""

    matched_files: int
    tag_counts: list[TagCountRecord]
