"""The prompt built from a definition, and parsing + validating model answers against it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from viewfinder_tagger.domain.answers import (
    MalformedAnswer,
    ProposedTag,
    build_prompt,
    build_repair_prompt,
    parse_answer,
    validate_answer,
)
from viewfinder_tagger.domain.definitions import (
    DefinitionContent,
    SelectionMode,
    TagDefinition,
    TagGroup,
    TagSpec,
)

DEFINITION = TagDefinition(
    id="d1",
    name="roads",
    version=3,
    content=DefinitionContent(
        description="",
        guide_prompt="As an experienced driver, look at this road scene.",
        tags=(
            TagSpec("sunny", "clear sky, hard shadows", group="weather"),
            TagSpec("rainy", "rain or wet road", group="weather"),
            TagSpec("lane line", "painted lane markings", allowed_values=("solid", "dashed")),
            TagSpec("pedestrian", "a person on foot"),
        ),
        groups=(TagGroup("weather", "the weather", SelectionMode.SINGLE),),
    ),
    created_at=datetime.now(UTC),
)


def test_prompt_carries_guide_tags_values_and_group_rules() -> None:
    prompt = build_prompt(DEFINITION)
    assert prompt.startswith("As an experienced driver, look at this road scene.")
    assert '"lane line": painted lane markings Value: one of "solid", "dashed".' in prompt
    assert '"weather" (the weather): choose at most one of its tags: sunny, rainy' in prompt
    assert '{"tags": [{"name"' in prompt
    assert "is not valid JSON" in build_repair_prompt("the answer is not valid JSON")


@pytest.mark.parametrize(
    "content",
    [
        '{"tags": [{"name": "sunny", "confidence": 0.8}]}',
        '```json\n{"tags": [{"name": "sunny", "confidence": 0.8}]}\n```',
        'Here is the result: {"tags": [{"name": "sunny", "confidence": 0.8}]} Hope it helps.',
        '{"tags": [{"name": "sunny", "confidence": "80"}]}',
    ],
)
def test_parse_answer_tolerates_fences_prose_and_percentages(content: str) -> None:
    assert parse_answer(content) == [ProposedTag("sunny", "", 0.8)]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"tags": [{"name": "sunny", "confidence": 0.9', "no JSON object|not valid JSON"),
        ("", "empty"),
        ('{"labels": []}', 'no "tags" field'),
        ('{"tags": "sunny"}', "not a list"),
        ('{"tags": [{"value": "x"}]}', 'string "name"'),
    ],
)
def test_parse_answer_rejects_malformed_answers(content: str, problem: str) -> None:
    with pytest.raises(MalformedAnswer, match=problem):
        parse_answer(content)


def test_validation_drops_and_counts_what_is_outside_the_definition() -> None:
    outcome = validate_answer(
        DEFINITION,
        [
            ProposedTag("Pedestrian", "", 0.7),  # other spelling: kept as "pedestrian"
            ProposedTag("traffic light", "", 0.9),  # not in the definition
            ProposedTag("lane line", "zigzag", 0.9),  # value not allowed
            ProposedTag("lane line", "Dashed", 0.6),  # allowed, spelled differently
            ProposedTag("sunny", "", 0.4),
            ProposedTag("rainy", "", 0.8),  # same single-select group, more confident
        ],
    )
    assert [(t.name, t.value, t.confidence) for t in outcome.tags] == [
        ("pedestrian", "", 0.7),
        ("lane line", "dashed", 0.6),
        ("rainy", "", 0.8),
    ]
    assert outcome.unknown_tags == ("traffic light",)
    assert outcome.disallowed_values == ("lane line=zigzag",)
    assert outcome.single_select_losers == ("sunny",)
    assert outcome.dropped_outside_definition == 2


def test_validation_keeps_the_most_confident_duplicate_and_ignores_values_of_presence_tags() -> None:
    outcome = validate_answer(
        DEFINITION,
        [ProposedTag("pedestrian", "yes", 0.3), ProposedTag("pedestrian", "", 0.9), ProposedTag("lane line")],
    )
    assert [(t.name, t.value, t.confidence) for t in outcome.tags] == [("pedestrian", "", 0.9)]
    assert outcome.disallowed_values == ("lane line=",)


def test_single_select_prefers_a_stated_confidence_and_the_first_on_ties() -> None:
    outcome = validate_answer(DEFINITION, [ProposedTag("sunny"), ProposedTag("rainy", "", 0.1)])
    assert [t.name for t in outcome.tags] == ["rainy"]
    outcome = validate_answer(DEFINITION, [ProposedTag("sunny", "", 0.5), ProposedTag("rainy", "", 0.5)])
    assert [t.name for t in outcome.tags] == ["sunny"]
