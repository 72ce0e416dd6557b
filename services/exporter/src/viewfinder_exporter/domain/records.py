"""What an export writes per file: a snapshot of the file's location, metadata and tags."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class TagSnapshot:
    """One tag in effect on a file at export time."""

    name: str
    value: str
    # "ai" or "user".
    source: str
    confidence: float | None = None
    model: str = ""
    definition_id: str = ""
    definition_version: int = 0

    def to_json(self) -> dict[str, Any]:
        """The tag as stored in manifests and logical dataset items (empty fields left out)."""
        body: dict[str, Any] = {"name": self.name, "value": self.value, "source": self.source}
        if self.confidence is not None:
            body["confidence"] = self.confidence
        if self.model:
            body["model"] = self.model
        if self.definition_id:
            body["definition_id"] = self.definition_id
            body["definition_version"] = self.definition_version
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TagSnapshot:
        """The inverse of ``to_json``."""
        confidence = body.get("confidence")
        return cls(
            name=str(body["name"]),
            value=str(body.get("value", "")),
            source=str(body.get("source", "")),
            confidence=float(confidence) if confidence is not None else None,
            model=str(body.get("model", "")),
            definition_id=str(body.get("definition_id", "")),
            definition_version=int(body.get("definition_version", 0)),
        )


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """One exported file as it was at export time."""

    file_id: str
    dataset_id: str
    dataset_version_id: str
    uri: str
    bucket: str
    key: str
    size: int
    etag: str
    last_modified: datetime | None
    format: str
    width: int
    height: int
    frames: int
    mode: str
    tags: tuple[TagSnapshot, ...]
    # Similarity score when the exported search had a vector query.
    score: float | None
    # Storage connection to read the object with (the source dataset's).
    storage_connection: str
