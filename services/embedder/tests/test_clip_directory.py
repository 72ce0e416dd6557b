"""A CLIP model from a local directory: a tiny, randomly initialised one the test saves itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from viewfinder_embedder.adapters.clip_directory import FIELD_NAME, ClipDirectoryModel
from viewfinder_embedder.domain.model import ModelError, QueryKind


def _save_tiny_clip(directory: Path) -> None:
    torch.manual_seed(0)
    vocab = {"<unk>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for word in ["a", "photo", "of", "red", "blue", "green", "cat", "dog"]:
        vocab[word] = len(vocab)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": 64,
            "max_position_embeddings": 16,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
        },
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(str(directory))
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=word_level,
        unk_token="<unk>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=16,
    ).save_pretrained(str(directory))


async def test_a_saved_clip_directory_embeds_images_and_texts_into_one_space(tmp_path: Path) -> None:
    await asyncio.to_thread(_save_tiny_clip, tmp_path)
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
