"""The one interface every labeling model implements, and what it answers.

A model gets a tag definition and an image (bytes or a URL the model service
can fetch, whichever the model asks for) and answers proposed tags with the
tokens it spent. Validation against the definition happens afterwards, in one
place (``answers.validate_answer``), whatever the model.

Failures are two kinds of exception: ``LabelingFailed`` is permanent for this
file (bad image, malformed answer after the repair, a 4xx, retries exhausted)
and ends in the dead-letter topic with its reason; ``ModelUnavailable`` means
the model service cannot be used at all (wrong API key, unknown model) and
fails the whole job instead of every file one by one. Neither ever carries a
credential in its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from viewfinder_tagger.domain.answers import ProposedTag
from viewfinder_tagger.domain.definitions import TagDefinition


class ImageTransport(StrEnum):
    """How a model wants the image: its bytes, or a (presigned) URL it fetches itself."""

    BYTES = "bytes"
    URL = "url"


@dataclass(frozen=True)
class ImagePayload:
    """The image of one file as a model receives it."""

    mime_type: str
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class LabelTarget:
    """Which file is labeled (for models that look things up per dataset, and for logs)."""

    dataset_id: str
    file_id: str
    uri: str
    # The version and content ETag of the file, for models that reuse stored vectors.
    dataset_version_id: str = ""
    etag: str = ""


@dataclass(frozen=True)
class TokenUsage:
    """Model tokens spent; all zero for models that do not count tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )


@dataclass(frozen=True)
class ModelAnswer:
    """Proposed tags of one image, the tokens spent and how many calls were retried."""

    proposed: tuple[ProposedTag, ...]
    usage: TokenUsage = TokenUsage()
    retries: int = 0


class LabelingFailed(Exception):
    """Labeling this file failed for good; ``reason`` is safe to show and to put in a DLQ header."""

    def __init__(self, reason: str, *, retries: int = 0, usage: TokenUsage | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retries = retries
        self.usage = usage or TokenUsage()


class ModelUnavailable(Exception):
    """The model service refuses every call (bad credentials, unknown model): stop, do not DLQ each file."""


class LabelingModel(Protocol):
    """A labeling model (OpenAI-compatible VLM, offline zero-shot tagger, …)."""

    @property
    def model_id(self) -> str:
        """What produced the tags (stored with each AI tag, e.g. "qwen-vl-max")."""
        ...

    @property
    def image_transport(self) -> ImageTransport:
        """Whether ``label`` wants the image's bytes or a URL."""
        ...

    @property
    def max_image_side(self) -> int:
        """Longest side, in pixels, the model needs; bigger images are downscaled first."""
        ...

    @property
    def max_image_bytes(self) -> int:
        """Largest encoded image worth sending; bigger ones are re-encoded smaller."""
        ...

    async def label(self, definition: TagDefinition, image: ImagePayload, target: LabelTarget) -> ModelAnswer:
        """Proposes tags for one image; raises LabelingFailed or ModelUnavailable."""
        ...

    async def close(self) -> None:
        """Releases connections; the model is not used afterwards."""
        ...


@runtime_checkable
class StoredVectorModel(Protocol):
    """A model that can label from the image vector the embedder stored, without the image."""

    @property
    def labels_from_stored_vectors(self) -> bool:
        """Whether ``label_stored`` is in use (then automatic labeling follows file-embedded)."""
        ...

    async def label_stored(self, definition: TagDefinition, target: LabelTarget) -> ModelAnswer | None:
        """Proposes tags from the stored vector; None when no current one exists (then ``label``)."""
        ...


def labels_from_stored_vectors(model: LabelingModel) -> bool:
    """Whether ``model`` labels from stored image vectors (so it waits for the embedder)."""
    return isinstance(model, StoredVectorModel) and model.labels_from_stored_vectors
