"""PAI-EAS multimodal embedding client (the GME service format).

Wire format::

    POST {endpoint}
    Authorization: <service token>
    {"model": "pai-multimodal-embedding-v1",
     "contents": {"input": [{"text": "…"}, {"image": "data:image/{fmt};base64,…"}]}}
    → {"status_code": 200 | 204 | 400, "message": [...],
       "output": {"embeddings": [{"index": 0, "embedding": [...], "type": "text"}, …]}}

``status_code`` 204 is a partial success: ``output.embeddings`` holds the
items that worked and ``message`` the per-item errors; the client retries
only the items without an embedding, with the same backoff as transport
errors. 400 rejects the request as a whole. The dimension (1536 for GME-2B,
3584 for GME-7B) is read from the response.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiohttp

from viewfinder_common.embedding_clients import EmbeddingServiceError
from viewfinder_common.embedding_clients.batching import BatchedEmbeddingClient
from viewfinder_common.http_retry import (
    RetryPolicy,
    backoff_delay,
    call_with_retries,
    mask_secrets,
    raise_for_status,
)

DEFAULT_MODEL = "pai-multimodal-embedding-v1"


class PaiEasEmbeddingClient(BatchedEmbeddingClient):
    """Embeds images and texts through a PAI-EAS GME service."""

    def __init__(
        self,
        *,
        endpoint: str,
        token: str,
        model: str = DEFAULT_MODEL,
        session: aiohttp.ClientSession | None = None,
        retry_policy: RetryPolicy | None = None,
        max_items_per_request: int = 16,
        max_image_bytes: int = 8 * 1024 * 1024,
        max_image_side: int = 4096,
        concurrency: int = 4,
        timeout_s: float = 120.0,
    ) -> None:
        if max_items_per_request < 1:
            raise ValueError("max_items_per_request must be at least 1")
        self._endpoint = endpoint
        self._token = token
        self.model = model
        self._session = session
        self._owns_session = session is None
        self._policy = retry_policy or RetryPolicy()
        super().__init__(
            max_items=max_items_per_request, max_image_bytes=max_image_bytes, max_image_side=max_image_side
        )
        self._requests = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.dimension: int | None = None
        # How many items were sent again after a partial success (for tests and metrics).
        self.items_retried = 0

    def __repr__(self) -> str:
        return f"PaiEasEmbeddingClient(model={self.model!r}, endpoint={self._endpoint!r})"

    async def _embed_batch(self, contents: list[dict[str, str]]) -> list[list[float]]:
        vectors: dict[int, list[float]] = {}
        pending = list(range(len(contents)))
        errors: list[Any] = []
        for round_number in range(1, self._policy.max_attempts + 1):
            if round_number > 1:
                self.items_retried += len(pending)
                await asyncio.sleep(backoff_delay(round_number - 1, self._policy))
            payload = {"model": self.model, "contents": {"input": [contents[i] for i in pending]}}
            async with self._requests:
                body = await call_with_retries(functools.partial(self._post, payload), self._policy)
            got, errors = self._parse(body, len(pending))
            for position, vector in got.items():
                vectors[pending[position]] = vector
            pending = [original for position, original in enumerate(pending) if position not in got]
            if not pending:
                return [vectors[i] for i in range(len(contents))]
        detail = mask_secrets(str(errors)[:300], [self._token])
        raise EmbeddingServiceError(
            f"PAI-EAS embedded {len(vectors)} of {len(contents)} items after {self._policy.max_attempts} "
            f"partial attempts; failing items {pending[:10]}: {detail}"
        )

    async def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        session = await self._ensure_session()
        headers = {"Authorization": self._token, "Content-Type": "application/json"}
        async with session.post(
            self._endpoint, json=payload, headers=headers, timeout=self._timeout
        ) as response:
            await raise_for_status(response, what="PAI-EAS embedding", secrets=[self._token])
            body: dict[str, Any] = await response.json(content_type=None)
            return body

    def _parse(self, body: dict[str, Any], sent: int) -> tuple[dict[int, list[float]], list[Any]]:
        """Vectors by position in the request, and the per-item error messages."""
        status = body.get("status_code", 200)
        messages = body.get("message") or []
        if status == 400:
            detail = mask_secrets(str(messages)[:300], [self._token])
            raise EmbeddingServiceError(f"PAI-EAS rejected the request (status_code 400): {detail}")
        if status not in (200, 204):
            raise EmbeddingServiceError(f"PAI-EAS answered with unexpected status_code {status!r}")
        try:
            got = {
                int(entry["index"]): [float(x) for x in entry["embedding"]]
                for entry in (body.get("output") or {}).get("embeddings") or []
            }
        except (KeyError, TypeError, ValueError) as err:
            raise EmbeddingServiceError("PAI-EAS returned an unexpected response body") from err
        got = {index: vector for index, vector in got.items() if 0 <= index < sent}
        if status == 200 and len(got) < sent:
            raise EmbeddingServiceError(
                f"PAI-EAS returned {len(got)} embeddings for {sent} items with status 200"
            )
        for vector in got.values():
            if self.dimension is None:
                self.dimension = len(vector)
            elif len(vector) != self.dimension:
                raise EmbeddingServiceError(
                    f"PAI-EAS returned a {len(vector)}-d vector after {self.dimension}-d ones"
                )
        return got, list(messages) if isinstance(messages, list) else [messages]

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Closes the HTTP session if the client opened it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
