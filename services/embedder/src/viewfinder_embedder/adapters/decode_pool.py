"""The decode pool: image decoding in worker processes, off the event loop and the GIL.

Workers are spawned (not forked: the service process holds threads of ONNX
Runtime, gRPC and Kafka clients, which a fork would copy in a broken state).
A worker that dies (out of memory on a huge image, a crash in a codec) fails
only the file it was decoding; the pool is rebuilt for the next ones.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial

from viewfinder_common.logging import get_logger
from viewfinder_embedder.domain.decode import DecodeFailure, DecodeResult, FitMode, decode_image

log = get_logger(__name__)


class ProcessPoolDecoder:
    """``ImageDecoder`` over a process pool."""

    def __init__(self, *, workers: int = 0, max_pixels: int, fit: FitMode = "pad") -> None:
        self._workers = workers or os.cpu_count() or 1
        self._max_pixels = max_pixels
        self._fit: FitMode = fit
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self._workers, mp_context=multiprocessing.get_context("spawn"))

    async def decode(self, data: bytes, size: int) -> DecodeResult:
        """Decodes in a worker process; a dead worker is a failure of this file only."""
        pool = self._pool
        call = partial(decode_image, data, size=size, max_pixels=self._max_pixels, fit=self._fit)
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, call)
        except BrokenProcessPool:
            if self._pool is pool:
                log.warning("decode_pool_rebuilt", reason="a worker process died")
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            return DecodeFailure(
                "the decoder process died while decoding this image (too large for its memory?)"
            )

    async def warm_up(self) -> None:
        """Starts the worker processes now rather than on the first image."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, os.getpid) for _ in range(self._workers)))

    def close(self) -> None:
        """Stops the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)
