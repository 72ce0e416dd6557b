"""What every remote embedding client does the same way: prepare items, batch, reassemble.

A client subclasses ``BatchedEmbeddingClient`` and implements ``_embed_batch``
(one request in its vendor's wire format); images are downscaled to the
vendor's limits off the event loop and sent as data URIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from viewfinder_common.embedding_clients import EmbeddingInput
from viewfinder_common.embedding_clients.images import data_uri, fit_image


class BatchedEmbeddingClient:
    """Embeds items in batches of ``max_items`` that run concurrently, keeping their order."""

    def __init__(self, *, max_items: int, max_image_bytes: int, max_image_side: int) -> None:
        self._max_items = max_items
        self._max_image_bytes = max_image_bytes
        self._max_image_side = max_image_side

    async def embed(self, items: Sequence[EmbeddingInput]) -> list[list[float]]:
        """One vector per item, in order; batches of ``max_items`` run concurrently."""
        contents = await asyncio.gather(*(self._content(item) for item in items))
        batches = [
            contents[start : start + self._max_items] for start in range(0, len(contents), self._max_items)
        ]
        results = await asyncio.gather(*(self._embed_batch(batch) for batch in batches))
        return [vector for batch in results for vector in batch]

    async def embed_images(self, images: Sequence[bytes]) -> list[list[float]]:
        """One vector per encoded image."""
        return await self.embed([EmbeddingInput(image=image) for image in images])

    async def embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text."""
        return await self.embed([EmbeddingInput(text=text) for text in texts])

    async def _content(self, item: EmbeddingInput) -> dict[str, str]:
        if item.text is not None:
            return {"text": item.text}
        assert item.image is not None
        image = await asyncio.to_thread(
            fit_image, item.image, max_bytes=self._max_image_bytes, max_side=self._max_image_side
        )
        return {"image": data_uri(image)}

    async def _embed_batch(self, contents: list[dict[str, str]]) -> list[list[float]]:
        """One request with ``contents`` (at most ``max_items``); one vector per content, in order."""
        raise NotImplementedError
