# ruff: noqa: PLR0911, PLR0912, S107 - a request handler validates step by step; test credentials
"""A fake PAI-EAS GME multimodal-embedding service, for tests and benchmarks.

It speaks the service's JSON over real HTTP (aiohttp, loopback, port 0) at
``POST /api/predict/<service>``, token in the ``Authorization`` header::

    {"model": "pai-multimodal-embedding-v1",
     "contents": {"input": [{"text": …} | {"image": "data:image/{fmt};base64,…"}]}}
    → {"status_code": 200 | 204 | 400, "message": [...],
       "output": {"embeddings": [{"index", "embedding", "type"}]}}

``status_code`` 204 is a partial success: items listed in ``flaky_items``
(by content key) fail their first N tries, are left out of ``embeddings`` and
reported in ``message`` as ``{"index", "error"}``. A wrong token gets HTTP 401
with the EAS gateway's plain-text body, another path 404, and the shared
``FakeEmbeddingBehaviour`` adds latency, 429 with Retry-After and 500.
"""

from __future__ import annotations

import asyncio
import hashlib
from types import TracebackType
from typing import Any

from aiohttp import web

from viewfinder_common.testing.fake_dashscope import (
    FakeEmbeddingBehaviour,
    FakeEmbeddingCall,
    decode_data_uri,
    deterministic_vector,
)

SERVICE_PATH = "/api/predict/gme_service"


class FakePaiEasServer:
    """The fake service; ``endpoint`` is the URL a client posts to."""

    def __init__(
        self,
        *,
        token: str = "test-eas-token",
        dimension: int = 1536,
        model: str = "pai-multimodal-embedding-v1",
        behaviour: FakeEmbeddingBehaviour | None = None,
    ) -> None:
        self.token = token
        self.dimension = dimension
        self.model = model
        self.behaviour = behaviour or FakeEmbeddingBehaviour(max_items_per_request=32)
        # Content key ("text:<text>" or "image:<sha256>") → how many more times it fails.
        self.flaky_items: dict[str, int] = {}
        self.calls: list[FakeEmbeddingCall] = []
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def endpoint(self) -> str:
        """The service URL."""
        return f"http://127.0.0.1:{self._port}{SERVICE_PATH}"

    async def start(self) -> None:
        """Starts listening on a free loopback port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(SERVICE_PATH, self._predict)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Stops the server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakePaiEasServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @staticmethod
    def _rejected(message: str) -> web.Response:
        return web.json_response({"status_code": 400, "message": [message], "output": {"embeddings": []}})

    async def _predict(self, request: web.Request) -> web.Response:
        behaviour = self.behaviour
        if behaviour.latency_s:
            await asyncio.sleep(behaviour.latency_s)
        if request.headers.get("Authorization") != self.token:
            self.calls.append(FakeEmbeddingCall(401, 0))
            return web.Response(status=401, text="Authorization failed")
        if behaviour.throttle_next > 0:
            behaviour.throttle_next -= 1
            self.calls.append(FakeEmbeddingCall(429, 0))
            return web.Response(
                status=429, text="Too Many Requests", headers={"Retry-After": str(behaviour.retry_after_s)}
            )
        if behaviour.fail_next > 0:
            behaviour.fail_next -= 1
            self.calls.append(FakeEmbeddingCall(500, 0))
            return web.Response(status=500, text="Internal Server Error")
        try:
            body: Any = await request.json()
            model = body["model"]
            items = body["contents"]["input"]
            if not isinstance(items, list) or not items:
                raise ValueError("contents.input must be a non-empty list")
        except (ValueError, KeyError, TypeError) as err:
            return self._rejected(f"invalid request body: {err}")
        if model != self.model:
            return self._rejected(f"unknown model {model}")
        if len(items) > behaviour.max_items_per_request:
            return self._rejected(f"too many inputs: at most {behaviour.max_items_per_request}")
        embeddings: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        sizes: list[int] = []
        for index, item in enumerate(items):
            if "image" in item:
                try:
                    data = decode_data_uri(item["image"])
                except ValueError as err:
                    errors.append({"index": index, "error": str(err)})
                    continue
                sizes.append(len(data))
                key, kind = "image:" + hashlib.sha256(data).hexdigest(), "image"
            elif "text" in item:
                key, kind = "text:" + str(item["text"]), "text"
            else:
                errors.append({"index": index, "error": "input has neither text nor image"})
                continue
            remaining = self.flaky_items.get(key, 0)
            if remaining > 0:
                self.flaky_items[key] = remaining - 1
                errors.append({"index": index, "error": "inference failed, please retry"})
                continue
            embeddings.append(
                {"index": index, "embedding": deterministic_vector(key, self.dimension), "type": kind}
            )
        self.calls.append(FakeEmbeddingCall(200, len(items), sizes))
        return web.json_response(
            {"status_code": 204 if errors else 200, "message": errors, "output": {"embeddings": embeddings}}
        )
