"""The offline zero-shot tagger against an in-process EmbedService that returns constructed vectors.

The double (conftest's ``ConstructedEmbedService``) is of our own EmbedService
(served by the embedder), so the scoring logic is tested over real gRPC; the
real embedder's quality is measured separately (bench/tagger/calibrate.py:
precision/recall on labelled data), not here.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from PIL import Image

from viewfinder_tagger.adapters.zero_shot_tagger import ZeroShotTagger
from viewfinder_tagger.config import ZeroShotConnection
from viewfinder_tagger.domain.answers import validate_answer
from viewfinder_tagger.domain.definitions import DefinitionContent, TagDefinition, TagSpec
from viewfinder_tagger.domain.models import ImagePayload, LabelingFailed, LabelTarget, ModelUnavailable

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
    embed_service: tuple[Any, str],
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


async def test_errors_are_classified(embed_service: tuple[Any, str]) -> None:
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
