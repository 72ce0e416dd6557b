"""The fake VLM speaks the OpenAI chat completions wire format, and its answers follow the image."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp
from PIL import Image

from viewfinder_common.testing.fake_vlm import DEFAULT_PALETTE, FakeVLMServer


def _request(colour: str, model: str = "qwen-vl-max") -> dict[str, Any]:
    buffer = io.BytesIO()
    Image.new("RGB", (56, 28), DEFAULT_PALETTE[colour]).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You label images."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "Tags?"},
                ],
            },
        ],
    }


async def test_answers_in_the_chat_completions_format() -> None:
    async with (
        FakeVLMServer(api_key="k") as vlm,
        aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as session,
        session.post(vlm.base_url + "/chat/completions", json=_request("blue")) as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "qwen-vl-max"
    [choice] = body["choices"]
    assert (choice["index"], choice["finish_reason"], choice["message"]["role"]) == (0, "stop", "assistant")
    assert json.loads(choice["message"]["content"]) == {
        "tags": [
            {"name": "blue", "value": "", "confidence": 0.9},
            {"name": "brightness", "value": "dark", "confidence": 0.8},
        ]
    }
    usage = body["usage"]
    assert usage["prompt_tokens"] >= 2  # 56x28 pixels are two 28x28 patches, plus the text
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    [call] = vlm.calls
    assert (call.status, call.colour, call.repair) == (200, "blue", False)


async def test_errors_follow_the_openai_error_format() -> None:
    async with (
        FakeVLMServer(api_key="k", models=frozenset({"qwen-vl-max"})) as vlm,
        aiohttp.ClientSession() as session,
    ):
        url = vlm.base_url + "/chat/completions"
        async with session.post(
            url, json=_request("red"), headers={"Authorization": "Bearer nope"}
        ) as response:
            assert response.status == 401
            error = (await response.json())["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
            assert "nope" in error["message"]  # echoed, as OpenAI does: clients must mask it

        vlm.behaviour.rate_limit_burst = 1
        vlm.behaviour.retry_after_s = 2
        async with session.post(url, json=_request("red"), headers={"Authorization": "Bearer k"}) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "2"
            assert (await response.json())["error"]["code"] == "rate_limit_exceeded"

        async with session.post(
            url, json=_request("red", model="gpt-x"), headers={"Authorization": "Bearer k"}
        ) as response:
            assert response.status == 404

        vlm.behaviour.server_errors_next = 1
        async with session.post(url, json=_request("red"), headers={"Authorization": "Bearer k"}) as response:
            assert response.status == 500
            assert (await response.json())["error"]["type"] == "server_error"
    assert [c.status for c in vlm.calls] == [401, 429, 404, 500]
