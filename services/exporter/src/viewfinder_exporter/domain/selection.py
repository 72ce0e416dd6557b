"""What a StartExportRequest selects and where it writes, checked before anything is stored."""

from __future__ import annotations

from dataclasses import dataclass

from viewfinder.v1 import export_pb2, search_pb2
from viewfinder_common.errors import InvalidArgument
from viewfinder_exporter.domain.targets import (
    ManifestFormat,
    ManifestLocation,
    check_logical_dataset_name,
    manifest_location,
)

MAX_DESCRIPTION_CHARS = 4096
_FORMATS = {
    export_pb2.MANIFEST_FORMAT_UNSPECIFIED: ManifestFormat.JSONL,
    export_pb2.MANIFEST_FORMAT_JSONL: ManifestFormat.JSONL,
    export_pb2.MANIFEST_FORMAT_CSV: ManifestFormat.CSV,
}


@dataclass(frozen=True)
class Selection:
    """The files to export: a search to page through, or explicit file ids."""

    dataset_version_id: str
    # Set for search and query selections.
    search: search_pb2.SearchRequest | None = None
    # Set for file selections.
    file_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogicalTarget:
    """The logical dataset a version is added to."""

    name: str
    description: str
    append: bool


def selection_of(request: export_pb2.StartExportRequest) -> Selection:
    """The selection of a request; INVALID_ARGUMENT when it has none or it is incomplete."""
    kind = request.WhichOneof("selection")
    if kind == "search":
        search = search_pb2.SearchRequest()
        search.CopyFrom(request.search)
        return Selection(request.search.dataset_version_id, search=search)
    if kind == "query":
        if not request.query.query.strip():
            raise InvalidArgument(
                "query.query is empty; give a DSL query, or a search without conditions to export a whole version"
            )
        search = search_pb2.SearchRequest(
            dataset_version_id=request.query.dataset_version_id, query=request.query.query
        )
        return Selection(request.query.dataset_version_id, search=search)
    if kind == "files":
        return Selection(request.files.dataset_version_id, file_ids=tuple(request.files.file_ids))
    raise InvalidArgument("a selection is required: search, query or files")


def manifest_target_of(
    target: export_pb2.ManifestTarget,
    *,
    allowed_connections: frozenset[str],
    allowed_buckets: tuple[str, ...],
) -> ManifestLocation:
    """The checked location of a manifest target."""
    if target.format not in _FORMATS:
        raise InvalidArgument(f"manifest.format {target.format} is not a known ManifestFormat")
    return manifest_location(
        storage_connection=target.storage_connection,
        bucket=target.bucket,
        prefix=target.prefix,
        format=_FORMATS[target.format],
        allowed_connections=allowed_connections,
        allowed_buckets=allowed_buckets,
    )


def logical_target_of(target: export_pb2.LogicalDatasetTarget) -> LogicalTarget:
    """The checked logical dataset target."""
    if len(target.description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(
            f"logical_dataset.description is longer than {MAX_DESCRIPTION_CHARS} characters"
        )
    return LogicalTarget(check_logical_dataset_name(target.name), target.description, target.append)
