"""Tag definition validation: what CreateTagDefinition(Version) accept and refuse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from viewfinder_common.errors import InvalidArgument
from viewfinder_tagger.domain.definitions import (
    DefinitionContent,
    SelectionMode,
    TagDefinition,
    TagGroup,
    TagSpec,
    groups_from_json,
    groups_to_json,
    tags_from_json,
    tags_to_json,
    validate_content,
    validate_definition_name,
)


def _content(*tags: TagSpec, groups: tuple[TagGroup, ...] = ()) -> DefinitionContent:
    return DefinitionContent(
        description="", guide_prompt="As a driver, look at the road.", tags=tags, groups=groups
    )


def test_valid_definition_passes_and_round_trips_through_json() -> None:
    content = _content(
        TagSpec("sunny", "clear sky", group="weather"),
        TagSpec("rainy", "rain drops", group="weather"),
        TagSpec("lane line", "painted lane markings", allowed_values=("solid", "dashed")),
        groups=(TagGroup("weather", "the weather", SelectionMode.SINGLE),),
    )
    validate_content(content)
    assert tags_from_json(tags_to_json(content.tags)) == content.tags
    assert groups_from_json(groups_to_json(content.groups)) == content.groups
    definition = TagDefinition("id", "roads", 1, content, datetime.now(UTC))
    assert definition.tag("lane line") == content.tags[2]
    assert definition.tag("Lane Line") is None
    assert definition.group("weather") == content.groups[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_content(), "at least one tag"),
        (_content(TagSpec("car"), TagSpec("Car")), "'Car' is used twice"),
        (
            _content(TagSpec("car", group="vehicles")),
            "group 'vehicles', which the definition does not declare",
        ),
        (_content(TagSpec("")), "tags[0].name must not be empty"),
        (_content(TagSpec(" car")), "must not start or end with spaces"),
        (_content(TagSpec("car", allowed_values=("red", "RED"))), "lists the allowed value 'RED' twice"),
        (
            _content(TagSpec("a", group="g"), groups=(TagGroup("g"), TagGroup("g"))),
            "group name 'g' is used twice",
        ),
        (_content(TagSpec("x" * 129)), "at most 128"),
    ],
)
def test_invalid_definitions_say_what_is_wrong(content: DefinitionContent, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_content(content)


def test_definition_name_rules() -> None:
    validate_definition_name("road-scenes v2")
    for bad in ["", "  ", "tab\tname", "x" * 200]:
        with pytest.raises(InvalidArgument):
            validate_definition_name(bad)
