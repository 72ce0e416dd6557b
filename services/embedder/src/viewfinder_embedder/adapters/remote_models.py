"""``EmbeddingModel`` over the remote embedding services (DashScope, PAI-EAS GME).

Both services put images and texts into one shared space, so the model has a
single field (``embedding``) that answers text and image queries. Its
dimension is whatever the service returns: ``connect`` embeds one short text
first and reads it off the answer (DESIGN §5: never hard-coded).

Images arrive decoded (square RGB pixels from the decode pool); they are
re-encoded as JPEG in a thread before the client sends them as data URIs.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from viewfinder_common.embedding_clients import EmbeddingServiceError
from viewfinder_common.embedding_clients.dashscope import DEFAULT_BASE_URL as DEFAULT_DASHSCOPE_URL
from viewfinder_common.embedding_clients.dashscope import DashScopeEmbeddingClient
from viewfinder_common.embedding_clients.pai_eas import DEFAULT_MODEL as DEFAULT_PAI_MODEL
from viewfinder_common.embedding_clients.pai_eas import PaiEasEmbeddingClient
from viewfinder_common.http_retry import HTTPStatusError
from viewfinder_embedder.domain.model import (
    EmbeddingModel,
    ImagePixels,
    ModelError,
    ModelField,
    ModelIdentity,
    QueryKind,
    VectorMatrix,
    l2_normalise,
)

FIELD_NAME = "embedding"
_DIMENSION_PROBE_TEXT = "a photo"


class RemoteEmbeddingClient(Protocol):
    """What the DashScope and PAI-EAS clients share."""

    model: str
    dimension: int | None

    async def embed_images(self, images: Sequence[bytes]) -> list[list[float]]:
        """One vector per encoded image."""

    async def embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text."""

    async def close(self) -> None:
        """Releases the HTTP session."""


def encode_jpeg(images: Sequence[ImagePixels], quality: int = 90) -> list[bytes]:
    """Decoded RGB pixels as JPEG files (CPU-bound: run in a thread)."""
    encoded = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").save(buffer, format="JPEG", quality=quality)
        encoded.append(buffer.getvalue())
    return encoded


class RemoteEmbeddingModel:
    """``EmbeddingModel`` over a ``RemoteEmbeddingClient``; build it with ``connect``."""

    def __init__(
        self, client: RemoteEmbeddingClient, *, identity: ModelIdentity, dimension: int, image_size: int
    ) -> None:
        self._client = client
        self._identity = identity
        self._fields = (ModelField(FIELD_NAME, dimension, frozenset({QueryKind.TEXT, QueryKind.IMAGE})),)
        self._image_size = image_size

    @classmethod
    async def connect(
        cls, client: RemoteEmbeddingClient, *, provider: str, image_size: int = 512
    ) -> RemoteEmbeddingModel:
        """A model whose dimension was read from one live embedding of a short text."""
        if client.dimension is None:
            await client.embed_texts([_DIMENSION_PROBE_TEXT])
        assert client.dimension is not None
        # The services publish no model version; the dimension at least tells
        # apart the generations that changed it.
        identity = ModelIdentity(id=f"{provider}:{client.model}", version=f"api-{client.dimension}d")
        return cls(client, identity=identity, dimension=client.dimension, image_size=image_size)

    @property
    def identity(self) -> ModelIdentity:
        """Provider and model name, and the dimension as the version."""
        return self._identity

    @property
    def fields(self) -> Sequence[ModelField]:
        """The one shared field."""
        return self._fields

    @property
    def image_size(self) -> int:
        """Side of the square the decoder produces; the service sees it as a JPEG."""
        return self._image_size

    async def embed_images(self, images: Sequence[ImagePixels]) -> Mapping[str, VectorMatrix]:
        """One row per image in the shared field."""
        if not images:
            return {FIELD_NAME: np.zeros((0, self._fields[0].dimension), dtype=np.float32)}
        encoded = await asyncio.to_thread(encode_jpeg, images)
        return {FIELD_NAME: await self._vectors(self._client.embed_images(encoded))}

    async def embed_texts(self, texts: Sequence[str]) -> Mapping[str, VectorMatrix]:
        """One row per text in the shared field."""
        if not texts:
            return {FIELD_NAME: np.zeros((0, self._fields[0].dimension), dtype=np.float32)}
        return {FIELD_NAME: await self._vectors(self._client.embed_texts(texts))}

    async def _vectors(self, pending: Awaitable[list[list[float]]]) -> VectorMatrix:
        try:
            vectors = await pending
        except EmbeddingServiceError as err:
            raise ModelError(str(err)) from err
        except HTTPStatusError as err:
            if err.status == 400:  # the service refused this input; an outage would be 429/5xx
                raise ModelError(str(err)) from err
            raise
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.shape[1] != self._fields[0].dimension:
            raise ModelError(
                f"the service returned {matrix.shape[1]}-d vectors, the index holds {self._fields[0].dimension}-d"
            )
        return l2_normalise(matrix)

    async def close(self) -> None:
        """Closes the client's HTTP session."""
        await self._client.close()


async def connect_dashscope(
    *, api_key: str, model: str, base_url: str, image_size: int = 512
) -> RemoteEmbeddingModel:
    """A DashScope multimodal-embedding model (e.g. tongyi-embedding-vision-plus)."""
    client = DashScopeEmbeddingClient(api_key=api_key, model=model, base_url=base_url)
    try:
        return await RemoteEmbeddingModel.connect(client, provider="dashscope", image_size=image_size)
    except BaseException:
        await client.close()
        raise


async def connect_pai_eas(
    *, endpoint: str, token: str, model: str = DEFAULT_PAI_MODEL, image_size: int = 512
) -> RemoteEmbeddingModel:
    """A PAI-EAS GME service (GME-2B: 1536-d, GME-7B: 3584-d, read from the service)."""
    client = PaiEasEmbeddingClient(endpoint=endpoint, token=token, model=model)
    try:
        return await RemoteEmbeddingModel.connect(client, provider="pai-eas", image_size=image_size)
    except BaseException:
        await client.close()
        raise


async def connect_model(kind: str, config: Mapping[str, Any], secret: str | None) -> EmbeddingModel:
    """The embedding model of a stored connection (``ResolvedConnection.spec.kind.value``,
    ``.spec.config``, ``.secret``): DashScope, PAI-EAS or a CLIP directory.

    ValueError for a kind that is not an embedding model served here (the
    offline default is the registry's own).
    """
    if kind == "dashscope_embedding":
        return await connect_dashscope(
            api_key=secret or "",
            model=str(config["model"]),
            base_url=str(config.get("base_url", DEFAULT_DASHSCOPE_URL)),
        )
    if kind == "pai_eas":
        return await connect_pai_eas(
            endpoint=str(config["endpoint"]),
            token=secret or "",
            model=str(config.get("model", DEFAULT_PAI_MODEL)),
        )
    if kind == "local_model_directory":
        from viewfinder_embedder.adapters.clip_directory import ClipDirectoryModel  # noqa: PLC0415 (transformers)

        return await asyncio.to_thread(ClipDirectoryModel.load, Path(str(config["path"])))
    raise ValueError(f"connection kind {kind!r} is not a remote or directory embedding model")
