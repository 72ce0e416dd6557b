"""DashScope (Alibaba Cloud Model Studio) multimodal-embedding client.

Wire format (vendor documentation, "multimodal-embedding" API)::

    POST {base_url}/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding
    Authorization: Bearer <api key>
    {"model": "tongyi-embedding-vision-plus",
     "input": {"contents": [{"image": "data:image/png;base64,…"}, {"text": "…"}]}}
    → {"output": {"embeddings": [{"index": 0, "embedding": [...], "type": "image"}, …]},
       "usage": {…}, "request_id": "…"}

Errors come as ``{"code": "InvalidApiKey", "message": "…", "request_id": "…"}``
with an HTTP status. The model decides the dimension (1152 for
tongyi-embedding-vision-plus, 1024 for multimodal-embedding-v1): the client
reads it from the response. Requests hold at most ``max_items_per_request``
contents and images above the size limits are downscaled first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from viewfinder_common.embedding_clients import EmbeddingServiceError
from viewfinder_common.embedding_clients.batching import BatchedEmbeddingClient
from viewfinder_common.http_retry import RetryPolicy, call_with_retries, mask_secrets, raise_for_status

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com"
EMBEDDING_PATH = "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding"


class DashScopeEmbeddingClient(BatchedEmbeddingClient):
    """Embeds images and texts with a DashScope multimodal-embedding model."""

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        session: aiohttp.ClientSession | None = None,
        retry_policy: RetryPolicy | None = None,
        # The vendor limits contents per request and image size; both are
        # configurable because they differ per model and change over time.
        max_items_per_request: int = 20,
        max_image_bytes: int = 3 * 1024 * 1024,
        max_image_side: int = 4096,
        concurrency: int = 4,
        timeout_s: float = 60.0,
    ) -> None:
        if max_items_per_request < 1:
            raise ValueError("max_items_per_request must be at least 1")
        self._api_key = api_key
        self.model = model
        self._url = base_url.rstrip("/") + EMBEDDING_PATH
        self._session = session
        self._owns_session = session is None
        self._policy = retry_policy or RetryPolicy()
        super().__init__(
            max_items=max_items_per_request, max_image_bytes=max_image_bytes, max_image_side=max_image_side
        )
        self._requests = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.dimension: int | None = None

    def __repr__(self) -> str:
        return f"DashScopeEmbeddingClient(model={self.model!r}, url={self._url!r})"

    async def _embed_batch(self, contents: list[dict[str, str]]) -> list[list[float]]:
        payload = {"model": self.model, "input": {"contents": contents}}
        async with self._requests:
            body = await call_with_retries(lambda: self._post(payload), self._policy)
        return self._vectors(body, len(contents))

    async def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        session = await self._ensure_session()
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        async with session.post(self._url, json=payload, headers=headers, timeout=self._timeout) as response:
            await raise_for_status(response, what="DashScope multimodal embedding", secrets=[self._api_key])
            body: dict[str, Any] = await response.json(content_type=None)
            return body

    def _vectors(self, body: dict[str, Any], expected: int) -> list[list[float]]:
        try:
            embeddings = body["output"]["embeddings"]
            by_index = {int(entry["index"]): [float(x) for x in entry["embedding"]] for entry in embeddings}
        except (KeyError, TypeError, ValueError) as err:
            excerpt = mask_secrets(str(body)[:200], [self._api_key])
            raise EmbeddingServiceError(f"DashScope returned an unexpected response body: {excerpt}") from err
        missing = [index for index in range(expected) if index not in by_index]
        if missing:
            raise EmbeddingServiceError(
                f"DashScope returned no embedding for item(s) {missing[:10]} of {expected} "
                f"(request_id {body.get('request_id', '?')})"
            )
        vectors = [by_index[index] for index in range(expected)]
        self._check_dimension(vectors)
        return vectors

    def _check_dimension(self, vectors: list[list[float]]) -> None:
        for vector in vectors:
            if self.dimension is None:
                self.dimension = len(vector)
            elif len(vector) != self.dimension:
                raise EmbeddingServiceError(
                    f"DashScope returned a {len(vector)}-d vector after {self.dimension}-d ones"
                )

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Closes the HTTP session if the client opened it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
