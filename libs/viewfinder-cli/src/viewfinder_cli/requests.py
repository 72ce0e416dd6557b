"""Request messages built from command-line options; pure functions, no I/O.

Each function raises CliError (exit code 2) for a value the user has to fix,
naming the option it came from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml
from google.protobuf import json_format

from viewfinder.v1 import common_pb2, export_pb2, labeling_pb2, search_pb2
from viewfinder_cli.errors import CliError

_SORT_FIELDS = {
    "relevance": search_pb2.SORT_FIELD_RELEVANCE,
    "score": search_pb2.SORT_FIELD_RELEVANCE,
    "modified": search_pb2.SORT_FIELD_LAST_MODIFIED,
    "last_modified": search_pb2.SORT_FIELD_LAST_MODIFIED,
}
_SORT_DIRECTIONS = {
    "asc": search_pb2.SORT_DIRECTION_ASCENDING,
    "desc": search_pb2.SORT_DIRECTION_DESCENDING,
}
_TAG_SOURCES = {"ai": common_pb2.TAG_SOURCE_AI, "user": common_pb2.TAG_SOURCE_USER}
_MANIFEST_FORMATS = {"jsonl": export_pb2.MANIFEST_FORMAT_JSONL, "csv": export_pb2.MANIFEST_FORMAT_CSV}
_SELECTION_MODES = {
    "single": labeling_pb2.SELECTION_MODE_SINGLE,
    "multiple": labeling_pb2.SELECTION_MODE_MULTIPLE,
}
# Schemes that name an object in a bucket; anything else is a local file path.
BUCKET_URI_SCHEMES = ("s3://", "oss://")


def job_mode(*, incremental: bool) -> common_pb2.JobMode.ValueType:
    """JOB_MODE_INCREMENTAL for --incremental, else JOB_MODE_FULL."""
    return common_pb2.JOB_MODE_INCREMENTAL if incremental else common_pb2.JOB_MODE_FULL


def parse_version_number(text: str) -> int:
    """A dataset version number from "v2" or "2"."""
    digits = text.strip().lower().removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise CliError(f"--version: expected a version like v2 or 2, got {text!r}")
    return int(digits)


def parse_tag_match(text: str, option: str) -> search_pb2.TagMatch:
    """A tag condition from "name" (any value) or "name=value"."""
    name, _, value = text.partition("=")
    if not name.strip():
        raise CliError(f"{option}: expected NAME or NAME=VALUE, got {text!r}")
    return search_pb2.TagMatch(name=name.strip(), value=value.strip())


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 date or date-time; a time without a zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"{option}: expected an ISO 8601 date or time (2024-05-01, 2024-05-01T12:00:00+02:00), got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_sort(text: str) -> tuple[search_pb2.SortField.ValueType, search_pb2.SortDirection.ValueType]:
    """Sort field and direction from FIELD[:asc|desc], FIELD being relevance or modified."""
    name, _, direction = text.strip().lower().partition(":")
    if name not in _SORT_FIELDS or (direction and direction not in _SORT_DIRECTIONS):
        raise CliError(f"--sort: expected relevance or modified, optionally with :asc or :desc, got {text!r}")
    return _SORT_FIELDS[name], _SORT_DIRECTIONS.get(direction, search_pb2.SORT_DIRECTION_UNSPECIFIED)


def parse_tag_source(text: str) -> common_pb2.TagSource.ValueType:
    """TAG_SOURCE_AI or TAG_SOURCE_USER from "ai" or "user"."""
    source = _TAG_SOURCES.get(text.strip().lower())
    if source is None:
        raise CliError(f"--tag-source: expected ai or user, got {text!r}")
    return source


def parse_manifest_format(text: str) -> export_pb2.ManifestFormat.ValueType:
    """MANIFEST_FORMAT_JSONL or MANIFEST_FORMAT_CSV from "jsonl" or "csv"."""
    manifest_format = _MANIFEST_FORMATS.get(text.strip().lower())
    if manifest_format is None:
        raise CliError(f"--format: expected jsonl or csv, got {text!r}")
    return manifest_format


def parse_bucket_uri(uri: str, option: str) -> tuple[str, str]:
    """(bucket, key prefix) from s3://bucket/prefix (oss:// is accepted too)."""
    scheme = next((scheme for scheme in BUCKET_URI_SCHEMES if uri.startswith(scheme)), None)
    if scheme is None:
        raise CliError(f"{option}: expected s3://bucket/prefix, got {uri!r}")
    bucket, _, prefix = uri.removeprefix(scheme).partition("/")
    if not bucket:
        raise CliError(f"{option}: the location {uri!r} names no bucket")
    return bucket, prefix


def _int64_range(minimum: int | None, maximum: int | None) -> common_pb2.Int64Range | None:
    if minimum is None and maximum is None:
        return None
    return common_pb2.Int64Range(min=minimum, max=maximum)


@dataclass(frozen=True)
class SearchOptions:
    """The search conditions of the command line, before they become a SearchRequest."""

    text: str | None = None
    image: str | None = None
    top_k: int | None = None
    threshold: float | None = None
    any_tags: Sequence[str] = ()
    all_tags: Sequence[str] = ()
    exclude_tags: Sequence[str] = ()
    tag_source: str | None = None
    name: str | None = None
    path_prefix: str | None = None
    modified_after: str | None = None
    modified_before: str | None = None
    image_formats: Sequence[str] = ()
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    dsl: str | None = None
    sort: str | None = None
    page_size: int | None = None
    page_token: str | None = None
    facets: bool = False
    preview_urls: bool = False
    index_name: str | None = None

    def structured_flags(self) -> list[str]:
        """The flags given that a --dsl query cannot be combined with."""
        flags = {
            "--text": self.text is not None,
            "--image": self.image is not None,
            "--top-k": self.top_k is not None,
            "--threshold": self.threshold is not None,
            "--any-tag": bool(self.any_tags),
            "--all-tags": bool(self.all_tags),
            "--exclude-tag": bool(self.exclude_tags),
            "--tag-source": self.tag_source is not None,
            "--name": self.name is not None,
            "--path-prefix": self.path_prefix is not None,
            "--modified-after": self.modified_after is not None,
            "--modified-before": self.modified_before is not None,
            "--image-format": bool(self.image_formats),
            "--min-width/--max-width": self.min_width is not None or self.max_width is not None,
            "--min-height/--max-height": self.min_height is not None or self.max_height is not None,
            "--min-size/--max-size": self.min_size is not None or self.max_size is not None,
        }
        return [flag for flag, given in flags.items() if given]


def build_search_request(
    dataset_version_id: str, options: SearchOptions, read_image: Callable[[str], bytes]
) -> search_pb2.SearchRequest:
    """The SearchRequest the options describe; ``read_image`` reads a local query image."""
    request = search_pb2.SearchRequest(dataset_version_id=dataset_version_id)
    if options.dsl is not None:
        conflicting = options.structured_flags()
        if conflicting:
            raise CliError(
                f"--dsl is the whole query; drop {', '.join(conflicting)} or write them into the DSL"
            )
        request.query = options.dsl
    _set_vector_query(request, options, read_image)
    if options.top_k is not None:
        request.top_k = options.top_k
    if options.threshold is not None:
        request.score_threshold = options.threshold
    # Set the filters only when they hold a condition, so that an unfiltered
    # request stays exactly the empty message (proto3 marks a touched sub-message present).
    tags = search_pb2.TagFilter()
    _set_tag_filter(tags, options)
    if tags.ByteSize():
        request.tags.CopyFrom(tags)
    metadata = search_pb2.MetadataFilter()
    _set_metadata_filter(metadata, options)
    if metadata.ByteSize():
        request.metadata.CopyFrom(metadata)
    if options.sort is not None:
        request.sort_field, request.sort_direction = parse_sort(options.sort)
    if options.page_size is not None:
        request.page_size = options.page_size
    if options.page_token is not None:
        request.page_token = options.page_token
    request.include_facets = options.facets
    request.include_preview_urls = options.preview_urls
    if options.index_name is not None:
        request.index_name = options.index_name
    return request


def check_search_options(options: SearchOptions) -> None:
    """Raises CliError for options that cannot make a request, before any call is made."""
    build_search_request("", options, lambda _path: b"")


def _set_vector_query(
    request: search_pb2.SearchRequest, options: SearchOptions, read_image: Callable[[str], bytes]
) -> None:
    if options.text is not None and options.image is not None:
        raise CliError("--text and --image are alternatives: give one query")
    if options.text is not None:
        request.text = options.text
    elif options.image is not None:
        if options.image.startswith(BUCKET_URI_SCHEMES):
            request.image_uri = options.image
        else:
            request.image_bytes = read_image(options.image)


def _set_tag_filter(tags: search_pb2.TagFilter, options: SearchOptions) -> None:
    tags.any_of.extend(parse_tag_match(text, "--any-tag") for text in options.any_tags)
    tags.all_of.extend(parse_tag_match(text, "--all-tags") for text in options.all_tags)
    tags.none_of.extend(parse_tag_match(text, "--exclude-tag") for text in options.exclude_tags)
    if options.tag_source is not None:
        tags.source = parse_tag_source(options.tag_source)


def _set_metadata_filter(metadata: search_pb2.MetadataFilter, options: SearchOptions) -> None:
    if options.name is not None:
        metadata.name_contains = options.name
    if options.path_prefix is not None:
        metadata.path_prefix = options.path_prefix
    if options.modified_after is not None:
        metadata.modified.start_time.FromDatetime(parse_time(options.modified_after, "--modified-after"))
    if options.modified_before is not None:
        metadata.modified.end_time.FromDatetime(parse_time(options.modified_before, "--modified-before"))
    metadata.formats.extend(options.image_formats)
    for target, minimum, maximum in (
        (metadata.width, options.min_width, options.max_width),
        (metadata.height, options.min_height, options.max_height),
        (metadata.size, options.min_size, options.max_size),
    ):
        bounds = _int64_range(minimum, maximum)
        if bounds is not None:
            target.CopyFrom(bounds)


def parse_document(text: str, source: str) -> Mapping[str, Any]:
    """A mapping from YAML or JSON text (JSON is YAML, but its errors read better from json)."""
    try:
        document = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise CliError(
            f"{source}: not valid {'JSON' if source.endswith('.json') else 'YAML'}: {error}"
        ) from None
    if not isinstance(document, dict):
        raise CliError(f"{source}: expected a mapping with name, guide_prompt, tags and groups")
    return document


def tag_definition_request(
    document: Mapping[str, Any], source: str, *, name: str | None = None
) -> labeling_pb2.CreateTagDefinitionRequest:
    """CreateTagDefinitionRequest from a tag definition document.

    The document uses the message's field names (name, description, guide_prompt,
    tags[{name, description, allowed_values, group}], groups[{name, description,
    selection_mode}]); selection_mode may be written ``single`` or ``multiple``.
    Unknown keys are errors, so that a typo never silently drops a setting.
    """
    normalized = dict(document)
    if name is not None:
        normalized["name"] = name
    groups = normalized.get("groups")
    if isinstance(groups, list):
        normalized["groups"] = [_normalize_group(group) for group in groups]
    request = labeling_pb2.CreateTagDefinitionRequest()
    try:
        json_format.ParseDict(normalized, request)
    except json_format.ParseError as error:
        raise CliError(f"{source}: {error}") from None
    if not request.name:
        raise CliError(f"{source}: the definition needs a name (in the file or with --name)")
    if not request.tags:
        raise CliError(f"{source}: the definition needs at least one tag under 'tags'")
    return request


def _normalize_group(group: Any) -> Any:
    if isinstance(group, dict) and isinstance(group.get("selection_mode"), str):
        mode = _SELECTION_MODES.get(group["selection_mode"].strip().lower())
        if mode is not None:
            return {**group, "selection_mode": mode}
    return group


def tag_definition_version_request(
    tag_definition_id: str, definition: labeling_pb2.CreateTagDefinitionRequest
) -> labeling_pb2.CreateTagDefinitionVersionRequest:
    """The next version of an existing definition, with the content of ``definition``."""
    return labeling_pb2.CreateTagDefinitionVersionRequest(
        tag_definition_id=tag_definition_id,
        description=definition.description,
        guide_prompt=definition.guide_prompt,
        tags=definition.tags,
        groups=definition.groups,
    )
