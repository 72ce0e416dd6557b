"""The offline model: its fields, the bridge arithmetic, and vectors that tell images apart."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from viewfinder_embedder.adapters.offline_model import OfflineEmbeddingModel
from viewfinder_embedder.config import default_model_cache_dir
from viewfinder_embedder.domain import offline_bridge
from viewfinder_embedder.domain.decode import DecodedImage, decode_image
from viewfinder_embedder.domain.model import QueryKind, fields_for


def test_class_weights_keep_the_top_classes_of_a_softened_softmax() -> None:
    logits = np.array([[10.0, 9.0, 1.0, 0.0, -5.0]])
    sharp = offline_bridge.class_weights(logits, temperature=1.0, top_k=2)
    soft = offline_bridge.class_weights(logits, temperature=4.0, top_k=2)
    assert np.count_nonzero(sharp) == 2
    assert np.count_nonzero(soft) == 2
    assert sharp[0, 0] > sharp[0, 1] > 0
    assert soft[0, 1] / soft[0, 0] > sharp[0, 1] / sharp[0, 0]  # a higher temperature flattens
    assert sharp.sum() < 1.0  # the dropped classes' mass is not renormalised away


def test_semantic_and_visual_vectors_are_unit_length_and_centred() -> None:
    rng = np.random.default_rng(0)
    class_texts = offline_bridge.mean_pool(rng.normal(size=(5, 3, 8)), np.ones((5, 3), np.int64))
    semantic = offline_bridge.semantic_vectors(rng.normal(size=(4, 5)), class_texts, top_k=3)
    assert np.allclose(np.linalg.norm(semantic, axis=1), 1.0, atol=1e-5)
    features = np.abs(rng.normal(size=(3, 6))) + 5.0
    visual = offline_bridge.visual_vectors(features, reference_mean=np.full(6, 5.0))
    assert np.allclose(np.linalg.norm(visual, axis=1), 1.0, atol=1e-5)
    raw = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert (visual @ visual.T)[0, 1] < (raw @ raw.T)[0, 1]  # centring removes the shared offset


def test_mean_pool_ignores_padding() -> None:
    states = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    pooled = offline_bridge.mean_pool(states, np.array([[1, 1, 0]]))
    assert np.allclose(pooled, [[1.0, 0.0]])


def _pixels(colour: tuple[int, int, int], shape: str) -> np.ndarray:
    image = Image.new("RGB", (120, 120), (255, 255, 255))
    from PIL import ImageDraw  # noqa: PLC0415

    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)((20, 20, 100, 100), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), size=224, max_pixels=10**7)
    assert isinstance(decoded, DecodedImage)
    return decoded.pixels


async def test_model_fields_and_vectors(offline_model: OfflineEmbeddingModel) -> None:
    assert [(f.name, f.dimension) for f in offline_model.fields] == [("visual", 1280), ("semantic", 384)]
    assert [f.name for f in fields_for(offline_model.fields, QueryKind.IMAGE)] == ["visual"]
    assert [f.name for f in fields_for(offline_model.fields, QueryKind.TEXT)] == ["semantic"]
    images = [
        _pixels((220, 20, 20), "circle"),
        _pixels((210, 30, 30), "circle"),
        _pixels((20, 20, 220), "square"),
    ]
    vectors = await offline_model.embed_images(images)
    assert vectors["visual"].shape == (3, 1280)
    assert vectors["semantic"].shape == (3, 384)
    for matrix in vectors.values():
        assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)
    visual = vectors["visual"]
    assert visual[0] @ visual[1] > visual[0] @ visual[2]  # two red circles are closer than a blue square
    again = await offline_model.embed_images(images[:1])
    assert np.allclose(again["visual"][0], visual[0], atol=1e-5)  # batch size does not change a vector
    texts = await offline_model.embed_texts(
        ["a red circle", "a red circle", "an invoice from the tax office"]
    )
    assert list(texts) == ["semantic"]
    assert np.allclose(texts["semantic"][0], texts["semantic"][1])
    assert np.allclose(np.linalg.norm(texts["semantic"], axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_a_second_load_comes_from_the_cache_with_the_same_identity(
    offline_model: OfflineEmbeddingModel,
) -> None:
    reloaded = OfflineEmbeddingModel.load(default_model_cache_dir())
    assert reloaded.identity == offline_model.identity
    assert reloaded.identity.version.startswith("1-")
