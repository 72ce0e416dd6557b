"""Tag definitions: the guide prompt and the tags a model may assign, versioned.

A definition version is immutable once stored; label runs record the version
they used. Validation here is what CreateTagDefinition(Version) enforce, with
reasons a user can act on (which tag, which group, what is wrong).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from viewfinder_common.errors import InvalidArgument

MAX_NAME_CHARS = 128
MAX_DESCRIPTION_CHARS = 2000
MAX_GUIDE_PROMPT_CHARS = 8000
MAX_TAGS = 500
MAX_ALLOWED_VALUES = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SelectionMode(StrEnum):
    """How many tags of one group may apply to a file (stored as these strings)."""

    SINGLE = "single"
    MULTIPLE = "multiple"


@dataclass(frozen=True)
class TagSpec:
    """One tag the model may assign; ``allowed_values`` empty for a presence tag."""

    name: str
    description: str = ""
    allowed_values: tuple[str, ...] = ()
    group: str = ""


@dataclass(frozen=True)
class TagGroup:
    """A named group of tags sharing a selection mode."""

    name: str
    description: str = ""
    selection: SelectionMode = SelectionMode.MULTIPLE


@dataclass(frozen=True)
class DefinitionContent:
    """What a person writes for one version: the prompt, the tags and their groups."""

    description: str
    guide_prompt: str
    tags: tuple[TagSpec, ...]
    groups: tuple[TagGroup, ...] = ()


@dataclass(frozen=True)
class TagDefinition:
    """One stored, immutable version of a tag definition."""

    id: str
    name: str
    version: int
    content: DefinitionContent
    created_at: datetime

    def tag(self, name: str) -> TagSpec | None:
        """The tag called ``name`` (exact spelling), if the definition has one."""
        return self._tags_by_name().get(name)

    def group(self, name: str) -> TagGroup | None:
        """The group called ``name``, if any."""
        return next((g for g in self.content.groups if g.name == name), None)

    def _tags_by_name(self) -> Mapping[str, TagSpec]:
        return {t.name: t for t in self.content.tags}


def _check_text(what: str, value: str, limit: int, *, required: bool) -> None:
    if required and not value.strip():
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > limit:
        raise InvalidArgument(f"{what} is {len(value)} characters long; at most {limit} are allowed")


def _check_name(what: str, value: str) -> None:
    _check_text(what, value, MAX_NAME_CHARS, required=True)
    if value != value.strip():
        raise InvalidArgument(f"{what} {value!r} must not start or end with spaces")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{what} {value!r} must not contain control characters")


def validate_definition_name(name: str) -> None:
    """Raises InvalidArgument unless ``name`` is a usable definition name."""
    _check_name("tag definition name", name)


def validate_content(content: DefinitionContent) -> None:
    """Raises InvalidArgument for anything a model or a person could not use unambiguously."""
    _check_text("description", content.description, MAX_DESCRIPTION_CHARS, required=False)
    _check_text("guide_prompt", content.guide_prompt, MAX_GUIDE_PROMPT_CHARS, required=False)
    if not content.tags:
        raise InvalidArgument("a tag definition needs at least one tag")
    if len(content.tags) > MAX_TAGS:
        raise InvalidArgument(f"a tag definition has at most {MAX_TAGS} tags; got {len(content.tags)}")
    group_names: set[str] = set()
    for index, group in enumerate(content.groups):
        _check_name(f"groups[{index}].name", group.name)
        _check_text(
            f"group {group.name!r} description", group.description, MAX_DESCRIPTION_CHARS, required=False
        )
        if group.name in group_names:
            raise InvalidArgument(f"group name {group.name!r} is used twice")
        group_names.add(group.name)
    tag_names: set[str] = set()
    for index, tag in enumerate(content.tags):
        _check_name(f"tags[{index}].name", tag.name)
        _check_text(f"tag {tag.name!r} description", tag.description, MAX_DESCRIPTION_CHARS, required=False)
        folded = tag.name.casefold()
        if folded in tag_names:
            raise InvalidArgument(f"tag name {tag.name!r} is used twice (names are compared ignoring case)")
        tag_names.add(folded)
        if tag.group and tag.group not in group_names:
            raise InvalidArgument(
                f"tag {tag.name!r} is in group {tag.group!r}, which the definition does not declare"
            )
        if len(tag.allowed_values) > MAX_ALLOWED_VALUES:
            raise InvalidArgument(f"tag {tag.name!r} has more than {MAX_ALLOWED_VALUES} allowed values")
        seen_values: set[str] = set()
        for value in tag.allowed_values:
            _check_name(f"an allowed value of tag {tag.name!r}", value)
            if value.casefold() in seen_values:
                raise InvalidArgument(f"tag {tag.name!r} lists the allowed value {value!r} twice")
            seen_values.add(value.casefold())


def tags_to_json(tags: Iterable[TagSpec]) -> list[dict[str, Any]]:
    """The ``tag_definition_versions.tags`` column (schema in migration 0003)."""
    return [
        {
            "name": t.name,
            "description": t.description,
            "allowed_values": list(t.allowed_values),
            "group": t.group,
        }
        for t in tags
    ]


def groups_to_json(groups: Iterable[TagGroup]) -> list[dict[str, Any]]:
    """The ``tag_definition_versions.groups`` column (schema in migration 0003)."""
    return [{"name": g.name, "description": g.description, "selection": g.selection.value} for g in groups]


def tags_from_json(rows: Sequence[Mapping[str, Any]]) -> tuple[TagSpec, ...]:
    """Inverse of ``tags_to_json``."""
    return tuple(
        TagSpec(
            name=str(row["name"]),
            description=str(row.get("description", "")),
            allowed_values=tuple(str(v) for v in row.get("allowed_values", ())),
            group=str(row.get("group", "")),
        )
        for row in rows
    )


def groups_from_json(rows: Sequence[Mapping[str, Any]]) -> tuple[TagGroup, ...]:
    """Inverse of ``groups_to_json``."""
    return tuple(
        TagGroup(
            name=str(row["name"]),
            description=str(row.get("description", "")),
            selection=SelectionMode(row.get("selection", SelectionMode.MULTIPLE.value)),
        )
        for row in rows
    )
