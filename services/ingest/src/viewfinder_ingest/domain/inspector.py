"""Reading an object's first bytes and inspecting them off the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

from viewfinder_ingest.domain.inspection import InspectionLimits, NeedMoreBytes, inspect_image
from viewfinder_ingest.domain.models import FileStatus, ImageInfo, ListedObject
from viewfinder_ingest.domain.ports import ObjectStore


@dataclass(frozen=True, slots=True)
class InspectedObject:
    """An object as the GET saw it (which may be newer than a listing) and what it is."""

    object: ListedObject
    info: ImageInfo


class ObjectInspector:
    """Ranged GET of the header bytes (more if the header lies further in), then Pillow in a pool."""

    def __init__(
        self,
        store: ObjectStore,
        executor: Executor,
        *,
        limits: InspectionLimits,
        header_bytes: int,
        max_header_bytes: int,
        concurrency: int,
    ) -> None:
        self._store = store
        self._executor = executor
        self._limits = limits
        self._header_bytes = header_bytes
        self._max_header_bytes = max(max_header_bytes, header_bytes)
        self._slots = asyncio.Semaphore(concurrency)

    async def inspect(self, bucket: str, listed: ListedObject) -> InspectedObject | None:
        """Inspects a listed object; None if it vanished since it was listed."""
        if listed.size == 0:
            return InspectedObject(listed, ImageInfo(FileStatus.CORRUPT, error="zero-byte object"))
        return await self.inspect_key(bucket, listed.key)

    async def inspect_key(self, bucket: str, key: str) -> InspectedObject | None:
        """Reads and inspects whatever the object is now; None if it does not exist."""
        length = self._header_bytes
        async with self._slots:
            while True:
                head = await self._store.read_head(bucket, key, length)
                if head is None:
                    return None
                current = ListedObject(key, head.size, head.etag, head.last_modified)
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    self._executor, partial(inspect_image, head.data, head.size, self._limits)
                )
                if isinstance(result, ImageInfo):
                    return InspectedObject(current, result)
                if length >= self._max_header_bytes or len(head.data) >= head.size:
                    return InspectedObject(current, _header_not_found(result, length))
                length = self._max_header_bytes


def _header_not_found(result: NeedMoreBytes, length: int) -> ImageInfo:
    return ImageInfo(
        FileStatus.CORRUPT,
        error=f"{result.reason}: no readable image header in the first {length} bytes",
    )
