"""Fetch, decode and embed a set of files, overlapping the three stages.

Objects are fetched and decoded concurrently (at most ``concurrency`` at a
time; decoding happens in the decode pool's processes), and every time
``batch_size`` images are ready they go to the model while the rest keep
decoding — so the model, the decoder processes and the network are busy at
once. A file that cannot be fetched, decoded or embedded is a failure with a
reason; the others are unaffected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from viewfinder_embedder.domain.decode import DecodedImage
from viewfinder_embedder.domain.model import EmbeddingModel, ImagePixels, ModelError, VectorMatrix
from viewfinder_embedder.domain.ports import ImageDecoder, ObjectReader, ObjectUnavailable

ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class ImageSource:
    """Where one file's bytes are."""

    bucket: str
    key: str


@dataclass
class EmbeddingResults(Generic[ItemT]):
    """Per item: its vectors (one row per field) or the reason it failed."""

    vectors: list[tuple[ItemT, dict[str, list[float]]]] = field(default_factory=list)
    failures: list[tuple[ItemT, str]] = field(default_factory=list)


class FileEmbedder:
    """Turns files in a bucket into named vectors with one model."""

    def __init__(self, reader: ObjectReader, decoder: ImageDecoder, *, batch_size: int = 32) -> None:
        self._reader = reader
        self._decoder = decoder
        self._batch_size = batch_size

    async def embed(
        self,
        model: EmbeddingModel,
        items: Sequence[tuple[ItemT, ImageSource]],
        *,
        concurrency: int,
    ) -> EmbeddingResults[ItemT]:
        """Embeds every item; outages (not per-file problems) propagate as exceptions."""
        results: EmbeddingResults[ItemT] = EmbeddingResults()
        if not items:
            return results
        limit = asyncio.Semaphore(concurrency)

        async def prepare(item: ItemT, source: ImageSource) -> tuple[ItemT, ImagePixels | str]:
            async with limit:
                try:
                    data = await self._reader.read(source.bucket, source.key)
                except ObjectUnavailable as exc:
                    return item, str(exc)
                decoded = await self._decoder.decode(data, model.image_size)
            if isinstance(decoded, DecodedImage):
                return item, decoded.pixels
            return item, f"cannot decode s3://{source.bucket}/{source.key}: {decoded.reason}"

        preparations = [asyncio.ensure_future(prepare(item, source)) for item, source in items]
        inference: list[asyncio.Task[None]] = []
        ready: list[tuple[ItemT, ImagePixels]] = []
        try:
            for next_done in asyncio.as_completed(preparations):
                item, outcome = await next_done
                if isinstance(outcome, str):
                    results.failures.append((item, outcome))
                    continue
                ready.append((item, outcome))
                if len(ready) >= self._batch_size:
                    inference.append(asyncio.create_task(self._embed_batch(model, ready, results)))
                    ready = []
            if ready:
                inference.append(asyncio.create_task(self._embed_batch(model, ready, results)))
            await asyncio.gather(*inference)
        finally:
            for task in [*preparations, *inference]:
                task.cancel()
        return results

    async def _embed_batch(
        self,
        model: EmbeddingModel,
        batch: list[tuple[ItemT, ImagePixels]],
        results: EmbeddingResults[ItemT],
    ) -> None:
        try:
            vectors = await model.embed_images([pixels for _, pixels in batch])
        except ModelError as exc:
            if len(batch) == 1:
                results.failures.append((batch[0][0], f"the model rejected the image: {exc}"))
                return
            # Find the input the model rejects: one by one (rare; a model error is per input).
            for single in batch:
                await self._embed_batch(model, [single], results)
            return
        results.vectors.extend(_rows(batch, vectors))


def _rows(
    batch: list[tuple[ItemT, ImagePixels]], vectors: Mapping[str, VectorMatrix]
) -> list[tuple[ItemT, dict[str, list[float]]]]:
    return [
        (item, {name: np.asarray(matrix[row], dtype=np.float32).tolist() for name, matrix in vectors.items()})
        for row, (item, _) in enumerate(batch)
    ]
