"""A fake OpenAI-compatible vision-language model server, for tests and benchmarks.

It speaks the chat completions wire format over real HTTP (aiohttp, loopback,
port 0): ``POST /v1/chat/completions`` with ``Authorization: Bearer <key>``,
``messages`` whose user content is a list of parts (``{"type": "text"}`` and
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,…"}}``),
answering ``{"id", "object": "chat.completion", "created", "model",
"choices": [{"index", "message": {"role", "content"}, "finish_reason"}],
"usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}``. Errors
are ``{"error": {"message", "type", "code"}}`` with 401, 404, 429 (with
``Retry-After``) and 500, as OpenAI and Model Studio's compatible mode send them.

The answer is decided deterministically from the image, so tests know what to
expect: the image's mean colour picks the nearest colour of a palette, and the
answer's ``content`` is the JSON the viewfinder tagger asks for::

    {"tags": [{"name": "red", "value": "", "confidence": 0.9},
              {"name": "brightness", "value": "dark", "confidence": 0.8}]}

Knobs (``FakeVLMBehaviour``, changeable while the server runs) add latency,
429 bursts, 5xx, hanging requests (client timeouts), malformed JSON, tags
outside any definition and a lower-confidence second colour. ``calls`` records
every request (image hash, colour, status) so tests can count model calls per
image.

Run standalone (for benchmarks and end-to-end tests)::

    python -m viewfinder_common.testing.fake_vlm --latency 0.2 --api-key k
    # prints "FAKE_VLM_URL=http://127.0.0.1:<port>/v1" once it listens
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

DEFAULT_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
# Qwen-VL counts one visual token per 28x28 pixel patch.
_PATCH = 28


@dataclass
class FakeVLMBehaviour:
    """What the fake does to the next requests; mutate it between (or during) test steps.

    Counters (``*_next``, ``rate_limit_burst``) are consumed one per request in
    arrival order; the ``*_colours`` sets apply to every request whose image
    has that colour, repair requests included, so they make failures permanent.
    """

    # Seconds from a request's arrival to its answer (a model's response time).
    latency_s: float = 0.0
    # The next N requests answer 429 with Retry-After: retry_after_s.
    rate_limit_burst: int = 0
    # Every k-th request (by arrival number) answers 429; 0 disables.
    rate_limit_every: int = 0
    retry_after_s: float = 0.0
    # The next N requests answer 500.
    server_errors_next: int = 0
    # The next N requests sleep hang_s before answering (the client times out first).
    hang_next: int = 0
    hang_s: float = 30.0
    # The next N answers are not JSON; a repair request counts as one.
    malformed_next: int = 0
    malformed_colours: set[str] = field(default_factory=set)
    server_error_colours: set[str] = field(default_factory=set)
    # Tags outside any definition, appended to every answer.
    extra_tags: list[dict[str, Any]] = field(default_factory=list)
    # Also answer the second-nearest colour, with a lower confidence.
    second_colour: bool = False
    # Wrap the JSON in a Markdown code fence, as chatty models do.
    code_fence: bool = False


@dataclass(frozen=True)
class FakeVLMCall:
    """One request the fake received and how it answered."""

    number: int
    status: int
    model: str
    image_sha256: str | None
    colour: str | None
    repair: bool
    prompt_text: str
    authorization: str


@dataclass
class _CallRecord:
    """What is known about a request so far; ``finish`` freezes it into a FakeVLMCall."""

    number: int
    authorization: str
    model: str = ""
    prompt_text: str = ""
    repair: bool = False
    image_sha256: str | None = None
    colour: str | None = None

    def finish(self, status: int) -> FakeVLMCall:
        return FakeVLMCall(
            self.number,
            status,
            self.model,
            self.image_sha256,
            self.colour,
            self.repair,
            self.prompt_text,
            self.authorization,
        )


class _Rejection(Exception):
    """An OpenAI-style error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str = "invalid_request",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.code = status, message, error_type, code
        self.headers = headers


class FakeVLMServer:
    """The fake server; use as ``async with FakeVLMServer(api_key="k") as vlm: vlm.base_url``."""

    def __init__(
        self,
        *,
        api_key: str,
        models: frozenset[str] | None = None,
        behaviour: FakeVLMBehaviour | None = None,
        palette: dict[str, tuple[int, int, int]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.models = models
        self.behaviour = behaviour or FakeVLMBehaviour()
        self.palette = dict(palette or DEFAULT_PALETTE)
        self.calls: list[FakeVLMCall] = []
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._fetch_session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (ends in ``/v1``)."""
        return f"http://{self._host}:{self.port}/v1"

    async def start(self) -> None:
        """Binds and starts serving."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # aiohttp exposes the bound socket only here
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stops serving; hanging requests are cut off."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._fetch_session is not None:
            await self._fetch_session.close()
            self._fetch_session = None

    async def __aenter__(self) -> FakeVLMServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- what tests read -------------------------------------------------------------

    def successful_calls(self) -> list[FakeVLMCall]:
        """Calls answered 200 with a valid answer (not malformed), repairs included."""
        return [c for c in self.calls if c.status == 200]

    def calls_per_image(self, *, status: int | None = 200) -> dict[str, int]:
        """How many calls each image (by SHA-256 of its bytes) got, optionally of one status."""
        counts: dict[str, int] = {}
        for call in self.calls:
            if call.image_sha256 is None or (status is not None and call.status != status):
                continue
            counts[call.image_sha256] = counts.get(call.image_sha256, 0) + 1
        return counts

    def expected_colour(self, image_bytes: bytes) -> str:
        """The palette colour the fake will answer for these image bytes."""
        return self._nearest_colours(_inspect(image_bytes).mean_rgb)[0]

    # -- the wire format ------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        call = _CallRecord(number=len(self.calls) + 1, authorization=request.headers.get("Authorization", ""))
        try:
            return await self._answer_request(request, call)
        except _Rejection as rejection:
            self.calls.append(call.finish(rejection.status))
            return web.json_response(
                {
                    "error": {
                        "message": rejection.message,
                        "type": rejection.error_type,
                        "code": rejection.code,
                    }
                },
                status=rejection.status,
                headers=rejection.headers,
            )

    async def _answer_request(self, request: web.Request, call: _CallRecord) -> web.Response:
        behaviour = self.behaviour
        arrived = time.monotonic()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _Rejection(400, "We could not parse the JSON body of your request.") from exc
        call.model = str(body.get("model", ""))
        call.prompt_text, image_url, call.repair = _read_messages(body.get("messages"))
        if call.authorization != f"Bearer {self.api_key}":
            given = call.authorization.removeprefix("Bearer ")
            # OpenAI echoes (part of) the key it rejected; clients must not pass it on.
            raise _Rejection(
                401,
                f"Incorrect API key provided: {given}. You can find your API key in the console.",
                code="invalid_api_key",
            )
        if self.models is not None and call.model not in self.models:
            raise _Rejection(
                404,
                f"The model `{call.model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if image_url is None:
            raise _Rejection(400, "The request has no image_url content part.")
        try:
            image_bytes = await self._load_image(image_url)
            image = _inspect(image_bytes)
        except (ValueError, OSError, aiohttp.ClientError) as exc:
            raise _Rejection(400, f"Could not read the image: {exc}") from exc
        call.image_sha256 = hashlib.sha256(image_bytes).hexdigest()
        colours = self._nearest_colours(image.mean_rgb)
        call.colour = colours[0]

        # Latency counts from arrival, so decoding the request here does not add to it.
        remaining = behaviour.latency_s - (time.monotonic() - arrived)
        if remaining > 0:
            await asyncio.sleep(remaining)
        if behaviour.hang_next > 0:
            behaviour.hang_next -= 1
            await asyncio.sleep(behaviour.hang_s)
        self._maybe_reject(call)

        malformed = behaviour.malformed_next > 0 or call.colour in behaviour.malformed_colours
        behaviour.malformed_next = max(0, behaviour.malformed_next - 1)
        content = (
            '{"tags": [{"name": "' + call.colour + '", "confidence": 0.9'  # cut off: not JSON
            if malformed
            else self._answer(colours, image)
        )
        self.calls.append(call.finish(200))
        width, height = image.size
        image_tokens = max(4, math.ceil(width / _PATCH) * math.ceil(height / _PATCH))
        prompt_tokens = max(1, len(call.prompt_text) // 4) + image_tokens
        completion_tokens = max(1, len(content) // 4)
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": call.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    def _maybe_reject(self, call: _CallRecord) -> None:
        """Raises the 429 or 500 the behaviour asks for this request, if any."""
        behaviour = self.behaviour
        every = behaviour.rate_limit_every
        if behaviour.rate_limit_burst > 0 or (every > 0 and call.number % every == 0):
            behaviour.rate_limit_burst = max(0, behaviour.rate_limit_burst - 1)
            raise _Rejection(
                429,
                "Requests rate limit exceeded, please try again later.",
                error_type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": _format_seconds(behaviour.retry_after_s)},
            )
        if behaviour.server_errors_next > 0 or call.colour in behaviour.server_error_colours:
            behaviour.server_errors_next = max(0, behaviour.server_errors_next - 1)
            raise _Rejection(
                500,
                "The server had an error while processing your request.",
                error_type="server_error",
                code="internal_error",
            )

    def _answer(self, colours: list[str], image: _ImageInfo) -> str:
        behaviour = self.behaviour
        tags: list[dict[str, Any]] = [{"name": colours[0], "value": "", "confidence": 0.9}]
        if behaviour.second_colour and len(colours) > 1:
            tags.append({"name": colours[1], "value": "", "confidence": 0.4})
        brightness = "light" if image.luma >= 128 else "dark"
        tags.append({"name": "brightness", "value": brightness, "confidence": 0.8})
        tags.extend(behaviour.extra_tags)
        text = json.dumps({"tags": tags})
        return f"```json\n{text}\n```" if behaviour.code_fence else text

    async def _load_image(self, url: str) -> bytes:
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            if ";base64" not in header:
                raise ValueError("data URL is not base64")
            try:
                return base64.b64decode(payload, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"bad base64: {exc}") from exc
        if url.startswith(("http://", "https://")):
            # A presigned URL: fetch it the way the real service would.
            if self._fetch_session is None:
                self._fetch_session = aiohttp.ClientSession()
            async with self._fetch_session.get(url) as response:
                if response.status != 200:
                    raise ValueError(f"fetching the image URL answered HTTP {response.status}")
                return await response.read()
        raise ValueError("image_url must be a data: URL or an http(s) URL")

    def _nearest_colours(self, mean_rgb: tuple[int, int, int]) -> list[str]:
        return sorted(self.palette, key=lambda name: _distance(self.palette[name], mean_rgb))


def _read_messages(messages: Any) -> tuple[str, str | None, bool]:
    """(all text of the request, the last image URL, whether this is a repair request)."""
    texts: list[str] = []
    image_url: str | None = None
    repair = False
    if not isinstance(messages, list):
        return "", None, False
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("role") == "assistant":
            repair = True  # a follow-up after our own earlier answer
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                image = part.get("image_url")
                if isinstance(image, dict) and isinstance(image.get("url"), str):
                    image_url = image["url"]
    return "\n".join(texts), image_url, repair


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> int:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class _ImageInfo:
    mean_rgb: tuple[int, int, int]
    luma: float
    size: tuple[int, int]


def _inspect(image_bytes: bytes) -> _ImageInfo:
    """Mean colour, mean luma and size of an encoded image (raises OSError/ValueError if not one)."""
    with Image.open(io.BytesIO(image_bytes)) as image:
        rgb = image.convert("RGB").resize((1, 1), Image.Resampling.BOX)
        r, g, b = rgb.getpixel((0, 0))  # type: ignore[misc]
        luma = rgb.convert("L").getpixel((0, 0))
        return _ImageInfo((int(r), int(g), int(b)), float(luma), image.size)  # type: ignore[arg-type]


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}"


async def _serve_forever(args: argparse.Namespace) -> None:
    behaviour = FakeVLMBehaviour(latency_s=args.latency)
    async with FakeVLMServer(
        api_key=args.api_key, behaviour=behaviour, host=args.host, port=args.port
    ) as server:
        print(f"FAKE_VLM_URL={server.base_url}", flush=True)  # the parent process reads it
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def main() -> None:
    """``python -m viewfinder_common.testing.fake_vlm``: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--api-key", default="fake-vlm-key")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))


if __name__ == "__main__":
    main()
