"""The OpenAI-compatible VLM adapter against the fake VLM server (real HTTP, documented wire format)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import SecretStr

from viewfinder_common.testing.fake_vlm import FakeVLMServer
from viewfinder_tagger.adapters.openai_vlm import OpenAIChatModel
from viewfinder_tagger.config import OpenAIConnection
from viewfinder_tagger.domain.answers import ProposedTag, validate_answer
from viewfinder_tagger.domain.definitions import TagDefinition
from viewfinder_tagger.domain.models import ImagePayload, LabelingFailed, LabelTarget, ModelUnavailable

TARGET = LabelTarget(dataset_id="d", file_id="f", uri="s3://b/k.png")

ModelFactory = Callable[..., OpenAIChatModel]


@pytest.fixture
async def make_model(fake_vlm: FakeVLMServer, api_key: str) -> AsyncIterator[ModelFactory]:
    models: list[OpenAIChatModel] = []

    def make(**overrides: object) -> OpenAIChatModel:
        config = OpenAIConnection.model_validate(
            {
                "base_url": fake_vlm.base_url,
                "model": "qwen-vl-max",
                "api_key": SecretStr(api_key),
                "request_timeout_s": 2.0,
                "backoff_base_s": 0.01,
                "backoff_max_s": 0.05,
                **overrides,
            }
        )
        model = OpenAIChatModel("test", config)
        models.append(model)
        return model

    yield make
    for model in models:
        await model.close()


def _image(data: bytes) -> ImagePayload:
    return ImagePayload(mime_type="image/png", data=data)


async def test_labels_an_image_with_tags_usage_and_the_wire_format(
    make_model: ModelFactory,
    fake_vlm: FakeVLMServer,
    colour_definition: TagDefinition,
    png: Callable[[str, int], bytes],
    api_key: str,
) -> None:
    model = make_model()
    answer = await model.label(colour_definition, _image(png("blue", 1)), TARGET)
    assert answer.proposed == (ProposedTag("blue", "", 0.9), ProposedTag("brightness", "dark", 0.8))
    assert answer.retries == 0
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    [call] = fake_vlm.calls
    assert call.authorization == f"Bearer {api_key}"
    assert call.model == "qwen-vl-max"
    assert "As a colour expert" in call.prompt_text
    assert '"brightness": how light the image is Value: one of "light", "dark".' in call.prompt_text


async def test_malformed_answer_gets_one_repair_request(
    make_model: ModelFactory,
    fake_vlm: FakeVLMServer,
    colour_definition: TagDefinition,
    png: Callable[[str, int], bytes],
) -> None:
    fake_vlm.behaviour.malformed_next = 1
    answer = await make_model().label(colour_definition, _image(png("red", 1)), TARGET)
    assert [p.name for p in answer.proposed] == ["red", "brightness"]
    assert answer.retries == 1
    assert [c.repair for c in fake_vlm.calls] == [False, True]


async def test_answer_still_malformed_after_repair_fails_the_file(
    make_model: ModelFactory,
    fake_vlm: FakeVLMServer,
    colour_definition: TagDefinition,
    png: Callable[[str, int], bytes],
) -> None:
    fake_vlm.behaviour.malformed_colours = {"black"}
    with pytest.raises(LabelingFailed, match="not the requested JSON, also after a repair request") as info:
        await make_model().label(colour_definition, _image(png("black", 1)), TARGET)
    assert len(fake_vlm.calls) == 2
    assert info.value.retries == 1
    assert info.value.usage.total_tokens > 0  # both calls were paid for


async def test_429_burst_and_timeouts_are_retried_and_the_limit_adapts(
    make_model: ModelFactory,
    fake_vlm: FakeVLMServer,
    colour_definition: TagDefinition,
    png: Callable[[str, int], bytes],
) -> None:
    fake_vlm.behaviour.rate_limit_burst = 2
    fake_vlm.behaviour.retry_after_s = 0.05
    model = make_model(max_in_flight=8, request_timeout_s=0.5)
    answer = await model.label(colour_definition, _image(png("green", 1)), TARGET)
    assert answer.proposed[0].name == "green"
    assert answer.retries == 2
    assert [c.status for c in fake_vlm.calls] == [429, 429, 200]
    assert model.limiter.limit < 8  # halved by the 429s

    fake_vlm.behaviour.hang_next = 1
    fake_vlm.behaviour.hang_s = 5.0
    answer = await model.label(colour_definition, _image(png("green", 2)), TARGET)
    assert answer.retries == 1  # the first request timed out on our side


async def test_persistent_5xx_fails_the_file_after_the_retries(
    make_model: ModelFactory,
    fake_vlm: FakeVLMServer,
    colour_definition: TagDefinition,
    png: Callable[[str, int], bytes],
) -> None:
    fake_vlm.behaviour.server_error_colours = {"yellow"}
    with pytest.raises(LabelingFailed, match=r"gave up after 3 attempts.*HTTP 500") as info:
        await make_model(max_attempts=3).label(colour_definition, _image(png("yellow", 1)), TARGET)
    assert info.value.retries == 2
    assert len(fake_vlm.calls) == 3


async def test_wrong_key_makes_the_model_unavailable_without_leaking_the_key(
    make_model: ModelFactory,
    fake_vlm: FakeVLMServer,
    colour_definition: TagDefinition,
    png: Callable[[str, int], bytes],
) -> None:
    wrong_key = "sk-wrong-0123456789abcdef"
    with pytest.raises(ModelUnavailable, match="HTTP 401") as info:
        await make_model(api_key=SecretStr(wrong_key)).label(colour_definition, _image(png("red", 1)), TARGET)
    assert wrong_key not in str(info.value)
    # The fake echoed the key back, as OpenAI does; we masked it.
    assert "Incorrect API key provided: ***" in str(info.value)
    assert len(fake_vlm.calls) == 1  # 401 is not retried

    with pytest.raises(ModelUnavailable, match="HTTP 404"):
        await make_model(model="qwen-vl-nope").label(colour_definition, _image(png("red", 1)), TARGET)


async def test_tags_outside_the_definition_are_dropped_by_validation(
    make_model: ModelFactory,
    fake_vlm: FakeVLMServer,
    colour_definition: TagDefinition,
    png: Callable[[str, int], bytes],
) -> None:
    fake_vlm.behaviour.extra_tags = [
        {"name": "unicorn", "confidence": 1.0},
        {"name": "brightness", "value": "neon"},
    ]
    fake_vlm.behaviour.second_colour = True
    fake_vlm.behaviour.code_fence = True
    answer = await make_model().label(colour_definition, _image(png("white", 1)), TARGET)
    outcome = validate_answer(colour_definition, answer.proposed)
    assert [(t.name, t.value) for t in outcome.tags] == [("white", ""), ("brightness", "light")]
    assert outcome.unknown_tags == ("unicorn",)
    assert outcome.disallowed_values == ("brightness=neon",)
    assert len(outcome.single_select_losers) == 1  # the fake's lower-confidence second colour
