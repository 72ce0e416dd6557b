"""The AIMD limiter: halves once per round of 429s, grows slowly, never admits more than its limit."""

from __future__ import annotations

import asyncio

from viewfinder_tagger.domain.adaptive_limit import AdaptiveConcurrencyLimiter


async def test_halves_once_per_round_and_grows_back_additively() -> None:
    limiter = AdaptiveConcurrencyLimiter(maximum=16)
    slots = [await limiter.acquire() for _ in range(8)]
    # Eight calls of the same round all answered 429: one decrease, not eight.
    for slot in slots:
        limiter.overloaded(slot)
    assert limiter.limit == 8
    assert limiter.decreases == 1
    for slot in slots:
        await limiter.release(slot)
    # A call admitted after the decrease is a new signal.
    slot = await limiter.acquire()
    limiter.overloaded(slot)
    await limiter.release(slot)
    assert limiter.limit == 4
    # About one more per round of `limit` successes.
    for _ in range(4):
        slot = await limiter.acquire()
        limiter.succeeded(slot)
        await limiter.release(slot)
    assert limiter.limit == 4 or limiter.limit == 5
    for _ in range(200):
        slot = await limiter.acquire()
        limiter.succeeded(slot)
        await limiter.release(slot)
    assert limiter.limit == 16  # capped at the maximum


async def test_never_below_minimum_and_waiters_block_at_the_limit() -> None:
    limiter = AdaptiveConcurrencyLimiter(maximum=2, minimum=1)
    first = await limiter.acquire()
    limiter.overloaded(first)
    assert limiter.limit == 1
    second_started = asyncio.Event()

    async def second() -> None:
        async with limiter.slot():
            second_started.set()

    task = asyncio.create_task(second())
    await asyncio.sleep(0.05)
    assert not second_started.is_set(), "a second call must wait while the limit is 1"
    await limiter.release(first)
    await asyncio.wait_for(task, 5)
    assert second_started.is_set()
    slot = await limiter.acquire()
    limiter.overloaded(slot)
    assert limiter.limit == 1
    await limiter.release(slot)
    assert limiter.in_flight == 0
