"""``EmbeddingModel`` over a CLIP-style model saved in a local directory.

Two layouts are read:

* **transformers**: ``config.json`` of a CLIP model, ``model.safetensors``, a
  tokenizer, optionally ``preprocessor_config.json`` with ``image_mean`` /
  ``image_std``, as ``CLIPModel.save_pretrained`` and
  ``tokenizer.save_pretrained`` write it;
* **open_clip**: ``open_clip_config.json``, ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin`` and the tokenizer, as open_clip's
  ``save_for_hf`` writes it (ViT towers; see ``open_clip_directory``).

A directory with a transformers ``config.json`` is read as transformers,
else one with ``open_clip_config.json`` as open_clip. Images arrive decoded
at the vision tower's own ``image_size``, so preprocessing is only the
normalisation; no image processor (and no torchvision) is needed.

One shared image/text space: one field, ``embedding``, with the projection
dimension the config states. Inference runs in a worker thread (torch
releases the GIL), one call at a time per model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from viewfinder_embedder.domain.model import (
    ImagePixels,
    ModelError,
    ModelField,
    ModelIdentity,
    QueryKind,
    VectorMatrix,
    l2_normalise,
)

FIELD_NAME = "embedding"
# OpenAI CLIP's normalisation, used when the directory states none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(output: Any) -> Any:
    """The projected features, whether transformers returned a tensor or an output object."""
    return output if hasattr(output, "detach") else output.pooler_output


def _directory_version(path: Path) -> str:
    """A digest of the config and the weights: retrained weights give a new version."""
    digest = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir() if p.suffix in {".json", ".safetensors", ".bin"}):
        with (path / name).open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class ClipEncoder(Protocol):
    """The two towers of a loaded CLIP network (torch tensors in, unnormalised features out)."""

    def image_features(self, pixel_values: Any) -> Any:
        """(N, 3, H, W) normalised pixels → (N, dimension) features."""

    def text_features(self, texts: Sequence[str]) -> Any:
        """Texts → (N, dimension) features."""


class TransformersClipEncoder:
    """A transformers ``CLIPModel`` and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, *, max_text_tokens: int) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._max_text_tokens = max_text_tokens

    def image_features(self, pixel_values: Any) -> Any:
        """``get_image_features``."""
        return _features(self._model.get_image_features(pixel_values=pixel_values))

    def text_features(self, texts: Sequence[str]) -> Any:
        """``get_text_features`` of the tokenized texts."""
        encoded = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=self._max_text_tokens, return_tensors="pt"
        )
        return _features(
            self._model.get_text_features(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
            )
        )


class OpenClipEncoder:
    """An open_clip ``CLIP`` network rebuilt in plain torch, and open_clip's text encoding."""

    def __init__(self, network: Any, tokenizer: Any) -> None:
        self._network = network
        self._tokenizer = tokenizer

    def image_features(self, pixel_values: Any) -> Any:
        """``encode_image``."""
        return self._network.encode_image(pixel_values)

    def text_features(self, texts: Sequence[str]) -> Any:
        """``encode_text`` of open_clip-style token ids."""
        return self._network.encode_text(self._tokenizer(texts))


def _has_transformers_layout(path: Path) -> bool:
    return (path / "config.json").is_file()


class ClipDirectoryModel:
    """A CLIP model loaded from a directory (transformers or open_clip layout); build it with ``load``."""

    def __init__(
        self,
        encoder: ClipEncoder,
        *,
        identity: ModelIdentity,
        dimension: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self._encoder = encoder
        self._identity = identity
        self._fields = (ModelField(FIELD_NAME, dimension, frozenset({QueryKind.TEXT, QueryKind.IMAGE})),)
        self._image_size = image_size
        self._mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
        self._inference = asyncio.Lock()

    @classmethod
    def load(cls, path: Path) -> ClipDirectoryModel:
        """Blocking: loads the model and tokenizer of either layout (call it in a thread)."""
        if not path.is_dir():
            raise ModelError(f"model directory {path} does not exist")
        if _has_transformers_layout(path):
            return cls._load_transformers(path)
        from viewfinder_embedder.adapters import open_clip_directory  # noqa: PLC0415 (torch; only when configured)

        if (path / open_clip_directory.CONFIG_NAME).is_file():
            return cls._load_open_clip(path)
        raise ModelError(
            f"{path} has no config.json (transformers layout) and no "
            f"{open_clip_directory.CONFIG_NAME} (open_clip layout)"
        )

    @classmethod
    def _load_open_clip(cls, path: Path) -> ClipDirectoryModel:
        from viewfinder_embedder.adapters import open_clip_directory  # noqa: PLC0415

        config = open_clip_directory.read_config(path)
        tokenizer = open_clip_directory.OpenClipTokenizer(
            path, context_length=config.text.context_length, pad_id=config.text.pad_id
        )
        network = open_clip_directory.load_network(path, config)
        return cls(
            OpenClipEncoder(network, tokenizer),
            identity=ModelIdentity(id=f"open-clip-directory:{path.name}", version=_directory_version(path)),
            dimension=config.embed_dim,
            image_size=config.vision.image_size,
            mean=config.mean or CLIP_MEAN,
            std=config.std or CLIP_STD,
        )

    @classmethod
    def _load_transformers(cls, path: Path) -> ClipDirectoryModel:
        from transformers import AutoTokenizer, CLIPModel  # noqa: PLC0415 (heavy; only when configured)

        model: Any = CLIPModel.from_pretrained(str(path))
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        preprocessor = path / "preprocessor_config.json"
        settings: dict[str, Any] = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
        config: Any = model.config  # transformers' config attributes are loosely typed
        return cls(
            TransformersClipEncoder(
                model, tokenizer, max_text_tokens=int(config.text_config.max_position_embeddings)
            ),
            identity=ModelIdentity(id=f"clip-directory:{path.name}", version=_directory_version(path)),
            dimension=int(config.projection_dim),
            image_size=int(config.vision_config.image_size),
            mean=settings.get("image_mean", CLIP_MEAN),
            std=settings.get("image_std", CLIP_STD),
        )

    @property
    def identity(self) -> ModelIdentity:
        """Directory name and a digest of its config and weights."""
        return self._identity

    @property
    def fields(self) -> Sequence[ModelField]:
        """The one shared field."""
        return self._fields

    @property
    def image_size(self) -> int:
        """The vision tower's input side."""
        return self._image_size

    async def embed_images(self, images: Sequence[ImagePixels]) -> Mapping[str, VectorMatrix]:
        """One row per image."""
        if not images:
            return {FIELD_NAME: np.zeros((0, self._fields[0].dimension), dtype=np.float32)}
        for pixels in images:
            if pixels.shape != (self._image_size, self._image_size, 3):
                raise ModelError(
                    f"expected {self._image_size}x{self._image_size}x3 pixels, got {pixels.shape}"
                )
        async with self._inference:
            return {FIELD_NAME: await asyncio.to_thread(self._image_features, images)}

    async def embed_texts(self, texts: Sequence[str]) -> Mapping[str, VectorMatrix]:
        """One row per text."""
        if not texts:
            return {FIELD_NAME: np.zeros((0, self._fields[0].dimension), dtype=np.float32)}
        async with self._inference:
            return {FIELD_NAME: await asyncio.to_thread(self._text_features, texts)}

    def _image_features(self, images: Sequence[ImagePixels]) -> VectorMatrix:
        import torch  # noqa: PLC0415

        batch: npt.NDArray[np.float32] = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        batch = (batch - self._mean) / self._std
        with torch.inference_mode():
            features = self._encoder.image_features(torch.from_numpy(np.ascontiguousarray(batch)))
        return l2_normalise(features.detach().cpu().numpy())

    def _text_features(self, texts: Sequence[str]) -> VectorMatrix:
        import torch  # noqa: PLC0415

        with torch.inference_mode():
            features = self._encoder.text_features(texts)
        return l2_normalise(features.detach().cpu().numpy())

    async def close(self) -> None:
        """Nothing to release but memory."""
