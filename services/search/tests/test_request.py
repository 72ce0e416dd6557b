"""SearchRequest checks and normalisation (no I/O)."""

from __future__ import annotations

import pytest

from viewfinder.v1 import common_pb2, search_pb2
from viewfinder_common.errors import InvalidArgument
from viewfinder_search.domain.conditions import AllOf, AnyOf, HasTag, Not, TagSourceScope
from viewfinder_search.domain.dsl import QueryError
from viewfinder_search.domain.request import SortKey, search_spec
from viewfinder_search.domain.semantic import DEFAULT_TOP_K, ImageBytesQuery, TextQuery

VERSION = "6f1c9a52-8d1e-4a57-9d0c-2b1f5f0f3a11"


def request(**fields: object) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(dataset_version_id=VERSION, **fields)  # type: ignore[arg-type]


def test_defaults() -> None:
    spec = search_spec(request())
    assert spec.condition == AllOf(())
    assert spec.vector is None
    assert (spec.sort_key, spec.descending, spec.page_size) == (SortKey.MODIFIED, True, 100)

    spec = search_spec(request(text="red car"))
    assert spec.vector is not None
    assert spec.vector.query == TextQuery("red car")
    assert spec.vector.top_k == DEFAULT_TOP_K
    assert spec.vector.score_threshold is None
    assert spec.sort_key is SortKey.RELEVANCE


def test_tag_filter_lists_are_anded_with_the_chosen_source() -> None:
    tags = search_pb2.TagFilter(
        any_of=[search_pb2.TagMatch(name="a"), search_pb2.TagMatch(name="b", value="v")],
        all_of=[search_pb2.TagMatch(name="c")],
        none_of=[search_pb2.TagMatch(name="d")],
        source=common_pb2.TAG_SOURCE_USER,
    )
    spec = search_spec(request(tags=tags, image_bytes=b"\x89PNG", score_threshold=0.3, top_k=7))
    user = TagSourceScope.USER
    assert spec.condition == AllOf(
        (
            AnyOf((HasTag(user, name="a"), HasTag(user, name="b", value="v"))),
            HasTag(user, name="c"),
            Not(HasTag(user, name="d")),
        )
    )
    assert spec.vector is not None
    assert spec.vector.query == ImageBytesQuery(b"\x89PNG")
    assert spec.vector.top_k == 7
    assert spec.vector.score_threshold == pytest.approx(0.3)


def test_query_is_the_whole_query() -> None:
    with pytest.raises(InvalidArgument, match="leave vector_query, tags, top_k, score_threshold unset"):
        search_spec(
            request(
                query='Content:"x"',
                text="y",
                tags=search_pb2.TagFilter(any_of=[search_pb2.TagMatch(name="a")]),
                top_k=3,
                score_threshold=0.1,
            )
        )
    spec = search_spec(request(query='Content:"x" AND TopK=3', include_facets=True, page_size=2))
    assert spec.vector is not None
    assert spec.vector.top_k == 3
    assert spec.include_facets
    assert spec.page_size == 2


def test_dsl_errors_surface_as_query_errors() -> None:
    with pytest.raises(QueryError) as caught:
        search_spec(request(query="Width >"))
    assert (caught.value.line, caught.value.column) == (1, 8)


def test_fingerprint_ignores_only_paging() -> None:
    base = search_spec(request(query="Width > 1")).fingerprint
    assert search_spec(request(query="Width > 1", page_size=7, page_token="t")).fingerprint == base
    assert search_spec(request(query="Width > 2")).fingerprint != base
    assert search_spec(request(query="Width > 1", include_facets=True)).fingerprint != base


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"top_k": -1, "text": "x"}, "top_k must be between 1 and 1000"),
        ({"score_threshold": float("nan"), "text": "x"}, "score_threshold must be a finite number"),
        ({"text": "x" * 2049}, "longer than 2048"),
        ({"image_bytes": b""}, "image_bytes is empty"),
        ({"page_size": -1}, "page_size must be between 1 and 1000"),
        ({"sort_field": 9}, "not a known SortField"),
        ({"sort_direction": 9}, "not a known SortDirection"),
        ({"metadata": search_pb2.MetadataFilter(formats=[" "])}, "empty format name"),
    ],
)
def test_invalid_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        search_spec(request(**fields))
