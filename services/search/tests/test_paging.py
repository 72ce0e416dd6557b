"""Sorting, keyset pagination with tamper-checked tokens, and preview URLs."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest

from viewfinder.v1 import search_pb2
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import S3Settings
from viewfinder_search.testing import ACTIVE_V1, FILES, SearchStack


def expected_order(stack: SearchStack, descending: bool) -> list[str]:
    """Files without a time sort as the latest (PostgreSQL's NULL order); equal
    times (toyota, red) go by file id."""
    timed = sorted(
        (name for name in ACTIVE_V1 if FILES[name].modified is not None),
        key=lambda name: (FILES[name].modified, stack.catalogue.file_ids[name]),
    )
    order = [*timed, "top"]
    return list(reversed(order)) if descending else order


async def page_through(stack: SearchStack, **fields: Any) -> tuple[list[str], int]:
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await stack.search(page_token=token, **fields)
        pages += 1
        names += stack.catalogue.names([r.file_id for r in response.results])
        token = response.next_page_token
        if not token:
            return names, pages


@pytest.mark.parametrize(
    "direction", [search_pb2.SORT_DIRECTION_ASCENDING, search_pb2.SORT_DIRECTION_DESCENDING]
)
@pytest.mark.parametrize("page_size", [1, 2, 4, 9, 50])
async def test_paging_visits_every_file_once_in_order(
    search_stack: SearchStack, direction: int, page_size: int
) -> None:
    names, pages = await page_through(
        search_stack,
        sort_field=search_pb2.SORT_FIELD_LAST_MODIFIED,
        sort_direction=direction,
        page_size=page_size,
    )
    descending = direction == search_pb2.SORT_DIRECTION_DESCENDING
    assert names == expected_order(search_stack, descending)
    assert pages == max(1, -(-len(ACTIVE_V1) // page_size))


async def test_default_order_without_a_vector_is_newest_first(search_stack: SearchStack) -> None:
    assert await search_stack.names() == expected_order(search_stack, descending=True)


async def test_paging_a_filtered_search(search_stack: SearchStack) -> None:
    names, _ = await page_through(search_stack, query='FileType="PNG"', page_size=3)
    assert names == [n for n in expected_order(search_stack, True) if FILES[n].format == "PNG"]


async def test_vector_results_page_by_offset_and_sort_by_modified(search_stack: SearchStack) -> None:
    by_relevance, pages = await page_through(search_stack, text="a fallen water horse", top_k=5, page_size=2)
    assert pages == 3
    assert by_relevance[:3] == ["honda", "toyota", "old"]
    assert len(by_relevance) == 5

    by_time, _ = await page_through(
        search_stack,
        text="a fallen water horse",
        top_k=5,
        page_size=2,
        sort_field=search_pb2.SORT_FIELD_LAST_MODIFIED,
        sort_direction=search_pb2.SORT_DIRECTION_ASCENDING,
    )
    assert sorted(by_time) == sorted(by_relevance)
    times = [FILES[name].modified for name in by_time]
    assert times == sorted(times)  # type: ignore[type-var]  # every top-5 file here has a time

    least_first, _ = await page_through(
        search_stack,
        text="a fallen water horse",
        top_k=5,
        page_size=5,
        sort_direction=search_pb2.SORT_DIRECTION_ASCENDING,
    )
    assert least_first == list(reversed(by_relevance))


def _tamper(token: str) -> str:
    payload, mac = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["m"] = "1999-01-01T00:00:00+00:00"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{forged}.{mac}"


async def test_tampered_or_foreign_tokens_are_rejected(search_stack: SearchStack) -> None:
    first = await search_stack.search(page_size=2)
    token = first.next_page_token
    assert token

    for bad in (
        _tamper(token),
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "garbage",
        "a.b.c",
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await search_stack.search(page_size=2, page_token=bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token is malformed or was altered" in (caught.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search_stack.search(page_size=2, page_token=token, query='FileType="PNG"')
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "belongs to a different request" in (caught.value.details() or "")

    # Only page_size may change between pages.
    second = await search_stack.search(page_size=3, page_token=token)
    assert len(second.results) == 3


async def test_preview_urls_are_presigned_and_work(search_stack: SearchStack) -> None:
    bucket = search_stack.catalogue.bucket
    key = FILES["dry"].key
    async with s3_client(S3Settings()) as s3:
        await s3.create_bucket(Bucket=bucket)
        await s3.put_object(Bucket=bucket, Key=key, Body=b"png bytes")
    response = await search_stack.search(query='FileName="dry.png"', include_preview_urls=True)
    (result,) = response.results
    assert "Signature=" in result.preview_url
    expires = result.preview_url_expire_time.ToDatetime(tzinfo=UTC)
    now = datetime.now(UTC)
    assert now + timedelta(seconds=500) < expires <= now + timedelta(seconds=601)
    async with aiohttp.ClientSession() as session, session.get(result.preview_url) as reply:
        assert reply.status == 200
        assert await reply.read() == b"png bytes"

    plain = await search_stack.search(query='FileName="dry.png"')
    assert plain.results[0].preview_url == ""
    assert not plain.results[0].HasField("preview_url_expire_time")
