"""Waiting in tests for something that other processes make true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], what: str, *, timeout_s: float = 90.0, interval_s: float = 0.3
) -> T:
    """Polls the async ``check`` until it returns something truthy and returns that; fails
    (AssertionError naming ``what`` and the last value) once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s:.0f} s (last: {value!r})")
        await asyncio.sleep(interval_s)
