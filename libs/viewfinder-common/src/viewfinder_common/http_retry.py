"""Retries for calls to remote HTTP APIs (model services, embedding services).

One policy for every client that talks to a paid or rate-limited API
(OpenAI-compatible VLMs, DashScope, PAI-EAS): retry on 408/429/5xx, on
timeouts and on dropped connections, with exponential backoff and *full
jitter* (``sleep = uniform(0, min(cap, base * 2**attempt))``, which spreads a
thundering herd best, see the AWS architecture blog "Exponential Backoff And
Jitter"), and honour a server's ``Retry-After`` (seconds or HTTP date) as a
lower bound.

The helper is transport-neutral: ``call_with_retries`` retries any awaitable
factory, ``classify_error`` decides what is retryable, and
``raise_for_status`` turns an aiohttp response into an ``HTTPStatusError``
that carries the status and the parsed ``Retry-After``. Clients may pass their
own classifier; a hook sees every retry (for counting, or for an adaptive
concurrency limiter that should back off on 429).

Error texts carry a short, redacted excerpt of the response body and never the
request headers, so an API key cannot leak through them.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from viewfinder_common.logging import MASK, redact_text

T = TypeVar("T")

# 408 Request Timeout, 425 Too Early, 429 Too Many Requests and the
# transient 5xx family; 501 (Not Implemented) and 505 are permanent.
DEFAULT_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_BODY_EXCERPT_CHARS = 300


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``max_attempts`` counts the first try: 5 means one call and up to four
    retries. ``max_retry_after_s`` bounds how long a server's Retry-After may
    make us wait; a longer demand fails the call instead of stalling a job.
    """

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0
    retry_statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("delays must not be negative")


class HTTPStatusError(Exception):
    """A response with an error status; ``retry_after_s`` is the parsed Retry-After, if any."""

    def __init__(self, status: int, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RetryDecision:
    """Whether an error is worth another try, and the least time to wait first."""

    retryable: bool
    min_delay_s: float = 0.0
    reason: str = ""


class RetriesExhausted(Exception):
    """Every attempt failed; ``last_error`` is the final one, ``attempts`` how many were made."""

    def __init__(self, message: str, *, attempts: int, last_error: BaseException) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Full-jitter delay before retry number ``attempt`` (1 for the first retry)."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, ceiling)  # jitter, not cryptography


def classify_error(error: BaseException, policy: RetryPolicy) -> RetryDecision:
    """The default classifier: statuses from the policy, timeouts and connection errors retry."""
    if isinstance(error, HTTPStatusError):
        if error.status not in policy.retry_statuses:
            return RetryDecision(False, reason=f"HTTP {error.status} is not retryable")
        return RetryDecision(True, min_delay_s=error.retry_after_s or 0.0, reason=f"HTTP {error.status}")
    if isinstance(error, TimeoutError | aiohttp.ServerTimeoutError):
        return RetryDecision(True, reason="timeout")
    if isinstance(error, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return RetryDecision(True, reason=f"connection error ({type(error).__name__})")
    return RetryDecision(False, reason=type(error).__name__)


RetryHook = Callable[[int, float, BaseException, RetryDecision], Awaitable[None] | None]


async def call_with_retries(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    classify: Callable[[BaseException, RetryPolicy], RetryDecision] = classify_error,
    on_retry: RetryHook | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """Awaits ``operation()`` until it succeeds, a non-retryable error occurs, or attempts run out.

    A non-retryable error is re-raised as is. When attempts run out the last
    error is wrapped in ``RetriesExhausted`` (its message says how many tries
    and why the last one failed). ``on_retry(attempt, delay_s, error,
    decision)`` runs before each wait. Cancellation is never retried.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            decision = classify(error, policy)
            if not decision.retryable:
                raise
            if decision.min_delay_s > policy.max_retry_after_s:
                raise RetriesExhausted(
                    f"server asked to wait {decision.min_delay_s:.0f} s (Retry-After), more than the "
                    f"{policy.max_retry_after_s:.0f} s allowed; last error: {error}",
                    attempts=attempt,
                    last_error=error,
                ) from error
            if attempt >= policy.max_attempts:
                raise RetriesExhausted(
                    f"gave up after {attempt} attempts; last error: {error}",
                    attempts=attempt,
                    last_error=error,
                ) from error
            delay = max(decision.min_delay_s, backoff_delay(attempt, policy, rng))
            if on_retry is not None:
                result = on_retry(attempt, delay, error, decision)
                if result is not None:
                    await result
            await sleep(delay)


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each (non-empty) secret masked, then redacted.

    Servers echo credentials back ("Incorrect API key provided: sk-…"), in
    forms the generic redaction cannot recognise; the caller knows its secret.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return redact_text(text)


async def raise_for_status(
    response: aiohttp.ClientResponse, *, what: str = "request", secrets: Iterable[str] = ()
) -> None:
    """Raises ``HTTPStatusError`` for a 4xx/5xx response, with a redacted body excerpt.

    The text names ``what`` was requested (e.g. "chat completion") and the
    status, never the URL's query or the request headers; ``secrets`` (the
    caller's API key) are masked wherever the body echoes them.
    """
    if response.status < 400:
        return
    try:
        body = await response.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError):
        body = ""
    excerpt = mask_secrets(" ".join(body.split()), secrets)[:_BODY_EXCERPT_CHARS]
    reason = response.reason or ""
    message = f"{what} failed: HTTP {response.status} {reason}".rstrip()
    if excerpt:
        message += f": {excerpt}"
    raise HTTPStatusError(
        response.status,
        message,
        retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
    )
