"""The DSL over gRPC against the real catalogue: the issue's example, error details, injection."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import status_pb2  # type: ignore[import-untyped]

from viewfinder.v1 import search_pb2
from viewfinder_search.handlers.grpc_search import STATUS_DETAILS_KEY
from viewfinder_search.testing import ACTIVE_V1, SearchStack

EXAMPLE = (
    '(FileUpdateTime > "2025-02-28T00:00:00Z" AND FileUpdateTime < "2025-05-30T09:27:29Z") '
    'AND FileDir:"blue_car" AND NOT FileName="toyota.jpg" '
    'AND ((Tags.all="lane line" AND Tags.all="barrier gate") OR NOT Tags.user="rainy days") '
    'AND HAS Tags.ai AND Content:"a fallen water horse" AND TopK=100'
)


async def test_issue_example_evaluates_correctly(search_stack: SearchStack) -> None:
    response = await search_stack.search(query=EXAMPLE)
    names = search_stack.catalogue.names([r.file_id for r in response.results])
    # honda: in range, blue_car, not toyota, lane line + barrier gate, AI tags.
    # dry: in range, blue_car, no "rainy days" user tag, an AI tag ("sky").
    # Excluded: toyota (name), old (time), rainy (user "rainy days" and not both tags),
    # noai (no AI tag), hidden (its only AI tag is hidden), red (dir), deleted, other version.
    assert names == ["honda", "dry"]
    assert response.results[0].score > response.results[1].score
    assert search_stack.embed.requests[-1][2] == "a fallen water horse"


async def test_example_filter_without_the_semantic_part(search_stack: SearchStack) -> None:
    query = EXAMPLE.replace(' AND Content:"a fallen water horse" AND TopK=100', "")
    assert set(await search_stack.names(query=query)) == {"honda", "dry"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('FileName="honda.jpg"', {"honda"}),
        ('FileName:"HONDA"', {"honda", "red"}),
        ('FileDir="data/red_car"', {"red"}),
        ('FileDir="data/red_car/"', {"red"}),
        ('FileDir:"CAR"', ACTIVE_V1 - {"top"}),
        # Token match: _ and % are plain characters ("_" would match the "/" otherwise).
        ('FileDir:"ue_car"', {"honda", "toyota", "old", "rainy", "dry", "noai", "hidden"}),
        ('FileDir:"data_red"', set()),
        ('FileDir:"red%"', set()),
        ('FileType="png"', {"rainy", "dry", "noai", "hidden"}),
        ("NOT HAS FileType", {"top"}),
        ("NOT HAS FileDir", {"top"}),
        ("FileSize >= 7000", {"hidden", "red"}),
        ("FileSize = 10", {"top"}),
        ("Width > 1000 AND Height <= 768", {"rainy"}),
        ("NOT Width > 1000", ACTIVE_V1 - {"toyota", "rainy", "red"}),
        ('FileUpdateTime >= "2025-04-12"', {"noai", "hidden"}),
        ('FileUpdateTime = "2025-04-01T12:00:00Z"', {"toyota", "red"}),
        ("NOT HAS FileUpdateTime", {"top"}),
        ('Tags.user="sky"', {"noai"}),
        ('Tags.ai="sky"', {"dry"}),
        ('Tags.all:"LANE"', {"honda", "toyota", "old", "rainy"}),
        ("HAS Tags.user", {"rainy", "noai"}),
        ("NOT HAS Tags.all", {"hidden", "top"}),
        ('Tags.ai="weather"', {"red"}),
        ('FileName="dry.png" OR FileName="noai.png" OR FileSize < 100', {"dry", "noai", "top"}),
    ],
)
async def test_dsl_condition_returns_exactly_the_expected_files(
    search_stack: SearchStack, query: str, expected: set[str]
) -> None:
    assert set(await search_stack.names(query=query)) == expected


async def test_dsl_image_query_with_threshold(search_stack: SearchStack) -> None:
    names = await search_stack.names(
        query='Image="s3://queries/sky.jpg" AND ScoreThreshold=0.9 AND FileType="PNG"'
    )
    assert names == ["noai", "dry"]


async def test_query_error_carries_position_and_expected_tokens(search_stack: SearchStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search_stack.search(query='FileDir:"blue_car" AND\n  Width ! 3')
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "query error at line 2, column 9: unexpected character '!'; expected an operator (= : > >= < <=)"
    )
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers[STATUS_DETAILS_KEY])
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    detail = search_pb2.QueryError()
    assert status.details[0].Unpack(detail)
    assert (detail.line, detail.column) == (2, 9)
    assert list(detail.expected) == ["an operator (= : > >= < <=)"]


async def test_type_error_over_grpc(search_stack: SearchStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search_stack.search(query='Width > 1 OR Content:"a fallen water horse"')
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 1, column 14: Content may only appear in the top-level AND chain" in (
        caught.value.details() or ""
    )


INJECTIONS = [
    "x'; DROP TABLE files; --",
    "' OR '1'='1",
    "honda.jpg' OR 1=1 --",
    '"; DELETE FROM file_tags; --',
    "$1",
    "%",
    "'); TRUNCATE files CASCADE; SELECT ('",
    "lane line' OR tag <> '",
]


@pytest.mark.parametrize("payload", INJECTIONS)
async def test_injection_attempts_are_harmless(search_stack: SearchStack, payload: str) -> None:
    escaped = payload.replace("\\", "\\\\").replace('"', '\\"')
    async with search_stack.pool.acquire() as conn:
        before = (
            await conn.fetchval("SELECT count(*) FROM files"),
            await conn.fetchval("SELECT count(*) FROM file_tags"),
        )
    for query in (
        f'FileName="{escaped}"',
        f'FileName:"{escaped}"',
        f'FileDir:"{escaped}"',
        f'Tags.all="{escaped}"',
        f'Tags.ai:"{escaped}" OR FileType="{escaped}"',
    ):
        assert await search_stack.names(query=query) == [], query
    assert (
        await search_stack.names(
            metadata=search_pb2.MetadataFilter(name_contains=payload, path_prefix=payload)
        )
        == []
    )
    assert (
        await search_stack.names(tags=search_pb2.TagFilter(any_of=[search_pb2.TagMatch(name=payload)])) == []
    )
    # A payload inside a NOT keeps every file: it was compared as text, nothing more.
    assert set(await search_stack.names(query=f'NOT FileName="{escaped}"')) == ACTIVE_V1
    async with search_stack.pool.acquire() as conn:
        after = (
            await conn.fetchval("SELECT count(*) FROM files"),
            await conn.fetchval("SELECT count(*) FROM file_tags"),
        )
    assert after == before
