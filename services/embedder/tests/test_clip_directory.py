"""A CLIP model from a local directory: a tiny, randomly initialised one the test saves itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from viewfinder_embedder.adapters.clip_directory import FIELD_NAME, ClipDirectoryModel
from viewfinder_embedder.domain.model import ModelError, QueryKind


async def test_a_saved_clip_directory_embeds_images_and_texts_into_one_space(
    tmp_path: Path, helpers: Any
) -> None:
    await asyncio.to_thread(helpers.save_tiny_clip, tmp_path)
    model = await asyncio.to_thread(ClipDirectoryModel.load, tmp_path)
    (field,) = model.fields
    assert (field.name, field.dimension, model.image_size) == (FIELD_NAME, 24, 32)
    assert field.query_kinds == frozenset({QueryKind.TEXT, QueryKind.IMAGE})
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    first = (await model.embed_images(images))[FIELD_NAME]
    again = (await model.embed_images(images[:1]))[FIELD_NAME]
    texts = (await model.embed_texts(["a photo of red cat", "dog"]))[FIELD_NAME]
    assert first.shape == (3, 24)
    assert texts.shape == (2, 24)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.allclose(first[0], again[0], atol=1e-5)  # deterministic, independent of the batch
    assert not np.allclose(first[0], first[1])
    assert not np.allclose(texts[0], texts[1])
    reloaded = await asyncio.to_thread(ClipDirectoryModel.load, tmp_path)
    assert reloaded.identity == model.identity
    with pytest.raises(ModelError, match=r"32x32x3"):
        await model.embed_images([np.zeros((16, 16, 3), dtype=np.uint8)])
    await model.close()


async def test_a_directory_without_a_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        await asyncio.to_thread(ClipDirectoryModel.load, tmp_path)
