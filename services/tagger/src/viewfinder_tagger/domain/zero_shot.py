"""Zero-shot tagging: tag texts and the image embedded into one space, scored by cosine.

Each tag becomes one text per choice: ``"<name>: <description>"`` for a
presence tag, ``"<name>: <value>. <description>"`` for each allowed value.
The image's vector is compared with each text's vector by cosine similarity;
a tag applies when its best text scores at least the threshold (a per-tag
threshold overrides the global one), and the value of the best-scoring text
is the tag's value. The cosine, clipped to [0, 1], is the tag's confidence,
so a single-select group keeps its best-scoring tag during validation.

Calibrating the threshold (``calibrate_threshold``): label a few hundred
images by hand (or take the user-source tags of a labelled dataset), score
every (image, tag) pair with the model, and pick the threshold that maximises
F1 of "score >= threshold" against "the person assigned the tag". Scores of
one embedding model sit in a narrow band (offline MiniLM bridge: roughly
0.1-0.5), so a threshold is only meaningful for the model it was calibrated
on; per-tag thresholds help when some tag texts score high on every image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    tag_thresholds: Mapping[str, float] | None = None,
) -> list[ProposedTag]:
    """Tags whose best text scores at least their threshold, best value chosen per tag."""
    if len(texts) != len(text_vectors):
        raise ValueError("one vector per tag text is needed")
    best: dict[str, tuple[float, str]] = {}
    for text, vector in zip(texts, text_vectors, strict=True):
        score = cosine(image_vector, vector)
        current = best.get(text.tag)
        if current is None or score > current[0]:
            best[text.tag] = (score, text.value)
    thresholds = tag_thresholds or {}
    proposed: list[ProposedTag] = []
    for tag, (score, value) in best.items():
        if score >= thresholds.get(tag, threshold):
            proposed.append(ProposedTag(tag, value, min(1.0, max(0.0, score))))
    return proposed


def calibrate_threshold(samples: Sequence[tuple[float, bool]]) -> Calibration:
    """The threshold maximising F1 over (score, is_positive) pairs; ties prefer the higher threshold.

    Raises ValueError without at least one positive sample.
    """
    positives = sum(1 for _, positive in samples if positive)
    if positives == 0:
        raise ValueError("calibration needs at least one positive (image, tag) pair")
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
