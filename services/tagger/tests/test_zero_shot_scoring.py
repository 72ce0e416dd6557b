"""Zero-shot scoring: tag texts, cosine scores, thresholds and threshold calibration."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from viewfinder_tagger.domain.definitions import DefinitionContent, TagDefinition, TagSpec
from viewfinder_tagger.domain.zero_shot import (
    best_per_tag,
    calibrate_margin,
    calibrate_threshold,
    cosine,
    propose_tags,
    score_tags,
    tag_texts,
)

DEFINITION = TagDefinition(
    id="d",
    name="n",
    version=1,
    content=DefinitionContent(
        description="",
        guide_prompt="",
        tags=(
            TagSpec("cat", "a domestic cat"),
            TagSpec("colour", "main colour", allowed_values=("red", "blue")),
        ),
    ),
    created_at=datetime.now(UTC),
)


def test_tag_texts_have_one_text_per_presence_tag_and_per_allowed_value() -> None:
    assert [(t.tag, t.value, t.text) for t in tag_texts(DEFINITION)] == [
        ("cat", "", "cat: a domestic cat"),
        ("colour", "red", "colour: red. main colour"),
        ("colour", "blue", "colour: blue. main colour"),
    ]


def test_cosine() -> None:
    assert cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="different dimensions"):
        cosine([1.0], [1.0, 2.0])


def test_score_tags_keeps_tags_over_threshold_with_their_best_value() -> None:
    texts = tag_texts(DEFINITION)
    vectors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # cat, colour=red, colour=blue
    image = [0.6, 0.1, 0.8]
    proposed = score_tags(image, texts, vectors, threshold=0.5)
    assert [(p.name, p.value) for p in proposed] == [("cat", ""), ("colour", "blue")]
    assert proposed[0].confidence == pytest.approx(cosine(image, vectors[0]))
    # A per-tag threshold overrides the global one.
    proposed = score_tags(image, texts, vectors, threshold=0.5, tag_thresholds={"cat": 0.9})
    assert [p.name for p in proposed] == ["colour"]


def test_calibration_picks_the_threshold_with_the_best_f1() -> None:
    samples = [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.3, False), (0.2, False)]
    calibration = calibrate_threshold(samples)
    # >= 0.6 keeps 3 of 3 positives and 1 negative: P 0.75, R 1.0, F1 0.857 (the best cut).
    assert calibration.threshold == 0.6
    assert calibration.precision == pytest.approx(0.75)
    assert calibration.recall == pytest.approx(1.0)
    assert calibration.f1 == pytest.approx(6 / 7)
    with pytest.raises(ValueError, match="at least one positive"):
        calibrate_threshold([(0.5, False)])


def test_a_margin_keeps_only_tags_close_to_the_images_best() -> None:
    best = {"cat": (0.40, ""), "dog": (0.395, ""), "car": (0.30, ""), "tree": (0.05, "")}
    assert [p.name for p in propose_tags(best, threshold=0.1, margin=0.01)] == ["cat", "dog"]
    assert [p.name for p in propose_tags(best, threshold=0.1, margin=None)] == ["cat", "dog", "car"]
    # The threshold still applies to the best tag itself.
    assert propose_tags(best, threshold=0.5, margin=0.01) == []
    assert propose_tags({}, threshold=0.0, margin=0.01) == []


def test_best_per_tag_keeps_each_tags_best_text_and_value() -> None:
    texts = tag_texts(DEFINITION)  # cat, colour=red, colour=blue
    assert best_per_tag(texts, [0.2, 0.1, 0.3]) == {"cat": (0.2, ""), "colour": (0.3, "blue")}
    with pytest.raises(ValueError, match="one score per tag text"):
        best_per_tag(texts, [0.2])


def test_margin_calibration_picks_the_f1_best_pair() -> None:
    # The true tag is always within 0.02 of the best; a wider margin only adds wrong tags.
    images = [
        {"cat": 0.40, "dog": 0.39, "car": 0.30},  # truth dog: needs margin >= 0.01
        {"cat": 0.35, "dog": 0.20, "car": 0.34},  # truth cat
        {"cat": 0.10, "dog": 0.12, "car": 0.33},  # truth car
    ]
    truths = [{"dog"}, {"cat"}, {"car"}]
    calibration = calibrate_margin(images, truths, margins=(0.0, 0.01, 0.05))
    # margin 0.01: candidates dog(0.39)+cat(0.40), cat(0.35)+car(0.34), car(0.33): 3 of 5 right.
    # margin 0.0: cat, cat, car: 2 of 3 right (F1 0.667 < 0.75).
    assert (calibration.margin, calibration.threshold) == (0.01, 0.33)
    assert calibration.precision == pytest.approx(3 / 5)
    assert calibration.recall == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one true"):
        calibrate_margin([{"cat": 0.1}], [set()])
