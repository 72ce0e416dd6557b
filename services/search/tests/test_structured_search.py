"""Each structured condition alone and combined returns exactly the expected files."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from viewfinder.v1 import common_pb2, search_pb2
from viewfinder_search.testing import ACTIVE_V1, SearchStack


def ts(year: int, month: int, day: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime(year, month, day, tzinfo=UTC))
    return stamp


def tags(
    source: common_pb2.TagSource.ValueType = common_pb2.TAG_SOURCE_UNSPECIFIED, **lists: list[tuple[str, str]]
) -> search_pb2.TagFilter:
    return search_pb2.TagFilter(
        source=source,
        **{
            key: [search_pb2.TagMatch(name=name, value=value) for name, value in pairs]
            for key, pairs in lists.items()
        },
    )


CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("no condition: every active file of the version", {}, ACTIVE_V1),
    (
        "tags any_of, any source",
        {"tags": tags(any_of=[("lane line", ""), ("sky", "")])},
        {"honda", "toyota", "old", "rainy", "dry", "noai"},
    ),
    ("tags any_of, AI only", {"tags": tags(common_pb2.TAG_SOURCE_AI, any_of=[("sky", "")])}, {"dry"}),
    ("tags any_of, user only", {"tags": tags(common_pb2.TAG_SOURCE_USER, any_of=[("sky", "")])}, {"noai"}),
    (
        "tags all_of",
        {"tags": tags(all_of=[("lane line", ""), ("barrier gate", "")])},
        {"honda", "toyota", "old"},
    ),
    (
        "tags none_of (a hidden AI tag is not in effect)",
        {"tags": tags(none_of=[("lane line", "")])},
        {"dry", "noai", "hidden", "red", "top"},
    ),
    ("tag with a value", {"tags": tags(any_of=[("weather", "sunny")])}, {"red"}),
    ("tag with another value", {"tags": tags(any_of=[("weather", "rainy")])}, set()),
    (
        "name contains, case-insensitive",
        {"metadata": search_pb2.MetadataFilter(name_contains="HONDA")},
        {"honda", "red"},
    ),
    ("path prefix", {"metadata": search_pb2.MetadataFilter(path_prefix="data/red_car/")}, {"red"}),
    (
        "path prefix is case-sensitive",
        {"metadata": search_pb2.MetadataFilter(path_prefix="data/Blue")},
        set(),
    ),
    (
        "modified range: start inclusive, end exclusive",
        {
            "metadata": search_pb2.MetadataFilter(
                modified=common_pb2.TimeRange(start_time=ts(2025, 4, 1), end_time=ts(2025, 4, 11))
            )
        },
        {"toyota", "rainy", "red"},
    ),
    (
        "modified from a start only",
        {"metadata": search_pb2.MetadataFilter(modified=common_pb2.TimeRange(start_time=ts(2025, 4, 12)))},
        {"noai", "hidden"},
    ),
    (
        "formats, case-insensitive",
        {"metadata": search_pb2.MetadataFilter(formats=["png"])},
        {"rainy", "dry", "noai", "hidden"},
    ),
    (
        "several formats (a file without a format matches none)",
        {"metadata": search_pb2.MetadataFilter(formats=["jpeg", "PNG"])},
        ACTIVE_V1 - {"top"},
    ),
    (
        "width minimum",
        {"metadata": search_pb2.MetadataFilter(width=common_pb2.Int64Range(min=1000))},
        {"toyota", "rainy", "red"},
    ),
    (
        "height maximum",
        {"metadata": search_pb2.MetadataFilter(height=common_pb2.Int64Range(max=300))},
        {"dry", "noai", "hidden"},
    ),
    (
        "size range, both bounds inclusive",
        {"metadata": search_pb2.MetadataFilter(size=common_pb2.Int64Range(min=2000, max=5000))},
        {"toyota", "old", "rainy", "dry"},
    ),
    (
        "combined: format, none_of tag, height, name",
        {
            "tags": tags(none_of=[("lane line", "")]),
            "metadata": search_pb2.MetadataFilter(
                formats=["PNG"], height=common_pb2.Int64Range(max=250), name_contains="a"
            ),
        },
        {"noai"},
    ),
    (
        "combined: all_of tags, modified, width, prefix",
        {
            "tags": tags(all_of=[("lane line", ""), ("barrier gate", "")]),
            "metadata": search_pb2.MetadataFilter(
                path_prefix="data/blue_car/",
                modified=common_pb2.TimeRange(start_time=ts(2025, 3, 1)),
                width=common_pb2.Int64Range(min=600, max=2000),
            ),
        },
        {"honda", "toyota"},
    ),
    (
        "combined: any_of with none_of of the same source",
        {
            "tags": tags(
                common_pb2.TAG_SOURCE_AI,
                any_of=[("lane line", ""), ("sky", "")],
                none_of=[("barrier gate", "")],
            )
        },
        {"rainy", "dry"},
    ),
]


@pytest.mark.parametrize(("label", "fields", "expected"), CASES, ids=[case[0] for case in CASES])
async def test_condition_returns_exactly_the_expected_files(
    search_stack: SearchStack, label: str, fields: dict[str, Any], expected: set[str]
) -> None:
    names = await search_stack.names(**fields)
    assert len(names) == len(set(names)), label
    assert set(names) == expected, label


async def test_vector_query_with_conditions_ranks_only_matching_files(search_stack: SearchStack) -> None:
    response = await search_stack.search(
        text="a fallen water horse",
        top_k=3,
        metadata=search_pb2.MetadataFilter(formats=["JPEG"]),
    )
    names = search_stack.catalogue.names([r.file_id for r in response.results])
    # JPEG files nearest to (1, 0.1): honda (identical), toyota, old; "deleted" and
    # "other_version" are nearer than old but not active in this version.
    assert names == ["honda", "toyota", "old"]
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert search_stack.embed.requests[-1] == (search_stack.catalogue.dataset_id, "", "a fallen water horse")


async def test_image_uri_query_and_score_threshold(search_stack: SearchStack) -> None:
    response = await search_stack.search(image_uri="s3://queries/sky.jpg", top_k=10, score_threshold=0.9)
    names = search_stack.catalogue.names([r.file_id for r in response.results])
    assert names == ["noai", "dry"]
    assert all(r.score >= 0.9 for r in response.results)


async def test_results_carry_tags_in_effect_and_metadata(search_stack: SearchStack) -> None:
    response = await search_stack.search(metadata=search_pb2.MetadataFilter(path_prefix="data/blue_car/hi"))
    assert [r.file_id for r in response.results] == [search_stack.catalogue.file_ids["hidden"]]
    (hidden,) = response.results
    # The AI "lane line" is hidden by the user's removal, and the removal row itself is not a tag.
    assert list(hidden.tags) == []
    assert hidden.file.width == 50
    assert hidden.file.format == "PNG"
    assert hidden.uri == f"s3://{search_stack.catalogue.bucket}/data/blue_car/hidden.png"
    assert not hidden.HasField("score")

    response = await search_stack.search(
        metadata=search_pb2.MetadataFilter(path_prefix="data/blue_car/rainy")
    )
    (rainy,) = response.results
    by_name = {tag.name: tag for tag in rainy.tags}
    assert set(by_name) == {"lane line", "rainy days"}
    assert by_name["lane line"].source == common_pb2.TAG_SOURCE_AI
    assert by_name["lane line"].confidence == pytest.approx(0.75)
    assert by_name["lane line"].model == "test-vlm"
    assert by_name["rainy days"].source == common_pb2.TAG_SOURCE_USER
    assert not by_name["rainy days"].HasField("confidence")


async def test_facets_count_tags_over_the_whole_matching_set(search_stack: SearchStack) -> None:
    response = await search_stack.search(
        tags=tags(any_of=[("lane line", ""), ("sky", "")]), include_facets=True, page_size=1
    )
    assert len(response.results) == 1
    assert response.facets.matched_files == 6
    counts = {(c.name, c.value): c.count for c in response.facets.tag_counts}
    assert counts == {("lane line", ""): 4, ("barrier gate", ""): 3, ("sky", ""): 2, ("rainy days", ""): 1}
    assert [c.count for c in response.facets.tag_counts] == sorted(counts.values(), reverse=True)


async def test_facets_of_a_vector_search_cover_its_top_k(search_stack: SearchStack) -> None:
    response = await search_stack.search(text="blue sky", top_k=2, include_facets=True)
    assert search_stack.catalogue.names([r.file_id for r in response.results]) == ["noai", "dry"]
    assert response.facets.matched_files == 2
    assert {(c.name, c.count) for c in response.facets.tag_counts} == {("sky", 2)}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dataset_version_id": "v1"}, "is not a dataset version id"),
        ({"top_k": 1001, "text": "blue sky"}, "top_k must be between 1 and 1000"),
        ({"page_size": 5000}, "page_size must be between 1 and 1000"),
        ({"sort_field": search_pb2.SORT_FIELD_RELEVANCE}, "RELEVANCE needs a vector query"),
        (
            {"metadata": search_pb2.MetadataFilter(width=common_pb2.Int64Range(min=5, max=1))},
            "min 5 is greater than max 1",
        ),
        ({"tags": tags(any_of=[("", "x")])}, "tags.any_of[0].name is empty"),
        ({"query": "Width > 1", "text": "x"}, "leave vector_query unset"),
        ({"text": "   "}, "text is empty"),
        ({"image_uri": "sky.jpg"}, "is not a bucket URI"),
        ({"text": "no such text"}, "embedding the text query failed"),
    ],
)
async def test_bad_requests_are_invalid_argument(
    search_stack: SearchStack, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search_stack.search(**fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_unknown_version_is_not_found(search_stack: SearchStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search_stack.search(dataset_version_id="00000000-0000-4000-8000-000000000000")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
