"""An AIMD concurrency limiter for calls to a rate-limited model service.

Additive increase, multiplicative decrease, as TCP congestion control does:
each 429 (the service telling us we are too many) halves the number of calls
allowed in flight; each success adds ``1/limit``, so the limit grows by about
one per round of successful calls. Like TCP, it halves at most once per
round: a burst of 429s answering calls that all started before the last
decrease counts as one signal, not as many (else one burst would collapse the
limit to the minimum).

One limiter is shared by everything that calls the same model connection
(label jobs and automatic labeling), below each job's own max concurrency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class Slot:
    """One admitted call; report its outcome with ``succeeded`` or ``overloaded``."""

    epoch: int
    outcome_reported: bool = False


class AdaptiveConcurrencyLimiter:
    """Admits calls while fewer than ``limit`` are in flight; the limit adapts (AIMD)."""

    def __init__(self, *, maximum: int, minimum: int = 1, initial: int | None = None) -> None:
        if minimum < 1 or maximum < minimum:
            raise ValueError("need 1 <= minimum <= maximum")
        self._minimum = minimum
        self._maximum = maximum
        self._limit = float(initial if initial is not None else maximum)
        self._limit = min(float(maximum), max(float(minimum), self._limit))
        self._in_flight = 0
        # Bumped on every decrease; slots admitted before it cannot decrease again.
        self._epoch = 0
        self._changed = asyncio.Condition()
        self.decreases = 0

    @property
    def limit(self) -> int:
        """Calls allowed in flight now."""
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet released."""
        return self._in_flight

    async def acquire(self) -> Slot:
        """Waits until a call may start."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_flight < int(self._limit))
            self._in_flight += 1
            return Slot(epoch=self._epoch)

    async def release(self, slot: Slot) -> None:
        """Ends a call (whatever its outcome) and lets a waiting one start."""
        async with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def succeeded(self, slot: Slot) -> None:
        """A call succeeded: grow by 1/limit (about +1 per round of successful calls)."""
        if slot.outcome_reported:
            return
        slot.outcome_reported = True
        # Waiters are woken by the release that follows every outcome.
        self._limit = min(float(self._maximum), self._limit + 1.0 / self._limit)

    def overloaded(self, slot: Slot) -> None:
        """The service answered 429 (or similar) to this call: halve, once per round."""
        if slot.epoch < self._epoch:
            return  # started before the last decrease: part of the same congestion signal
        self._epoch += 1
        self.decreases += 1
        self._limit = max(float(self._minimum), self._limit / 2.0)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """``async with limiter.slot() as slot:`` acquires, and always releases."""
        slot = await self.acquire()
        try:
            yield slot
        finally:
            await self.release(slot)
