"""The semantic (vector) part of a search: what to embed, how many, how close."""

from __future__ import annotations

from dataclasses import dataclass

# EmbedService accepts query texts up to this length (embedding.proto).
MAX_QUERY_TEXT_CHARS = 2048
# Largest top-k a request may ask for (search.proto).
MAX_TOP_K = 1000
# Top-k when a request leaves it unset.
DEFAULT_TOP_K = 100


@dataclass(frozen=True)
class TextQuery:
    """A natural-language query, embedded with the index's model."""

    text: str


@dataclass(frozen=True)
class ImageUriQuery:
    """A query image in a bucket, e.g. ``s3://bucket/key.jpg``."""

    uri: str


@dataclass(frozen=True)
class ImageBytesQuery:
    """A query image uploaded as encoded bytes."""

    data: bytes


SemanticQuery = TextQuery | ImageUriQuery | ImageBytesQuery


@dataclass(frozen=True)
class VectorSearch:
    """A semantic query with its result bounds."""

    query: SemanticQuery
    top_k: int = DEFAULT_TOP_K
    score_threshold: float | None = None
