# ruff: noqa: PLR0911, PLR0912 - a request handler validates step by step; test credentials
"""A fake DashScope multimodal-embedding server, for tests and benchmarks.

It speaks the documented wire format over real HTTP (aiohttp, loopback, port 0)::

    POST /api/v1/services/embeddings/multimodal-embedding/multimodal-embedding
    Authorization: Bearer <key>
    {"model": …, "input": {"contents": [{"image": "data:image/…;base64,…"} | {"text": …}]}}
    → {"output": {"embeddings": [{"index", "embedding", "type"}]},
       "usage": {"input_tokens", "image_count"}, "request_id"}

Errors use DashScope's shape ``{"code", "message", "request_id"}``: 401
``InvalidApiKey`` for a wrong key, 400 ``InvalidParameter`` for too many
contents, an oversized image, a malformed data URI or an unknown model, 404
for any other path, 429 ``Throttling.RateQuota`` with ``Retry-After`` and 500
``InternalError`` on demand (``FakeEmbeddingBehaviour``). Vectors are
deterministic unit vectors derived from the content, so equal inputs embed
equally; the dimension is per model (``models``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import struct
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

EMBEDDING_PATH = "/api/v1/services/embeddings/multimodal-embedding/multimodal-embedding"
# Dimensions the vendor lists; a test may add its own model.
DEFAULT_MODELS: dict[str, int] = {"tongyi-embedding-vision-plus": 1152, "multimodal-embedding-v1": 1024}


def deterministic_vector(content: str, dimension: int) -> list[float]:
    """A unit vector that depends only on ``content`` and ``dimension``."""
    values: list[float] = []
    counter = 0
    while len(values) < dimension:
        digest = hashlib.sha256(f"{counter}:{content}".encode()).digest()
        values.extend((word / 2**31) - 1.0 for word in struct.unpack("<8I", digest))
        counter += 1
    values = values[:dimension]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a ``data:image/<fmt>;base64,…`` URI, or ValueError."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ValueError("image must be a data:image/<format>;base64,... URI")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as err:
        raise ValueError("image data URI is not valid base64") from err


@dataclass
class FakeEmbeddingBehaviour:
    """Knobs a test turns, also while the server runs."""

    latency_s: float = 0.0
    # The next N requests answer 429 with Retry-After ``retry_after_s``.
    throttle_next: int = 0
    retry_after_s: float = 0.05
    # The next N requests answer 500.
    fail_next: int = 0
    # Limits the server enforces (400 beyond them).
    max_items_per_request: int = 20
    max_image_bytes: int = 3 * 1024 * 1024


@dataclass
class FakeEmbeddingCall:
    """One request as the server saw it."""

    status: int
    items: int
    image_bytes: list[int] = field(default_factory=list)


class FakeDashScopeServer:
    """The fake server; ``async with FakeDashScopeServer(api_key="k") as server: server.base_url``."""

    def __init__(
        self,
        *,
        api_key: str = "test-dashscope-key",
        models: dict[str, int] | None = None,
        behaviour: FakeEmbeddingBehaviour | None = None,
    ) -> None:
        self.api_key = api_key
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.behaviour = behaviour or FakeEmbeddingBehaviour()
        self.calls: list[FakeEmbeddingCall] = []
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the client appends the API path."""
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        """Starts listening on a free loopback port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(EMBEDDING_PATH, self._embed)
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

    async def __aenter__(self) -> FakeDashScopeServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @staticmethod
    def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
        body = {"code": code, "message": message, "request_id": str(uuid.uuid4())}
        return web.json_response(body, status=status, headers=headers)

    async def _embed(self, request: web.Request) -> web.Response:
        behaviour = self.behaviour
        if behaviour.latency_s:
            await asyncio.sleep(behaviour.latency_s)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.calls.append(FakeEmbeddingCall(401, 0))
            return self._error(401, "InvalidApiKey", "Invalid API-key provided.")
        if behaviour.throttle_next > 0:
            behaviour.throttle_next -= 1
            self.calls.append(FakeEmbeddingCall(429, 0))
            return self._error(
                429,
                "Throttling.RateQuota",
                "Requests rate limit exceeded.",
                **{"Retry-After": str(behaviour.retry_after_s)},
            )
        if behaviour.fail_next > 0:
            behaviour.fail_next -= 1
            self.calls.append(FakeEmbeddingCall(500, 0))
            return self._error(500, "InternalError", "An internal error has occured, please try again later.")
        try:
            body: Any = await request.json()
            model = body["model"]
            contents = body["input"]["contents"]
            if not isinstance(contents, list) or not contents:
                raise ValueError("input.contents must be a non-empty list")
        except (ValueError, KeyError, TypeError) as err:
            return self._error(400, "InvalidParameter", f"Invalid request body: {err}")
        if model not in self.models:
            return self._error(400, "InvalidParameter", f"Model not exist: {model}")
        if len(contents) > behaviour.max_items_per_request:
            return self._error(
                400,
                "InvalidParameter",
                f"Too many contents: at most {behaviour.max_items_per_request} per request",
            )
        dimension = self.models[model]
        embeddings = []
        sizes = []
        for index, content in enumerate(contents):
            if "image" in content:
                try:
                    data = decode_data_uri(content["image"])
                except ValueError as err:
                    return self._error(400, "InvalidParameter", f"contents[{index}]: {err}")
                sizes.append(len(data))
                if len(data) > behaviour.max_image_bytes:
                    return self._error(
                        400, "InvalidParameter", f"contents[{index}]: image exceeds the size limit"
                    )
                key, kind = "image:" + hashlib.sha256(data).hexdigest(), "image"
            elif "text" in content:
                key, kind = "text:" + str(content["text"]), "text"
            else:
                return self._error(400, "InvalidParameter", f"contents[{index}] has neither image nor text")
            embeddings.append(
                {"index": index, "embedding": deterministic_vector(key, dimension), "type": kind}
            )
        self.calls.append(FakeEmbeddingCall(200, len(contents), sizes))
        return web.json_response(
            {
                "output": {"embeddings": embeddings},
                "usage": {"input_tokens": 0, "image_count": len(sizes)},
                "request_id": str(uuid.uuid4()),
            }
        )
