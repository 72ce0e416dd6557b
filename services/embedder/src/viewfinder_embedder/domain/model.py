"""The embedding model interface every model connection implements.

A model turns decoded images and query texts into **named vectors**
(DESIGN §5): one or more fields, each with a dimension and the query kinds it
answers. Models with one shared image/text space (DashScope, GME, CLIP) have
one field that answers both; the offline model has ``visual`` for image
queries and ``semantic`` for text queries.

Images arrive decoded (``image_size`` x ``image_size`` x 3 uint8 RGB, from the
decode pool), so that every model sees the same bounded, orientation-fixed,
alpha-composited pixels; an API model re-encodes them as it needs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

ImagePixels = npt.NDArray[np.uint8]
# One row per input, float32.
VectorMatrix = npt.NDArray[np.float32]


class QueryKind(enum.Enum):
    """The kind of query a vector field answers."""

    TEXT = "text"
    IMAGE = "image"


@dataclass(frozen=True)
class ModelField:
    """A named vector field a model produces (cosine similarity, unit vectors)."""

    name: str
    dimension: int
    query_kinds: frozenset[QueryKind]
    metric: str = "cosine"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced vectors; vectors of different versions are not comparable."""

    id: str
    version: str


class ModelError(RuntimeError):
    """The model could not embed an input (a bad input, not an outage)."""


class EmbeddingModel(Protocol):
    """What every embedding model provides."""

    @property
    def identity(self) -> ModelIdentity:
        """Model id and version recorded with every index and event."""

    @property
    def fields(self) -> Sequence[ModelField]:
        """The named vector fields of each image, in a fixed order."""

    @property
    def image_size(self) -> int:
        """Side of the square RGB input the decoder should produce."""

    async def embed_images(self, images: Sequence[ImagePixels]) -> Mapping[str, VectorMatrix]:
        """One (len(images) x dimension) matrix per field, rows L2-normalised."""

    async def embed_texts(self, texts: Sequence[str]) -> Mapping[str, VectorMatrix]:
        """One matrix per field that answers TEXT queries, rows L2-normalised."""

    async def close(self) -> None:
        """Releases sessions, threads and connections."""


def fields_for(model_fields: Sequence[ModelField], kind: QueryKind) -> list[ModelField]:
    """The fields that answer ``kind`` queries, in the model's order."""
    return [f for f in model_fields if kind in f.query_kinds]


def l2_normalise(matrix: npt.NDArray[np.floating]) -> VectorMatrix:
    """Rows scaled to unit length (a zero row stays zero)."""
    values = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    normalised: VectorMatrix = np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
    return normalised
