"""Zero-shot tagging: tag texts and the image embedded into one space, scored by cosine.

Each tag becomes one text per choice: ``"<name>: <description>"`` for a
presence tag, ``"<name>: <value>. <description>"`` for each allowed value.
The image's vector is compared with each text's vector by cosine similarity;
a tag's score is its best text's, and that text's value is the tag's value.
The cosine, clipped to [0, 1], is the tag's confidence, so a single-select
group keeps its best-scoring tag during validation.

Which tags apply (``propose_tags``): a tag whose score is at least the
threshold (a per-tag threshold overrides the global one) and, with a
``margin``, within ``margin`` of the image's best tag. The margin makes the
rule relative to the definition's other tags: scores of one embedding model
sit in a narrow band (offline MiniLM bridge: roughly 0.1-0.6) and some tag
texts score high on every image, so an absolute threshold alone either fires
everywhere or nowhere.

Calibrating (``calibrate_threshold``, ``calibrate_margin``): take images
whose tags a person assigned (or the user-source tags of a labelled
dataset), score every (image, tag) pair with the model, and pick the
parameters that maximise F1 of the decision against the person's tags.
Parameters are only meaningful for the model they were calibrated on;
``bench/tagger/calibrate.py`` records how the defaults were measured.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from viewfinder_tagger.domain.answers import ProposedTag
from viewfinder_tagger.domain.definitions import TagDefinition


@dataclass(frozen=True)
class TagText:
    """One text to embed: a tag, or one allowed value of a tag."""

    tag: str
    value: str
    text: str


@dataclass(frozen=True)
class Calibration:
    """The threshold that maximised F1 on labelled data, with what it achieved there."""

    threshold: float
    precision: float
    recall: float
    f1: float
    positives: int
    samples: int


def tag_texts(definition: TagDefinition) -> list[TagText]:
    """The texts to embed for ``definition``, in definition order."""
    texts: list[TagText] = []
    for tag in definition.content.tags:
        description = tag.description.strip()
        if tag.allowed_values:
            for value in tag.allowed_values:
                text = f"{tag.name}: {value}. {description}" if description else f"{tag.name}: {value}"
                texts.append(TagText(tag.name, value, text))
        else:
            texts.append(TagText(tag.name, "", f"{tag.name}: {description}" if description else tag.name))
    return texts


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0 for a zero vector. Raises ValueError on a dimension mismatch."""
    if len(a) != len(b):
        raise ValueError(f"vectors have different dimensions ({len(a)} and {len(b)})")
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norm if norm > 0 else 0.0


def score_tags(
    image_vector: Sequence[float],
    texts: Sequence[TagText],
    text_vectors: Sequence[Sequence[float]],
    *,
    threshold: float,
    margin: float | None = None,
    tag_thresholds: Mapping[str, float] | None = None,
) -> list[ProposedTag]:
    """Tags that apply to the image (``propose_tags``), scored by cosine against each text's vector."""
    if len(texts) != len(text_vectors):
        raise ValueError("one vector per tag text is needed")
    scores = [cosine(image_vector, vector) for vector in text_vectors]
    return propose_tags(
        best_per_tag(texts, scores), threshold=threshold, margin=margin, tag_thresholds=tag_thresholds
    )


def best_per_tag(texts: Sequence[TagText], scores: Sequence[float]) -> dict[str, tuple[float, str]]:
    """Tag → (its best text's score, that text's value), in definition order."""
    if len(texts) != len(scores):
        raise ValueError("one score per tag text is needed")
    best: dict[str, tuple[float, str]] = {}
    for text, score in zip(texts, scores, strict=True):
        current = best.get(text.tag)
        if current is None or score > current[0]:
            best[text.tag] = (score, text.value)
    return best


def propose_tags(
    best: Mapping[str, tuple[float, str]],
    *,
    threshold: float,
    margin: float | None = None,
    tag_thresholds: Mapping[str, float] | None = None,
) -> list[ProposedTag]:
    """Tags scoring at least their threshold and, with ``margin``, within it of the best tag."""
    if not best:
        return []
    thresholds = tag_thresholds or {}
    top = max(score for score, _ in best.values())
    proposed: list[ProposedTag] = []
    for tag, (score, value) in best.items():
        if score < thresholds.get(tag, threshold):
            continue
        if margin is not None and score < top - margin:
            continue
        proposed.append(ProposedTag(tag, value, min(1.0, max(0.0, score))))
    return proposed


def calibrate_threshold(samples: Sequence[tuple[float, bool]]) -> Calibration:
    """The threshold maximising F1 over (score, is_positive) pairs; ties prefer the higher threshold.

    Raises ValueError without at least one positive sample.
    """
    positives = sum(1 for _, positive in samples if positive)
    if positives == 0:
        raise ValueError("calibration needs at least one positive (image, tag) pair")
    return _best_cut(samples, positives)


def _best_cut(samples: Sequence[tuple[float, bool]], positives: int) -> Calibration:
    """The F1-best "score >= cut" over ``samples`` when ``positives`` positives exist in all."""
    ordered = sorted(samples, key=lambda s: s[0], reverse=True)
    best = Calibration(
        threshold=math.inf, precision=0.0, recall=0.0, f1=0.0, positives=positives, samples=len(samples)
    )
    true_positives = 0
    for index, (score, positive) in enumerate(ordered):
        true_positives += positive
        # Candidate threshold: this score (everything at or above it is kept).
        if index + 1 < len(ordered) and ordered[index + 1][0] == score:
            continue
        kept = index + 1
        precision = true_positives / kept
        recall = true_positives / positives
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        if f1 > best.f1:
            best = Calibration(score, precision, recall, f1, positives, len(samples))
    return best


# Margins ``calibrate_margin`` tries: 0 to 0.15 in steps of 0.0025.
MARGIN_CANDIDATES = tuple(step / 400 for step in range(61))


@dataclass(frozen=True)
class MarginCalibration:
    """The (threshold, margin) pair that maximised F1 on labelled data, with what it achieved there."""

    threshold: float
    margin: float
    precision: float
    recall: float
    f1: float


def calibrate_margin(
    images: Sequence[Mapping[str, float]],
    truths: Sequence[Collection[str]],
    *,
    margins: Sequence[float] = MARGIN_CANDIDATES,
) -> MarginCalibration:
    """The F1-best ``propose_tags`` parameters over images' tag scores and their true tags.

    For each candidate margin, the tags within it of their image's best score
    are the candidates and the threshold is the F1-best cut over them (recall
    counts every true tag, also those the margin excluded). Ties prefer the
    smaller margin. Raises ValueError without a true tag.
    """
    if len(images) != len(truths):
        raise ValueError("one set of true tags per image is needed")
    positives = sum(len(truth) for truth in truths)
    if positives == 0:
        raise ValueError("calibration needs at least one true (image, tag) pair")
    best: MarginCalibration | None = None
    for margin in sorted(margins):
        candidates = [
            (score, tag in truth)
            for scores, truth in zip(images, truths, strict=True)
            if scores
            for top in (max(scores.values()),)
            for tag, score in scores.items()
            if score >= top - margin
        ]
        cut = _best_cut(candidates, positives)
        if best is None or cut.f1 > best.f1:
            best = MarginCalibration(cut.threshold, margin, cut.precision, cut.recall, cut.f1)
    assert best is not None
    return best
