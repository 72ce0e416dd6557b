"""What we ask a labeling model, and how its answer is checked against the definition.

The prompt lists the definition's tags (with descriptions, allowed values and
group rules) and asks for one JSON object::

    {"tags": [{"name": "<tag>", "value": "<allowed value or empty>", "confidence": 0.0-1.0}]}

Answers are parsed leniently (Markdown code fences and prose around the
object are tolerated, names match ignoring case) but validated strictly:
tags outside the definition and values outside a tag's allowed values are
dropped and counted, a single-select group keeps only its most confident tag,
and a tag answered twice keeps its most confident answer. Nothing outside the
definition survives validation, so nothing outside it reaches the catalogue.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from viewfinder_tagger.domain.definitions import SelectionMode, TagDefinition, TagSpec

_CODE_FENCE = re.compile(r"```(?:json|JSON)?\s*(?P<body>.*?)```", re.S)
_MAX_ECHOED_ANSWER_CHARS = 2000

ANSWER_FORMAT = (
    'Answer with one JSON object and nothing else: {"tags": [{"name": "<tag name>", '
    '"value": "<one of the tag\'s allowed values, or an empty string>", "confidence": <0.0 to 1.0>}]}. '
    "List only tags that apply to the image; use only the tag names and values listed above; "
    'answer {"tags": []} if none applies.'
)
SYSTEM_PROMPT = (
    "You label images for a machine-learning training-data catalogue. "
    "You only use the tags you are given and you answer with JSON only."
)


class MalformedAnswer(ValueError):
    """The model's answer is not the JSON object we asked for; the text says what is wrong."""


@dataclass(frozen=True)
class ProposedTag:
    """A tag as a model answered it, before validation."""

    name: str
    value: str = ""
    confidence: float | None = None


@dataclass(frozen=True)
class ValidatedTag:
    """A tag that passed validation, spelled as the definition spells it."""

    name: str
    value: str
    confidence: float | None


@dataclass(frozen=True)
class ValidationOutcome:
    """The tags kept and what was dropped, with the reason for each drop."""

    tags: tuple[ValidatedTag, ...]
    unknown_tags: tuple[str, ...] = ()
    disallowed_values: tuple[str, ...] = ()
    single_select_losers: tuple[str, ...] = ()

    @property
    def dropped_outside_definition(self) -> int:
        """Answers that named a tag or value the definition does not have (LabelCounts.tags_dropped)."""
        return len(self.unknown_tags) + len(self.disallowed_values)


def build_prompt(definition: TagDefinition) -> str:
    """The user-message text for labeling one image against ``definition``."""
    content = definition.content
    lines: list[str] = []
    if content.guide_prompt.strip():
        lines += [content.guide_prompt.strip(), ""]
    lines.append("Tags you may assign:")
    for tag in content.tags:
        lines.append(_describe_tag(tag))
    if content.groups:
        lines += ["", "Tag groups:"]
        for group in content.groups:
            members = ", ".join(t.name for t in content.tags if t.group == group.name)
            rule = (
                "choose at most one of its tags"
                if group.selection is SelectionMode.SINGLE
                else "any number of its tags may apply"
            )
            description = f" ({group.description.strip()})" if group.description.strip() else ""
            lines.append(f'- "{group.name}"{description}: {rule}: {members}')
    lines += ["", ANSWER_FORMAT]
    return "\n".join(lines)


def _describe_tag(tag: TagSpec) -> str:
    text = f'- "{tag.name}"'
    if tag.description.strip():
        text += f": {tag.description.strip()}"
    if tag.allowed_values:
        text += " Value: one of " + ", ".join(f'"{v}"' for v in tag.allowed_values) + "."
    return text


def build_repair_prompt(problem: str) -> str:
    """The follow-up message after an answer that was not the JSON we asked for."""
    return (
        f"Your previous answer could not be used: {problem}. "
        "Answer again for the same image with only the JSON object, no Markdown and no other text. "
        + ANSWER_FORMAT
    )


def echo_of_answer(content: str) -> str:
    """The previous answer, shortened, to put back into the repair conversation."""
    return content[:_MAX_ECHOED_ANSWER_CHARS]


def parse_answer(content: str) -> list[ProposedTag]:
    """The tags in a model answer; raises MalformedAnswer when it is not the requested JSON."""
    document = _load_json(content)
    if isinstance(document, dict):
        if "tags" not in document:
            raise MalformedAnswer('the JSON object has no "tags" field')
        items = document["tags"]
    else:
        items = document
    if not isinstance(items, list):
        raise MalformedAnswer('"tags" is not a list')
    proposed: list[ProposedTag] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            proposed.append(ProposedTag(name=item))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise MalformedAnswer(f'tags[{index}] is not an object with a string "name"')
        value = item.get("value")
        proposed.append(
            ProposedTag(
                name=item["name"],
                value="" if value is None else str(value),
                confidence=_confidence(item.get("confidence")),
            )
        )
    return proposed


def _load_json(content: str) -> Any:
    text = content.strip()
    if not text:
        raise MalformedAnswer("the answer is empty")
    fenced = _CODE_FENCE.search(text)
    if fenced:
        text = fenced.group("body").strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    # Prose around the object: take the outermost {...}.
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            return json.loads(text[start : end + 1])
        except json.JSONDecodeError as exc:
            raise MalformedAnswer(f"the answer is not valid JSON ({exc.msg} at character {exc.pos})") from exc
    raise MalformedAnswer("the answer contains no JSON object")


def _confidence(raw: Any) -> float | None:
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    if 1.0 < value <= 100.0:  # a percentage
        value /= 100.0
    return min(1.0, max(0.0, value))


def _rank(tag: ValidatedTag) -> float:
    """Ordering key for conflicts: a stated confidence beats none."""
    return -1.0 if tag.confidence is None else tag.confidence


def validate_answer(definition: TagDefinition, proposed: Sequence[ProposedTag]) -> ValidationOutcome:
    """Keeps only what ``definition`` allows (see the module docstring for the rules)."""
    by_folded = {t.name.casefold(): t for t in definition.content.tags}
    unknown: list[str] = []
    disallowed: list[str] = []
    kept: dict[str, ValidatedTag] = {}
    for answer in proposed:
        spec = definition.tag(answer.name) or by_folded.get(" ".join(answer.name.split()).casefold())
        if spec is None:
            unknown.append(answer.name)
            continue
        if spec.allowed_values:
            value = _allowed_spelling(spec, answer.value)
            if value is None:
                disallowed.append(f"{spec.name}={answer.value}")
                continue
        else:
            value = ""  # a presence tag has no value, whatever the model added
        candidate = ValidatedTag(spec.name, value, answer.confidence)
        previous = kept.get(spec.name)
        if previous is None or _rank(candidate) > _rank(previous):
            kept[spec.name] = candidate
    tags, losers = _apply_single_select(definition, list(kept.values()))
    return ValidationOutcome(tuple(tags), tuple(unknown), tuple(disallowed), tuple(losers))


def _allowed_spelling(spec: TagSpec, value: str) -> str | None:
    folded = value.strip().casefold()
    return next((v for v in spec.allowed_values if v.casefold() == folded), None)


def _apply_single_select(
    definition: TagDefinition, tags: list[ValidatedTag]
) -> tuple[list[ValidatedTag], list[str]]:
    """Per single-select group keeps the most confident tag (the first on a tie), in answer order."""
    single_groups = {g.name for g in definition.content.groups if g.selection is SelectionMode.SINGLE}

    def group_of(tag: ValidatedTag) -> str:
        spec = definition.tag(tag.name)
        return spec.group if spec else ""

    winners: dict[str, ValidatedTag] = {}
    for tag in tags:
        group = group_of(tag)
        if group in single_groups:
            current = winners.get(group)
            if current is None or _rank(tag) > _rank(current):
                winners[group] = tag
    winner_names = {t.name for t in winners.values()}
    kept = [t for t in tags if group_of(t) not in single_groups or t.name in winner_names]
    losers = [t.name for t in tags if group_of(t) in single_groups and t.name not in winner_names]
    return kept, losers
