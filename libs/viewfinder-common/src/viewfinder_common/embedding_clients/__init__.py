"""Clients of remote multimodal embedding services (DashScope, PAI-EAS).

Both speak the vendors' documented JSON over aiohttp, retry through
``viewfinder_common.http_retry``, learn the vector dimension from the first
response (never hard-coded) and keep the API key out of every error text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbeddingInput:
    """One item to embed: an image (encoded bytes) or a text; exactly one is set."""

    image: bytes | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if (self.image is None) == (self.text is None):
            raise ValueError("an EmbeddingInput is either an image or a text")


class EmbeddingServiceError(Exception):
    """The service answered, but not with an embedding for every item; the message says why."""
