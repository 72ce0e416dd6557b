"""Labeling with an OpenAI-compatible chat completions endpoint that accepts images.

Covers Qwen-VL-Max / Qwen-VL-Plus on Alibaba Cloud Model Studio's compatible
mode, vLLM's OpenAI server and any other server speaking the format: one
``POST {base_url}/chat/completions`` per image, the image as a base64 data URL
(or a presigned URL), the prompt from the tag definition, JSON back.

Robustness: one pooled aiohttp session per connection; a timeout per HTTP
request; retries with exponential backoff and full jitter on 429/5xx/timeouts
honouring Retry-After (``viewfinder_common.http_retry``); an AIMD limiter
shared by every caller of the connection that halves the calls in flight on
each 429 round; a malformed answer gets one repair request before the file
counts as failed. 401/403/404, and a service that cannot be reached at all
after the retries, mean the connection itself is unusable: they raise
``ModelUnavailable`` (the job fails, resumable) instead of failing every file.

The API key is sent only in the Authorization header and masked out of every
error text (servers echo rejected keys back).
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from viewfinder_common.http_retry import (
    HTTPStatusError,
    RetriesExhausted,
    RetryDecision,
    RetryPolicy,
    call_with_retries,
    classify_error,
    mask_secrets,
    raise_for_status,
)
from viewfinder_common.logging import get_logger
from viewfinder_tagger.config import OpenAIConnection
from viewfinder_tagger.domain.adaptive_limit import AdaptiveConcurrencyLimiter
from viewfinder_tagger.domain.answers import (
    SYSTEM_PROMPT,
    MalformedAnswer,
    build_prompt,
    build_repair_prompt,
    echo_of_answer,
    parse_answer,
)
from viewfinder_tagger.domain.definitions import TagDefinition
from viewfinder_tagger.domain.models import (
    ImagePayload,
    ImageTransport,
    LabelingFailed,
    LabelTarget,
    ModelAnswer,
    ModelUnavailable,
    TokenUsage,
)

log = get_logger(__name__)

# The connection is wrong (key, permissions, model name): every call would fail alike.
_CONNECTION_ERRORS = frozenset({401, 403, 404})


class InvalidCompletion(Exception):
    """A 2xx answer that is not a chat completion (a proxy page, a cut-off body): worth a retry."""


class _CallStats:
    """Retries and tokens of one file's calls (a repair request included)."""

    def __init__(self) -> None:
        self.retries = 0
        self.usage = TokenUsage()


class OpenAIChatModel:
    """A LabelingModel backed by an OpenAI-compatible chat completions endpoint."""

    def __init__(self, connection_name: str, config: OpenAIConnection) -> None:
        self._name = connection_name
        self._config = config
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._api_key = config.api_key.get_secret_value() if config.api_key else ""
        self._policy = RetryPolicy(
            max_attempts=config.max_attempts,
            base_delay_s=config.backoff_base_s,
            max_delay_s=config.backoff_max_s,
            max_retry_after_s=config.max_retry_after_s,
        )
        self.limiter = AdaptiveConcurrencyLimiter(maximum=config.max_in_flight)
        self._session: aiohttp.ClientSession | None = None
        self._prompts: dict[tuple[str, int], str] = {}

    @property
    def model_id(self) -> str:
        """The model name sent in each request (e.g. "qwen-vl-max")."""
        return self._config.model

    @property
    def image_transport(self) -> ImageTransport:
        """Bytes for data URLs, or a URL the service fetches itself."""
        return ImageTransport.URL if self._config.image_transport == "presigned_url" else ImageTransport.BYTES

    @property
    def max_image_side(self) -> int:
        """Longest side sent; bigger images are downscaled first."""
        return self._config.max_image_side

    @property
    def max_image_bytes(self) -> int:
        """Largest encoded image sent as a data URL."""
        return self._config.max_image_bytes

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._config.connection_pool_size),
                timeout=aiohttp.ClientTimeout(total=self._config.request_timeout_s),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        """Closes the pooled session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _prompt(self, definition: TagDefinition) -> str:
        key = (definition.id, definition.version)
        prompt = self._prompts.get(key)
        if prompt is None:
            prompt = self._prompts[key] = build_prompt(definition)
        return prompt

    async def label(self, definition: TagDefinition, image: ImagePayload, target: LabelTarget) -> ModelAnswer:
        """Asks for the image's tags; one repair request if the answer is not the JSON asked for."""
        if image.url is not None:
            image_url = image.url
        elif image.data is not None:
            image_url = f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"
        else:
            raise LabelingFailed("no image to send (neither bytes nor URL)")
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": self._prompt(definition)},
                ],
            },
        ]
        stats = _CallStats()
        content = await self._complete(messages, stats, target)
        try:
            proposed = parse_answer(content)
        except MalformedAnswer as first:
            stats.retries += 1
            log.info("model_answer_malformed", file_id=target.file_id, problem=str(first), repair=True)
            messages += [
                {"role": "assistant", "content": echo_of_answer(content)},
                {"role": "user", "content": build_repair_prompt(str(first))},
            ]
            repaired = await self._complete(messages, stats, target)
            try:
                proposed = parse_answer(repaired)
            except MalformedAnswer as second:
                raise LabelingFailed(
                    f"the model's answer was not the requested JSON, also after a repair request: {second}",
                    retries=stats.retries,
                    usage=stats.usage,
                ) from None
        return ModelAnswer(tuple(proposed), stats.usage, stats.retries)

    async def _complete(self, messages: list[dict[str, Any]], stats: _CallStats, target: LabelTarget) -> str:
        body: dict[str, Any] = {
            "model": self._config.model,
            "messages": messages,
            "max_tokens": self._config.max_tokens,
            "temperature": self._config.temperature,
            "stream": False,
        }
        if self._config.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        session = self._session_now()

        async def attempt() -> dict[str, Any]:
            async with self.limiter.slot() as slot:
                async with session.post(self._url, json=body, headers=headers) as response:
                    if response.status == 429:
                        self.limiter.overloaded(slot)
                    await raise_for_status(response, what="chat completion", secrets=[self._api_key])
                    try:
                        data = await response.json(content_type=None)
                    except ValueError as exc:
                        raise InvalidCompletion("the answer is not JSON") from exc
                self.limiter.succeeded(slot)
            if not isinstance(data, dict):
                raise InvalidCompletion("the answer is not a JSON object")
            return data

        def on_retry(number: int, delay_s: float, error: BaseException, decision: RetryDecision) -> None:
            stats.retries += 1
            log.info(
                "model_call_retry",
                connection=self._name,
                file_id=target.file_id,
                attempt=number,
                delay_s=round(delay_s, 3),
                reason=decision.reason,
                in_flight_limit=self.limiter.limit,
            )

        try:
            data = await call_with_retries(attempt, self._policy, classify=_classify, on_retry=on_retry)
        except RetriesExhausted as exc:
            if isinstance(exc.last_error, aiohttp.ClientConnectorError):
                # Nobody answers at all: every file would fail alike; fail the job instead (resumable).
                raise ModelUnavailable(
                    f"model connection {self._name!r} cannot be reached: {self._safe(str(exc))}"
                ) from None
            raise LabelingFailed(self._safe(str(exc)), retries=stats.retries, usage=stats.usage) from None
        except HTTPStatusError as exc:
            if exc.status in _CONNECTION_ERRORS:
                raise ModelUnavailable(
                    f"model connection {self._name!r} refused the call: {self._safe(str(exc))}"
                ) from None
            raise LabelingFailed(self._safe(str(exc)), retries=stats.retries, usage=stats.usage) from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise LabelingFailed(
                f"chat completion failed: {self._safe(f'{type(exc).__name__}: {exc}')}",
                retries=stats.retries,
                usage=stats.usage,
            ) from None
        stats.usage = stats.usage + _usage(data)
        return _content(data)

    def _safe(self, text: str) -> str:
        return mask_secrets(text, [self._api_key])


def _classify(error: BaseException, policy: RetryPolicy) -> RetryDecision:
    if isinstance(error, InvalidCompletion):
        return RetryDecision(True, reason=str(error))
    return classify_error(error, policy)


def _usage(data: dict[str, Any]) -> TokenUsage:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return TokenUsage()

    def number(key: str) -> int:
        value = usage.get(key)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0

    prompt, completion = number("prompt_tokens"), number("completion_tokens")
    return TokenUsage(prompt, completion, number("total_tokens") or prompt + completion)


def _content(data: dict[str, Any]) -> str:
    """The assistant text of the first choice (a string, or a list of text parts)."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
