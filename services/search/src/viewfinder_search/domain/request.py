"""Turns a SearchRequest into a checked ``SearchSpec``.

The structured fields (tag and metadata filters) and the DSL ``query`` both
end up as one condition tree plus an optional vector search, so everything
after this point has a single shape to handle.
"""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from viewfinder.v1 import common_pb2, search_pb2
from viewfinder_common.errors import InvalidArgument
from viewfinder_search.domain.conditions import (
    AnyOf,
    Compare,
    Comparison,
    Condition,
    HasTag,
    Not,
    OneOf,
    OrderedAttribute,
    TagSourceScope,
    TextAttribute,
    TextMatch,
    TextMatchMode,
    all_of,
)
from viewfinder_search.domain.dsl import parse_query
from viewfinder_search.domain.page_token import request_fingerprint
from viewfinder_search.domain.semantic import (
    DEFAULT_TOP_K,
    MAX_QUERY_TEXT_CHARS,
    MAX_TOP_K,
    ImageBytesQuery,
    ImageUriQuery,
    SemanticQuery,
    TextQuery,
    VectorSearch,
)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class SortKey(enum.Enum):
    """What results are ordered by."""

    RELEVANCE = "relevance"
    MODIFIED = "modified"


@dataclass(frozen=True)
class SearchSpec:
    """One checked search request."""

    dataset_version_id: str
    condition: Condition
    vector: VectorSearch | None
    sort_key: SortKey
    descending: bool
    page_size: int
    page_token: str
    include_facets: bool
    include_preview_urls: bool
    index_name: str
    # Identifies the request apart from paging, so a page token fits only its own request.
    fingerprint: str


_SCOPES = {
    common_pb2.TAG_SOURCE_UNSPECIFIED: TagSourceScope.ALL,
    common_pb2.TAG_SOURCE_AI: TagSourceScope.AI,
    common_pb2.TAG_SOURCE_USER: TagSourceScope.USER,
}


def _tag(match: search_pb2.TagMatch, scope: TagSourceScope, where: str) -> HasTag:
    if not match.name:
        raise InvalidArgument(f"{where}.name is empty; name the tag")
    return HasTag(scope, name=match.name, value=match.value or None)


def tag_condition(tags: search_pb2.TagFilter) -> list[Condition]:
    """The conditions of a TagFilter (any_of, all_of and none_of ANDed)."""
    scope = _SCOPES.get(tags.source)
    if scope is None:
        raise InvalidArgument(f"tags.source {tags.source} is not a known TagSource")
    conditions: list[Condition] = []
    if tags.any_of:
        conditions.append(
            AnyOf(tuple(_tag(m, scope, f"tags.any_of[{i}]") for i, m in enumerate(tags.any_of)))
        )
    conditions.extend(_tag(m, scope, f"tags.all_of[{i}]") for i, m in enumerate(tags.all_of))
    conditions.extend(Not(_tag(m, scope, f"tags.none_of[{i}]")) for i, m in enumerate(tags.none_of))
    return conditions


def _time(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def _int_range(
    bounds: common_pb2.Int64Range | None, name: str, attribute: OrderedAttribute
) -> list[Condition]:
    if bounds is None:
        return []
    conditions: list[Condition] = []
    if bounds.HasField("min"):
        conditions.append(Compare(attribute, Comparison.GE, bounds.min))
    if bounds.HasField("max"):
        conditions.append(Compare(attribute, Comparison.LE, bounds.max))
    if bounds.HasField("min") and bounds.HasField("max") and bounds.min > bounds.max:
        raise InvalidArgument(f"metadata.{name}: min {bounds.min} is greater than max {bounds.max}")
    return conditions


def metadata_condition(metadata: search_pb2.MetadataFilter) -> list[Condition]:
    """The conditions of a MetadataFilter, ANDed."""
    conditions: list[Condition] = []
    if metadata.name_contains:
        conditions.append(TextMatch(TextAttribute.NAME, TextMatchMode.CONTAINS, metadata.name_contains))
    if metadata.path_prefix:
        conditions.append(TextMatch(TextAttribute.KEY, TextMatchMode.PREFIX, metadata.path_prefix))
    if metadata.HasField("modified"):
        start = metadata.modified.start_time if metadata.modified.HasField("start_time") else None
        end = metadata.modified.end_time if metadata.modified.HasField("end_time") else None
        if start is not None:
            conditions.append(Compare(OrderedAttribute.MODIFIED, Comparison.GE, _time(start)))
        if end is not None:
            conditions.append(Compare(OrderedAttribute.MODIFIED, Comparison.LT, _time(end)))
        if start is not None and end is not None and _time(start) >= _time(end):
            raise InvalidArgument("metadata.modified: start_time must be before end_time")
    if metadata.formats:
        if any(not value.strip() for value in metadata.formats):
            raise InvalidArgument("metadata.formats holds an empty format name")
        conditions.append(OneOf(TextAttribute.FORMAT, tuple(metadata.formats)))
    width = metadata.width if metadata.HasField("width") else None
    height = metadata.height if metadata.HasField("height") else None
    size = metadata.size if metadata.HasField("size") else None
    conditions.extend(_int_range(width, "width", OrderedAttribute.WIDTH))
    conditions.extend(_int_range(height, "height", OrderedAttribute.HEIGHT))
    conditions.extend(_int_range(size, "size", OrderedAttribute.SIZE))
    return conditions


def _semantic_from_request(request: search_pb2.SearchRequest) -> SemanticQuery | None:
    kind = request.WhichOneof("vector_query")
    if kind == "text":
        text = request.text.strip()
        if not text:
            raise InvalidArgument("text is empty; give a query text or leave vector_query unset")
        if len(text) > MAX_QUERY_TEXT_CHARS:
            raise InvalidArgument(f"text is longer than {MAX_QUERY_TEXT_CHARS} characters")
        return TextQuery(text)
    if kind == "image_bytes":
        if not request.image_bytes:
            raise InvalidArgument("image_bytes is empty")
        return ImageBytesQuery(request.image_bytes)
    if kind == "image_uri":
        if "://" not in request.image_uri:
            raise InvalidArgument(
                f"image_uri {request.image_uri!r} is not a bucket URI like s3://bucket/key.jpg"
            )
        return ImageUriQuery(request.image_uri)
    return None


def _check_top_k(top_k: int) -> int:
    if top_k == 0:
        return DEFAULT_TOP_K
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidArgument(
            f"top_k must be between 1 and {MAX_TOP_K} (0 means {DEFAULT_TOP_K}), got {top_k}"
        )
    return top_k


def _check_threshold(threshold: float | None) -> float | None:
    if threshold is not None and not math.isfinite(threshold):
        raise InvalidArgument("score_threshold must be a finite number")
    return threshold


def _fingerprint(request: search_pb2.SearchRequest) -> str:
    unpaged = search_pb2.SearchRequest()
    unpaged.CopyFrom(request)
    unpaged.ClearField("page_token")
    unpaged.ClearField("page_size")
    return request_fingerprint(unpaged.SerializeToString(deterministic=True))


def _dsl_part(request: search_pb2.SearchRequest) -> tuple[Condition, VectorSearch | None]:
    structured = []
    if request.WhichOneof("vector_query"):
        structured.append("vector_query")
    if request.HasField("tags"):
        structured.append("tags")
    if request.HasField("metadata"):
        structured.append("metadata")
    if request.top_k:
        structured.append("top_k")
    if request.HasField("score_threshold"):
        structured.append("score_threshold")
    if structured:
        raise InvalidArgument(
            f"query is the whole query when set; leave {', '.join(structured)} unset or move them into it"
        )
    compiled = parse_query(request.query)
    if compiled.semantic is None:
        return compiled.condition, None
    vector = VectorSearch(
        compiled.semantic,
        top_k=compiled.top_k or DEFAULT_TOP_K,
        score_threshold=_check_threshold(compiled.score_threshold),
    )
    return compiled.condition, vector


def _structured_part(request: search_pb2.SearchRequest) -> tuple[Condition, VectorSearch | None]:
    condition = all_of([*tag_condition(request.tags), *metadata_condition(request.metadata)])
    semantic = _semantic_from_request(request)
    if semantic is None:
        return condition, None
    threshold = request.score_threshold if request.HasField("score_threshold") else None
    vector = VectorSearch(
        semantic, top_k=_check_top_k(request.top_k), score_threshold=_check_threshold(threshold)
    )
    return condition, vector


def _sort(request: search_pb2.SearchRequest, vector: VectorSearch | None) -> tuple[SortKey, bool]:
    if request.sort_field == search_pb2.SORT_FIELD_RELEVANCE and vector is None:
        raise InvalidArgument("sort_field RELEVANCE needs a vector query (text, image or Content/Image)")
    if request.sort_field == search_pb2.SORT_FIELD_LAST_MODIFIED:
        sort_key = SortKey.MODIFIED
    elif request.sort_field in (search_pb2.SORT_FIELD_RELEVANCE, search_pb2.SORT_FIELD_UNSPECIFIED):
        sort_key = SortKey.RELEVANCE if vector is not None else SortKey.MODIFIED
    else:
        raise InvalidArgument(f"sort_field {request.sort_field} is not a known SortField")
    if request.sort_direction not in (
        search_pb2.SORT_DIRECTION_UNSPECIFIED,
        search_pb2.SORT_DIRECTION_ASCENDING,
        search_pb2.SORT_DIRECTION_DESCENDING,
    ):
        raise InvalidArgument(f"sort_direction {request.sort_direction} is not a known SortDirection")
    return sort_key, request.sort_direction != search_pb2.SORT_DIRECTION_ASCENDING


def search_spec(request: search_pb2.SearchRequest) -> SearchSpec:
    """Checks a SearchRequest (INVALID_ARGUMENT with the field at fault) and normalises it."""
    try:
        uuid.UUID(request.dataset_version_id)
    except ValueError:
        raise InvalidArgument(
            f"dataset_version_id {request.dataset_version_id!r} is not a dataset version id (a UUID)"
        ) from None
    if request.query:
        condition, vector = _dsl_part(request)
    else:
        condition, vector = _structured_part(request)
    sort_key, descending = _sort(request, vector)
    page_size = request.page_size or DEFAULT_PAGE_SIZE
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {request.page_size}")

    return SearchSpec(
        dataset_version_id=request.dataset_version_id,
        condition=condition,
        vector=vector,
        sort_key=sort_key,
        descending=descending,
        page_size=page_size,
        page_token=request.page_token,
        include_facets=request.include_facets,
        include_preview_urls=request.include_preview_urls,
        index_name=request.index_name,
        fingerprint=_fingerprint(request),
    )
