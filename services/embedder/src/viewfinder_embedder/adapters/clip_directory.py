"""``EmbeddingModel`` over a CLIP-style model saved in a local directory.

The directory has the transformers layout (``config.json`` of a CLIP model,
``model.safetensors``, a tokenizer, optionally ``preprocessor_config.json``
with ``image_mean`` / ``image_std``), as ``CLIPModel.save_pretrained`` and
``tokenizer.save_pretrained`` write it. Images arrive decoded at the
vision tower's own ``image_size``, so preprocessing is only the
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
from typing import Any

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


class ClipDirectoryModel:
    """A transformers CLIP model loaded from a directory; build it with ``load``."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        identity: ModelIdentity,
        dimension: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_text_tokens: int,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._identity = identity
        self._fields = (ModelField(FIELD_NAME, dimension, frozenset({QueryKind.TEXT, QueryKind.IMAGE})),)
        self._image_size = image_size
        self._mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
        self._max_text_tokens = max_text_tokens
        self._inference = asyncio.Lock()

    @classmethod
    def load(cls, path: Path) -> ClipDirectoryModel:
        """Blocking: loads the model and tokenizer (call it in a thread)."""
        from transformers import AutoTokenizer, CLIPModel  # noqa: PLC0415 (heavy; only when configured)

        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json: not a transformers model directory")
        model: Any = CLIPModel.from_pretrained(str(path))
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        preprocessor = path / "preprocessor_config.json"
        settings: dict[str, Any] = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
        config: Any = model.config  # transformers' config attributes are loosely typed
        return cls(
            model,
            tokenizer,
            identity=ModelIdentity(id=f"clip-directory:{path.name}", version=_directory_version(path)),
            dimension=int(config.projection_dim),
            image_size=int(config.vision_config.image_size),
            mean=settings.get("image_mean", CLIP_MEAN),
            std=settings.get("image_std", CLIP_STD),
            max_text_tokens=int(config.text_config.max_position_embeddings),
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
            output = self._model.get_image_features(
                pixel_values=torch.from_numpy(np.ascontiguousarray(batch))
            )
        return l2_normalise(_features(output).detach().cpu().numpy())

    def _text_features(self, texts: Sequence[str]) -> VectorMatrix:
        import torch  # noqa: PLC0415

        encoded = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=self._max_text_tokens, return_tensors="pt"
        )
        with torch.inference_mode():
            output = self._model.get_text_features(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
            )
        return l2_normalise(_features(output).detach().cpu().numpy())

    async def close(self) -> None:
        """Nothing to release but memory."""
