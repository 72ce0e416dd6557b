"""The offline zero-shot tagger against an in-process EmbedService that returns constructed vectors.

The double is of our own EmbedService (served by the embedder), so the scoring
logic is tested over real gRPC; the real embedder's quality is measured
separately (its precision/recall on labelled data), not here.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from PIL import Image
from typing_extensions import override

from viewfinder.v1 import embedding_pb2, embedding_pb2_grpc
from viewfinder_tagger.adapters.zero_shot_tagger import ZeroShotTagger
from viewfinder_tagger.config import ZeroShotConnection
from viewfinder_tagger.domain.answers import validate_answer
from viewfinder_tagger.domain.definitions import DefinitionContent, TagDefinition, TagSpec
from viewfinder_tagger.domain.models import ImagePayload, LabelingFailed, LabelTarget, ModelUnavailable

# Axes: red, green, blue, "cat-ness". Tag texts point along them; images by their mean colour.
TEXT_VECTORS = {
    "red": [1.0, 0.0, 0.0, 0.0],
    "green": [0.0, 1.0, 0.0, 0.0],
    "blue": [0.0, 0.0, 1.0, 0.0],
    "cat": [0.0, 0.0, 0.0, 1.0],
    "tone": [0.6, 0.6, 0.6, 0.0],
}


class ConstructedEmbedService(embedding_pb2_grpc.EmbedServiceServicer):
    """EmbedService double: deterministic vectors, call counts, scripted failures."""

    def __init__(self) -> None:
        self.text_calls: list[str] = []
        self.image_calls = 0
        self.unavailable_next = 0

    @override
    async def EmbedText(
        self, request: embedding_pb2.EmbedTextRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> embedding_pb2.EmbedTextResponse:
        self.text_calls.append(request.text)
        key = request.text.split(":", 1)[0]
        return embedding_pb2.EmbedTextResponse(
            vectors=[embedding_pb2.NamedVector(field="semantic", values=TEXT_VECTORS[key])]
        )

    @override
    async def EmbedImage(
        self, request: embedding_pb2.EmbedImageRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> embedding_pb2.EmbedImageResponse:
        self.image_calls += 1
        if self.unavailable_next > 0:
            self.unavailable_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "model loading")
        if request.dataset_id == "no-index":
            await context.abort(grpc.StatusCode.NOT_FOUND, "dataset no-index has no index")
        try:
            with Image.open(io.BytesIO(request.image_bytes)) as image:
                r, g, b = image.convert("RGB").resize((1, 1)).getpixel((0, 0))  # type: ignore[misc]
        except OSError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cannot decode the image")
        semantic = [r / 255, g / 255, b / 255, 0.0]
        fields = [embedding_pb2.NamedVector(field="visual", values=[1.0, 2.0])]
        if request.dataset_id != "visual-only":
            fields.append(embedding_pb2.NamedVector(field="semantic", values=semantic))
        return embedding_pb2.EmbedImageResponse(vectors=fields)


@pytest.fixture
async def embed_service() -> AsyncIterator[tuple[ConstructedEmbedService, str]]:
    servicer = ConstructedEmbedService()
    server = grpc.aio.server()
    embedding_pb2_grpc.add_EmbedServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


DEFINITION = TagDefinition(
    id="d",
    name="zs",
    version=1,
    content=DefinitionContent(
        description="",
        guide_prompt="",
        tags=(
            TagSpec("red", "mostly red"),
            TagSpec("green", "mostly green"),
            TagSpec("blue", "mostly blue"),
            TagSpec("cat", "a cat"),
            TagSpec("tone", "colour tone", allowed_values=("warm", "cool")),
        ),
    ),
    created_at=datetime.now(UTC),
)


def _image(rgb: tuple[int, int, int]) -> ImagePayload:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), rgb).save(buffer, format="PNG")
    return ImagePayload(mime_type="image/png", data=buffer.getvalue())


async def test_keeps_tags_above_the_threshold_and_caches_tag_texts(
    embed_service: tuple[ConstructedEmbedService, str],
) -> None:
    servicer, address = embed_service
    tagger = ZeroShotTagger("offline", ZeroShotConnection(embedder_address=address, threshold=0.9))
    try:
        answer = await tagger.label(DEFINITION, _image((220, 30, 30)), LabelTarget("ds", "f1", "s3://b/1"))
        outcome = validate_answer(DEFINITION, answer.proposed)
        assert [t.name for t in outcome.tags] == ["red"]
        assert outcome.tags[0].confidence == pytest.approx(220 / (220**2 + 2 * 30**2) ** 0.5, rel=1e-4)
        texts_after_first = len(servicer.text_calls)
        assert texts_after_first == 6  # red, green, blue, cat, tone=warm, tone=cool

        answer = await tagger.label(DEFINITION, _image((30, 30, 220)), LabelTarget("ds", "f2", "s3://b/2"))
        assert [p.name for p in answer.proposed] == ["blue"]
        assert len(servicer.text_calls) == texts_after_first  # tag texts came from the cache

        # A grey image is close to "tone" (both values score the same; the first wins) and to no colour.
        tagger_low = ZeroShotTagger(
            "offline",
            ZeroShotConnection(embedder_address=address, threshold=0.9, tag_thresholds={"red": 0.99}),
        )
        answer = await tagger_low.label(
            DEFINITION, _image((128, 128, 128)), LabelTarget("ds", "f3", "s3://b/3")
        )
        assert [(p.name, p.value) for p in answer.proposed] == [("tone", "warm")]
        await tagger_low.close()
    finally:
        await tagger.close()


async def test_errors_are_classified(embed_service: tuple[ConstructedEmbedService, str]) -> None:
    servicer, address = embed_service
    tagger = ZeroShotTagger("offline", ZeroShotConnection(embedder_address=address))
    try:
        servicer.unavailable_next = 1  # transient: retried
        answer = await tagger.label(DEFINITION, _image((30, 200, 30)), LabelTarget("ds", "f", "u"))
        assert answer.proposed[0].name == "green"
        assert servicer.image_calls == 2

        with pytest.raises(ModelUnavailable, match="NOT_FOUND: dataset no-index has no index"):
            await tagger.label(DEFINITION, _image((1, 2, 3)), LabelTarget("no-index", "f", "u"))
        with pytest.raises(ModelUnavailable, match=r"fields \['visual'\].*not 'semantic'"):
            await tagger.label(DEFINITION, _image((1, 2, 3)), LabelTarget("visual-only", "f", "u"))
        broken = ImagePayload(mime_type="image/png", data=b"garbage")
        with pytest.raises(LabelingFailed, match="INVALID_ARGUMENT: cannot decode the image"):
            await tagger.label(DEFINITION, broken, LabelTarget("ds", "f", "u"))
    finally:
        await tagger.close()
