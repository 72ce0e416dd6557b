"""The arithmetic of the offline model (DESIGN §5), free of any runtime.

* ``visual``: EfficientNet-Lite0's pooled 1280-d features, minus a fixed
  reference mean, L2-normalised. The raw features are non-negative (ReLU6),
  so every pair has a large common component; removing the mean leaves the
  directions that tell images apart.
* ``semantic``: a 384-d bridge into MiniLM's sentence space. The image's
  ImageNet class probabilities (softmax at temperature ``T``, top ``k`` kept)
  weight the MiniLM embeddings of "a photo of a <class>"; a text query is
  embedded by MiniLM directly, so text and image meet in one space.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from viewfinder_embedder.domain.model import ImagePixels, VectorMatrix, l2_normalise

# EfficientNet-Lite was trained on (pixel - 127) / 128 (TensorFlow's lite
# builder, MEAN_RGB = STDDEV_RGB-ish 127/128); measured on openclipart it
# retrieves better than ImageNet mean/std normalisation.
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0
# Bridge parameters (measured on openclipart; bench/eval).
SOFTMAX_TEMPERATURE = 4.0
TOP_CLASSES = 20
CLASS_PROMPT = "a photo of a {}"


def image_batch_to_input(images: list[ImagePixels] | npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """N x H x W x 3 uint8 RGB to the network's N x 3 x H x W float32 input."""
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"expected N x H x W x 3 RGB images, got shape {batch.shape}")
    batch -= PIXEL_MEAN
    batch /= PIXEL_SCALE
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def visual_vectors(
    features: npt.NDArray[np.floating], reference_mean: npt.NDArray[np.floating]
) -> VectorMatrix:
    """Mean-centred, L2-normalised pooled features."""
    centred = np.asarray(features, dtype=np.float32) - np.asarray(reference_mean, dtype=np.float32)
    return l2_normalise(centred)


def class_weights(
    logits: npt.NDArray[np.floating], temperature: float = SOFTMAX_TEMPERATURE, top_k: int = TOP_CLASSES
) -> npt.NDArray[np.float32]:
    """Softmax(logits / T) with all but the ``top_k`` largest probabilities set to zero."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    probabilities = np.exp(scaled)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    k = min(top_k, probabilities.shape[1])
    keep = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    weights = np.zeros_like(probabilities)
    np.put_along_axis(weights, keep, np.take_along_axis(probabilities, keep, axis=1), axis=1)
    return weights.astype(np.float32)


def semantic_vectors(
    logits: npt.NDArray[np.floating],
    class_text_embeddings: npt.NDArray[np.floating],
    temperature: float = SOFTMAX_TEMPERATURE,
    top_k: int = TOP_CLASSES,
) -> VectorMatrix:
    """Probability-weighted class-text embeddings, L2-normalised (the text-query space)."""
    weights = class_weights(logits, temperature, top_k)
    return l2_normalise(weights @ np.asarray(class_text_embeddings, dtype=np.float32))


def mean_pool(
    token_states: npt.NDArray[np.floating], attention_mask: npt.NDArray[np.integer]
) -> VectorMatrix:
    """Sentence embeddings the sentence-transformers way: masked mean of token states, L2-normalised."""
    mask = attention_mask[..., None].astype(np.float32)
    summed = (np.asarray(token_states, dtype=np.float32) * mask).sum(axis=1)
    counts = np.maximum(mask.sum(axis=1), 1.0)
    return l2_normalise(summed / counts)
