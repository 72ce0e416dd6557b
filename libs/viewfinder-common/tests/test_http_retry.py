"""The shared HTTP retry policy: backoff with full jitter, Retry-After, what is retryable."""

from __future__ import annotations

import email.utils
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from viewfinder_common.http_retry import (
    HTTPStatusError,
    RetriesExhausted,
    RetryPolicy,
    backoff_delay,
    call_with_retries,
    classify_error,
    mask_secrets,
    parse_retry_after,
    raise_for_status,
)


def test_parse_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)


def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [backoff_delay(attempt, policy, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not fixed


def test_classification() -> None:
    policy = RetryPolicy()
    assert classify_error(HTTPStatusError(429, "x", retry_after_s=2.0), policy).min_delay_s == 2.0
    assert classify_error(HTTPStatusError(503, "x"), policy).retryable
    assert not classify_error(HTTPStatusError(400, "x"), policy).retryable
    assert not classify_error(HTTPStatusError(401, "x"), policy).retryable
    assert classify_error(TimeoutError(), policy).retryable
    assert classify_error(aiohttp.ClientConnectionError(), policy).retryable
    assert not classify_error(ValueError(), policy).retryable


async def test_retries_until_success_honouring_retry_after() -> None:
    outcomes: list[BaseException | str] = [
        HTTPStatusError(429, "slow down", retry_after_s=3.0),
        TimeoutError(),
        "ok",
    ]
    sleeps: list[float] = []
    seen: list[int] = []

    async def operation() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    result = await call_with_retries(
        operation,
        RetryPolicy(base_delay_s=0.1, max_delay_s=1.0),
        sleep=sleep,
        on_retry=lambda attempt, *_: seen.append(attempt),
    )
    assert result == "ok"
    assert seen == [1, 2]
    assert sleeps[0] >= 3.0  # Retry-After is a lower bound
    assert 0.0 <= sleeps[1] <= 0.2


async def test_gives_up_after_max_attempts_and_never_retries_permanent_errors() -> None:
    calls = 0

    async def always_503() -> None:
        nonlocal calls
        calls += 1
        raise HTTPStatusError(503, "unavailable")

    async def no_sleep(_: float) -> None:
        return None

    with pytest.raises(RetriesExhausted, match="gave up after 3 attempts; last error: unavailable") as info:
        await call_with_retries(always_503, RetryPolicy(max_attempts=3), sleep=no_sleep)
    assert calls == 3
    assert info.value.attempts == 3

    calls = 0

    async def bad_request() -> None:
        nonlocal calls
        calls += 1
        raise HTTPStatusError(400, "bad")

    with pytest.raises(HTTPStatusError):
        await call_with_retries(bad_request, RetryPolicy(), sleep=no_sleep)
    assert calls == 1

    async def wants_an_hour() -> None:
        raise HTTPStatusError(429, "later", retry_after_s=3600)

    with pytest.raises(RetriesExhausted, match="Retry-After"):
        await call_with_retries(wants_an_hour, RetryPolicy(max_retry_after_s=60), sleep=no_sleep)


@pytest.fixture
async def echoing_server() -> AsyncIterator[str]:
    """A real HTTP server that answers 429 with Retry-After and echoes the Authorization header."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": f"quota exceeded for key {request.headers.get('Authorization', '')}"}},
            status=429,
            headers={"Retry-After": "7"},
        )

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def test_raise_for_status_parses_retry_after_and_masks_the_key(echoing_server: str) -> None:
    secret = "sk-abcdef0123456789"  # not Bearer-shaped in the text: only the explicit mask catches it
    async with (
        aiohttp.ClientSession() as session,
        session.get(echoing_server, headers={"Authorization": secret}) as response,
    ):
        with pytest.raises(HTTPStatusError) as info:
            await raise_for_status(response, what="chat completion", secrets=[secret])
    assert info.value.status == 429
    assert info.value.retry_after_s == 7.0
    assert str(info.value).startswith("chat completion failed: HTTP 429 Too Many Requests")
    assert secret not in str(info.value)
    assert "***" in str(info.value)
    assert mask_secrets("key sk-1 and password=x", ["sk-1"]) == "key *** and password=***"
