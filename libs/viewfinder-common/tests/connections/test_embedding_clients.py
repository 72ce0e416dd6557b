"""DashScope and PAI-EAS embedding clients against their fake servers over real HTTP."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image

from viewfinder_common.embedding_clients import EmbeddingInput, EmbeddingServiceError
from viewfinder_common.embedding_clients.dashscope import DashScopeEmbeddingClient
from viewfinder_common.embedding_clients.pai_eas import PaiEasEmbeddingClient
from viewfinder_common.http_retry import HTTPStatusError, RetryPolicy
from viewfinder_common.testing.fake_dashscope import FakeDashScopeServer, FakeEmbeddingBehaviour
from viewfinder_common.testing.fake_pai_eas import FakePaiEasServer

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _noisy_png(side: int) -> bytes:
    """A PNG that compresses badly, so it is large in bytes."""
    image = Image.effect_noise((side, side), 100).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_dashscope_batches_within_the_item_limit_and_keeps_order() -> None:
    async with FakeDashScopeServer(api_key="sk-good") as server:
        server.behaviour.max_items_per_request = 10
        client = DashScopeEmbeddingClient(
            api_key="sk-good",
            model="tongyi-embedding-vision-plus",
            base_url=server.base_url,
            max_items_per_request=10,
            retry_policy=FAST,
        )
        texts = [f"caption {i}" for i in range(25)]
        vectors = await client.embed_texts(texts)
        again = await client.embed_texts(["caption 7"])
        await client.close()
    assert [call.items for call in server.calls if call.status == 200] == [10, 10, 5, 1]
    assert len(vectors) == 25
    assert vectors[7] == again[0]  # same content, same vector, in the caller's order
    assert vectors[6] != vectors[7]


@pytest.mark.parametrize(
    ("model", "dimension"), [("tongyi-embedding-vision-plus", 1152), ("custom-model", 7)]
)
async def test_dashscope_dimension_comes_from_the_response(model: str, dimension: int) -> None:
    async with FakeDashScopeServer(api_key="k", models={model: dimension}) as server:
        client = DashScopeEmbeddingClient(
            api_key="k", model=model, base_url=server.base_url, retry_policy=FAST
        )
        assert client.dimension is None
        vectors = await client.embed([EmbeddingInput(image=_png((200, 0, 0))), EmbeddingInput(text="red")])
        await client.close()
    assert client.dimension == dimension
    assert all(len(v) == dimension for v in vectors)
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0, rel_tol=1e-6)


async def test_dashscope_downscales_images_above_the_size_limit() -> None:
    large = _noisy_png(600)
    limit = 60_000
    assert len(large) > limit
    async with FakeDashScopeServer(api_key="k") as server:
        server.behaviour.max_image_bytes = limit  # the server would reject the original
        client = DashScopeEmbeddingClient(
            api_key="k",
            model="multimodal-embedding-v1",
            base_url=server.base_url,
            max_image_bytes=limit,
            max_image_side=512,
            retry_policy=FAST,
        )
        vectors = await client.embed_images([large, _png((0, 0, 200))])
        await client.close()
    assert len(vectors) == 2
    sizes = next(call.image_bytes for call in server.calls if call.status == 200)
    assert sizes[0] <= limit
    assert sizes[1] == len(_png((0, 0, 200)))  # a small image goes as it is


async def test_dashscope_retries_429_with_retry_after_and_5xx() -> None:
    behaviour = FakeEmbeddingBehaviour(throttle_next=1, fail_next=1, retry_after_s=0.01, latency_s=0.01)
    async with FakeDashScopeServer(api_key="k", behaviour=behaviour) as server:
        client = DashScopeEmbeddingClient(
            api_key="k", model="multimodal-embedding-v1", base_url=server.base_url, retry_policy=FAST
        )
        vectors = await client.embed_texts(["a"])
        await client.close()
    assert [call.status for call in server.calls] == [429, 500, 200]
    assert len(vectors[0]) == 1024


async def test_dashscope_wrong_key_fails_at_once_without_echoing_the_key() -> None:
    async with FakeDashScopeServer(api_key="sk-right") as server:
        client = DashScopeEmbeddingClient(
            api_key="sk-wrong-secret-123",
            model="multimodal-embedding-v1",
            base_url=server.base_url,
            retry_policy=FAST,
        )
        with pytest.raises(HTTPStatusError) as raised:
            await client.embed_texts(["a"])
        await client.close()
    assert raised.value.status == 401
    assert "InvalidApiKey" in str(raised.value)
    assert "sk-wrong-secret-123" not in str(raised.value)
    assert len(server.calls) == 1  # 401 is not retried


async def test_pai_eas_retries_only_the_items_that_failed() -> None:
    async with FakePaiEasServer(token="eas-token", dimension=1536) as server:
        server.flaky_items = {"text:b": 1, "text:d": 2}
        client = PaiEasEmbeddingClient(endpoint=server.endpoint, token="eas-token", retry_policy=FAST)
        vectors = await client.embed_texts(["a", "b", "c", "d", "e"])
        reference = await client.embed_texts(["d"])
        await client.close()
    assert [call.items for call in server.calls] == [5, 2, 1, 1]
    assert client.items_retried == 3
    assert client.dimension == 1536
    assert vectors[3] == reference[0]
    assert len({tuple(v) for v in vectors}) == 5


async def test_pai_eas_gives_up_on_items_that_keep_failing() -> None:
    async with FakePaiEasServer(token="t") as server:
        server.flaky_items = {"text:bad": 100}
        client = PaiEasEmbeddingClient(
            endpoint=server.endpoint, token="t", retry_policy=RetryPolicy(max_attempts=3, base_delay_s=0.01)
        )
        with pytest.raises(EmbeddingServiceError, match=r"embedded 1 of 2 items after 3 partial attempts"):
            await client.embed_texts(["good", "bad"])
        await client.close()
    assert [call.items for call in server.calls] == [2, 1, 1]


async def test_pai_eas_images_429_5xx_and_bad_requests() -> None:
    behaviour = FakeEmbeddingBehaviour(
        throttle_next=1, fail_next=1, retry_after_s=0.01, max_items_per_request=32
    )
    async with FakePaiEasServer(token="t", dimension=3584, behaviour=behaviour) as server:
        client = PaiEasEmbeddingClient(endpoint=server.endpoint, token="t", retry_policy=FAST)
        vectors = await client.embed_images([_png((1, 2, 3)), _png((3, 2, 1))])
        assert [len(v) for v in vectors] == [3584, 3584]
        assert [call.status for call in server.calls] == [429, 500, 200]
        wrong_model = PaiEasEmbeddingClient(
            endpoint=server.endpoint, token="t", model="nope", retry_policy=FAST
        )
        with pytest.raises(EmbeddingServiceError, match="status_code 400"):
            await wrong_model.embed_texts(["a"])
        await client.close()
        await wrong_model.close()


async def test_pai_eas_wrong_token_is_401() -> None:
    async with FakePaiEasServer(token="right") as server:
        client = PaiEasEmbeddingClient(endpoint=server.endpoint, token="wrong-token-xyz", retry_policy=FAST)
        with pytest.raises(HTTPStatusError) as raised:
            await client.embed_texts(["a"])
        await client.close()
    assert raised.value.status == 401
    assert "wrong-token-xyz" not in str(raised.value)
