"""The offline zero-shot tagger: tag texts vs. the image, in the embedder's vector space.

No labeling model is loaded here: the embedder already serves the offline
embedding model (DESIGN §5) over gRPC, so this adapter asks it for one
vector per tag text (``"name: description"``) and scores them against the
image (``domain.zero_shot``). Tag-text vectors are cached per (dataset,
index, text): they are the same for every image of a definition.

The image's side: ``label_stored`` scores against the vector the embedder
already stored for the file's current content (``adapters.stored_vectors``),
so nothing is fetched, decoded or embedded twice; ``label`` (the fallback,
and the path with ``use_stored_vectors`` off) sends the image's bytes to
EmbedImage.

Errors: UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are retried
with backoff; INVALID_ARGUMENT (the embedder cannot decode the image) fails
the file; NOT_FOUND / FAILED_PRECONDITION (the dataset has no index yet), a
missing vector field and an embedder still UNAVAILABLE after the retries make
the model unavailable for the whole job (which fails and can be resumed).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from viewfinder.v1 import embedding_pb2, embedding_pb2_grpc
from viewfinder_common.http_retry import RetriesExhausted, RetryDecision, RetryPolicy, call_with_retries
from viewfinder_common.logging import get_logger
from viewfinder_tagger.adapters.stored_vectors import StoredVectorScorer
from viewfinder_tagger.config import ZeroShotConnection
from viewfinder_tagger.domain.definitions import TagDefinition
from viewfinder_tagger.domain.models import (
    ImagePayload,
    ImageTransport,
    LabelingFailed,
    LabelTarget,
    ModelAnswer,
    ModelUnavailable,
)
from viewfinder_tagger.domain.zero_shot import TagText, best_per_tag, propose_tags, score_tags, tag_texts

log = get_logger(__name__)
T = TypeVar("T")

_RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
_UNUSABLE = frozenset(
    {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED}
)
_TEXT_CACHE_SIZE = 20_000
_TEXT_CONCURRENCY = 8


def _classify(error: BaseException, policy: RetryPolicy) -> RetryDecision:
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in _RETRYABLE:
        return RetryDecision(True, reason=error.code().name)
    return RetryDecision(False)


class ZeroShotTagger:
    """A LabelingModel that scores tag texts against the image with EmbedService vectors."""

    def __init__(
        self, connection_name: str, config: ZeroShotConnection, *, stored: StoredVectorScorer | None = None
    ) -> None:
        self._name = connection_name
        self._config = config
        self._stored = stored if config.use_stored_vectors else None
        self._channel: grpc.aio.Channel | None = None
        self._stub: embedding_pb2_grpc.EmbedServiceAsyncStub | None = None
        self._text_vectors: OrderedDict[tuple[str, str, str], list[float]] = OrderedDict()
        self._policy = RetryPolicy(max_attempts=4, base_delay_s=0.2, max_delay_s=5.0)

    @property
    def model_id(self) -> str:
        """Recorded with each tag (default "offline-zero-shot")."""
        return self._config.model_id

    @property
    def image_transport(self) -> ImageTransport:
        """The embedder gets the image's bytes."""
        return ImageTransport.BYTES

    @property
    def max_image_side(self) -> int:
        """Embedding models look at a few hundred pixels; no need to send more."""
        return self._config.max_image_side

    @property
    def max_image_bytes(self) -> int:
        """Largest encoded image sent in one gRPC message."""
        return self._config.max_image_bytes

    @property
    def labels_from_stored_vectors(self) -> bool:
        """Whether stored image vectors are used (a scorer is wired and the connection allows it)."""
        return self._stored is not None

    def _embedder(self) -> embedding_pb2_grpc.EmbedServiceAsyncStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self._config.embedder_address,
                options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
            )
            self._stub = embedding_pb2_grpc.EmbedServiceStub(self._channel)
        assert self._stub is not None
        return self._stub

    async def close(self) -> None:
        """Closes the gRPC channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def label_stored(self, definition: TagDefinition, target: LabelTarget) -> ModelAnswer | None:
        """Tags scored against the file's stored image vector; None when it has no current one."""
        if self._stored is None or not target.etag:
            return None
        texts = tag_texts(definition)
        text_vectors = await self._embed_texts(target.dataset_id, texts)
        scores = await self._stored.scores(
            target,
            index_name=self._config.index_name,
            field=self._config.vector_field,
            text_vectors=text_vectors,
        )
        if scores is None:
            return None
        proposed = propose_tags(
            best_per_tag(texts, scores),
            threshold=self._config.threshold,
            margin=self._config.margin,
            tag_thresholds=self._config.tag_thresholds,
        )
        return ModelAnswer(tuple(proposed))

    async def label(self, definition: TagDefinition, image: ImagePayload, target: LabelTarget) -> ModelAnswer:
        """Tags whose texts score high enough against the image's vector from EmbedImage."""
        if image.data is None:
            raise LabelingFailed("the zero-shot tagger needs the image's bytes")
        image_bytes = image.data
        texts = tag_texts(definition)
        stub = self._embedder()
        image_reply = await self._call(
            lambda: stub.EmbedImage(
                embedding_pb2.EmbedImageRequest(
                    dataset_id=target.dataset_id,
                    index_name=self._config.index_name,
                    image_bytes=image_bytes,
                    vector_fields=[self._config.vector_field],
                ),
                timeout=self._config.request_timeout_s,
            ),
            what="embedding the image",
        )
        text_vectors = await self._embed_texts(target.dataset_id, texts)
        image_vectors = {v.field: list(v.values) for v in image_reply.vectors}
        field = self._config.vector_field
        if field not in image_vectors:
            raise ModelUnavailable(
                f"EmbedService answered image vector fields {sorted(image_vectors)} for dataset "
                f"{target.dataset_id}, not {field!r}; set the zero-shot connection's vector_field "
                "to a field that holds both image and text vectors"
            )
        try:
            proposed = score_tags(
                image_vectors[field],
                texts,
                text_vectors,
                threshold=self._config.threshold,
                margin=self._config.margin,
                tag_thresholds=self._config.tag_thresholds,
            )
        except ValueError as exc:
            raise ModelUnavailable(f"image and text vectors are not comparable: {exc}") from None
        return ModelAnswer(tuple(proposed))

    async def _embed_texts(self, dataset_id: str, texts: Sequence[TagText]) -> list[list[float]]:
        stub = self._embedder()
        field = self._config.vector_field
        index = self._config.index_name
        gate = asyncio.Semaphore(_TEXT_CONCURRENCY)

        async def one(text: str) -> list[float]:
            key = (dataset_id, index, text)
            cached = self._text_vectors.get(key)
            if cached is not None:
                self._text_vectors.move_to_end(key)
                return cached
            async with gate:
                reply = await self._call(
                    lambda: stub.EmbedText(
                        embedding_pb2.EmbedTextRequest(dataset_id=dataset_id, index_name=index, text=text),
                        timeout=self._config.request_timeout_s,
                    ),
                    what="embedding a tag text",
                )
            vectors = {v.field: list(v.values) for v in reply.vectors}
            if field not in vectors:
                raise ModelUnavailable(
                    f"EmbedService answered text vector fields {sorted(vectors)}, not {field!r}"
                )
            self._text_vectors[key] = vectors[field]
            while len(self._text_vectors) > _TEXT_CACHE_SIZE:
                self._text_vectors.popitem(last=False)
            return vectors[field]

        return list(await asyncio.gather(*(one(t.text) for t in texts)))

    async def _call(self, call: Callable[[], Awaitable[T]], *, what: str) -> T:
        try:
            return await call_with_retries(call, self._policy, classify=_classify)
        except RetriesExhausted as exc:
            last = exc.last_error
            if isinstance(last, grpc.aio.AioRpcError) and last.code() is grpc.StatusCode.UNAVAILABLE:
                # The embedder is down: every file would fail alike; fail the job instead (resumable).
                raise ModelUnavailable(
                    f"{what} failed: EmbedService at {self._config.embedder_address} {_describe(last)}"
                ) from None
            raise LabelingFailed(f"{what} failed: EmbedService {_describe(last)}") from None
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _UNUSABLE:
                raise ModelUnavailable(
                    f"{what} failed: EmbedService at {self._config.embedder_address} {_describe(exc)}"
                ) from None
            raise LabelingFailed(f"{what} failed: EmbedService {_describe(exc)}") from None


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"answered {error.code().name}: {error.details()}"
    return f"failed: {error}"
