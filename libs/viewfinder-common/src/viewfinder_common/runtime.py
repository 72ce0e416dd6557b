"""Process entry helper: run a service's async main until SIGTERM/SIGINT.

Kubernetes stops a pod with SIGTERM; the service's main gets a cancellation
and its ``finally`` blocks run the graceful shutdown.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs ``main(stop)``; ``stop`` is set on SIGTERM or SIGINT."""

    async def _runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(_runner())
