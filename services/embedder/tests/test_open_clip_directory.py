"""A CLIP model in open_clip's directory layout, checked against transformers' CLIP on the same weights.

The conftest builds a tiny, randomly initialised transformers ``CLIPModel``,
renames its state dict to open_clip's parameter names (``visual.conv1.weight``,
``...attn.in_proj_weight`` with q, k and v stacked, ``text_projection`` as a
matrix ...) and saves it the way open_clip's ``save_for_hf`` does. The loader
(plain torch, no open_clip) must then give the features transformers computes
from the original weights: an independent implementation of the same network.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from viewfinder_embedder.adapters.clip_directory import FIELD_NAME, ClipDirectoryModel
from viewfinder_embedder.domain.model import ModelError


def _unit(features: Any) -> np.ndarray:
    values = (features if isinstance(features, torch.Tensor) else features.pooler_output).numpy()
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def _reference_image_features(reference: Any, images: list[np.ndarray], helpers: Any) -> np.ndarray:
    mean = np.reshape(helpers.tiny_open_clip["mean"], (1, 3, 1, 1))
    std = np.reshape(helpers.tiny_open_clip["std"], (1, 3, 1, 1))
    pixels = (np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - mean) / std
    with torch.no_grad():
        return _unit(reference.get_image_features(pixel_values=torch.from_numpy(pixels.astype(np.float32))))


def _reference_text_features(reference: Any, texts: list[str], helpers: Any) -> np.ndarray:
    """open_clip's encoding written out: start, words, end, zero padding to the context length."""
    vocab, tiny = helpers.tiny_open_clip_vocab(), helpers.tiny_open_clip
    ids = torch.zeros((len(texts), tiny["context"]), dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [tiny["start"], *(vocab[word] for word in text.split()), tiny["end"]]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    with torch.no_grad():
        return _unit(reference.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids)))


@pytest.mark.parametrize(
    ("quick_gelu", "weights"),
    [(False, "open_clip_model.safetensors"), (True, "open_clip_pytorch_model.bin")],
)
async def test_an_open_clip_directory_gives_the_features_of_the_same_weights_in_transformers(
    tmp_path: Path, quick_gelu: bool, weights: str, helpers: Any
) -> None:
    reference = await asyncio.to_thread(
        helpers.save_tiny_open_clip, tmp_path, quick_gelu=quick_gelu, weights=weights
    )

    model = await asyncio.to_thread(ClipDirectoryModel.load, tmp_path)
    (field,) = model.fields
    assert (field.name, field.dimension, model.image_size) == (FIELD_NAME, 24, 32)
    assert model.identity.id == f"open-clip-directory:{tmp_path.name}"
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    texts = ["a photo of red cat", "dog", "blue green"]

    ours_images = (await model.embed_images(images))[FIELD_NAME]
    ours_texts = (await model.embed_texts(texts))[FIELD_NAME]

    assert np.allclose(ours_images, _reference_image_features(reference, images, helpers), atol=1e-5)
    assert np.allclose(ours_texts, _reference_text_features(reference, texts, helpers), atol=1e-5)
    assert not np.allclose(ours_texts[0], ours_texts[1])
    await model.close()


async def test_layer_scale_layer_norm_eps_and_a_biased_text_projection_follow_open_clip(
    tmp_path: Path, helpers: Any
) -> None:
    """``ls_init_value`` (``ls_1.gamma`` / ``ls_2.gamma``), ``norm_kwargs.eps`` and ``proj_bias``
    (``text_projection.weight`` / ``.bias``): the same network as transformers' when the layer
    scales are folded out of the projections they multiply."""
    await asyncio.to_thread(helpers.save_tiny_open_clip, tmp_path)  # the tokenizer
    reference = helpers.tiny_reference_clip(quick_gelu=False, layer_norm_eps=1e-6)
    state = helpers.open_clip_state_dict(reference)
    generator = torch.Generator().manual_seed(5)
    for tower in ("visual.transformer", "transformer"):
        for layer in range(2):
            block = f"{tower}.resblocks.{layer}"
            for scale, projection in (("ls_1", "attn.out_proj"), ("ls_2", "mlp.c_proj")):
                gamma = torch.rand(32, generator=generator) + 0.5
                state[f"{block}.{scale}.gamma"] = gamma
                state[f"{block}.{projection}.weight"] = state[f"{block}.{projection}.weight"] / gamma[:, None]
                state[f"{block}.{projection}.bias"] = state[f"{block}.{projection}.bias"] / gamma
    state["text_projection.weight"] = state.pop("text_projection").T.contiguous()
    state["text_projection.bias"] = torch.zeros(24)
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    config = helpers.open_clip_config(False, ls_init_value=1e-5, norm_kwargs={"eps": 1e-6})
    config["model_cfg"]["text_cfg"] |= {
        "ls_init_value": 1e-5,
        "proj_bias": True,
        "norm_kwargs": {"eps": 1e-6},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))

    model = await asyncio.to_thread(ClipDirectoryModel.load, tmp_path)
    images = [np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    texts = ["a photo of blue dog"]
    ours_images = (await model.embed_images(images))[FIELD_NAME]
    ours_texts = (await model.embed_texts(texts))[FIELD_NAME]
    assert np.allclose(ours_images, _reference_image_features(reference, images, helpers), atol=1e-5)
    assert np.allclose(ours_texts, _reference_text_features(reference, texts, helpers), atol=1e-5)


async def test_the_activation_the_config_names_is_the_one_used(tmp_path: Path, helpers: Any) -> None:
    """GELU weights declared QuickGELU give other features: the comparison above can fail."""
    reference = await asyncio.to_thread(helpers.save_tiny_open_clip, tmp_path, quick_gelu=False)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(helpers.open_clip_config(True)))
    model = await asyncio.to_thread(ClipDirectoryModel.load, tmp_path)
    images = [np.full((32, 32, 3), 90, dtype=np.uint8)]
    ours = (await model.embed_images(images))[FIELD_NAME]
    assert not np.allclose(ours, _reference_image_features(reference, images, helpers), atol=1e-4)


async def test_open_clip_directories_it_cannot_run_are_refused_with_the_reason(
    tmp_path: Path, helpers: Any
) -> None:
    await asyncio.to_thread(helpers.save_tiny_open_clip, tmp_path)
    config = tmp_path / "open_clip_config.json"

    async def refused(pattern: str) -> None:
        with pytest.raises(ModelError, match=pattern):
            await asyncio.to_thread(ClipDirectoryModel.load, tmp_path)

    (tmp_path / "tokenizer.json").rename(tmp_path / "tokenizer.json.off")
    await refused(r"no tokenizer\.json: open_clip's own BPE vocabulary ships inside the open_clip package")
    (tmp_path / "tokenizer.json.off").rename(tmp_path / "tokenizer.json")

    config.write_text(json.dumps(helpers.open_clip_config(False, timm_model_name="vit_base")))
    await refused(r"a timm image tower \(vit_base\) is not supported")
    config.write_text(json.dumps(helpers.open_clip_config(False, layers=[3, 4, 6, 3])))
    await refused(r"ModifiedResNet image towers")
    config.write_text(json.dumps(helpers.open_clip_config(False, pool_magic=True)))
    await refused(r"vision_cfg option\(s\) pool_magic are not supported")
    config.write_text(json.dumps(helpers.open_clip_config(False, layers=3)))
    await refused(r"missing \['visual\.transformer\.resblocks\.2\.attn\.in_proj_bias'")
    config.write_text(json.dumps(helpers.open_clip_config(False, width=64)))
    await refused(r"visual\.class_embedding has shape \(32,\), the config gives \(64,\)")

    config.write_text(json.dumps(helpers.open_clip_config(False)))
    (tmp_path / "open_clip_model.safetensors").unlink()
    await refused(r"no weights \(open_clip_model\.safetensors or open_clip_pytorch_model\.bin\)")
    config.unlink()
    await refused(
        r"no config\.json \(transformers layout\) and no open_clip_config\.json \(open_clip layout\)"
    )
