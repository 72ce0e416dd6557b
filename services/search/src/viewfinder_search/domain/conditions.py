"""The catalogue filter as a tree of typed conditions.

Both ways of asking — the structured request fields (tag and metadata
filters) and the query DSL — compile to this one tree, and only this tree
is turned into SQL (``domain.sql``). So the two front ends cannot drift
apart in meaning, and values only ever travel as SQL parameters.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


class TextAttribute(enum.Enum):
    """A text attribute of a file that conditions can match."""

    # Last segment of the object key.
    NAME = "name"
    # The object key without its last segment ("a/b" for "a/b/c.jpg"; "" at the top).
    DIRECTORY = "directory"
    # The whole object key.
    KEY = "key"
    # The image format as Pillow names it ("JPEG", "PNG").
    FORMAT = "format"


class TextMatchMode(enum.Enum):
    """How a text attribute is compared with a value."""

    # Equal, case-sensitive.
    EXACT = "exact"
    # Equal, case-insensitive.
    EXACT_IGNORE_CASE = "exact_ignore_case"
    # Contains the value, case-insensitive.
    CONTAINS = "contains"
    # Starts with the value, case-sensitive (object keys are case-sensitive).
    PREFIX = "prefix"


class OrderedAttribute(enum.Enum):
    """An attribute of a file with an order (numbers and times)."""

    SIZE = "size"
    WIDTH = "width"
    HEIGHT = "height"
    MODIFIED = "modified"


class Comparison(enum.Enum):
    """A comparison operator on an ordered attribute."""

    EQ = "="
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


class TagSourceScope(enum.Enum):
    """Which tags in effect a tag condition looks at."""

    # Tags from either source.
    ALL = "all"
    # Tags assigned by a model and not hidden by a person.
    AI = "ai"
    # Tags assigned by a person.
    USER = "user"


@dataclass(frozen=True)
class TextMatch:
    """A text attribute matches a value."""

    attribute: TextAttribute
    mode: TextMatchMode
    value: str


@dataclass(frozen=True)
class OneOf:
    """A text attribute equals one of several values, case-insensitively (formats)."""

    attribute: TextAttribute
    values: tuple[str, ...]


@dataclass(frozen=True)
class Compare:
    """An ordered attribute compares with a value; a missing attribute never matches."""

    attribute: OrderedAttribute
    comparison: Comparison
    value: int | datetime


@dataclass(frozen=True)
class Present:
    """The file has a value for the attribute (``HAS Width``)."""

    attribute: TextAttribute | OrderedAttribute


@dataclass(frozen=True)
class HasTag:
    """The file carries a tag in effect.

    ``name`` None means any tag (``HAS Tags.ai``); ``value`` None means any
    value of the tag. ``name_contains`` matches names by case-insensitive
    substring instead of equality (``Tags.all:"lane"``).
    """

    scope: TagSourceScope
    name: str | None = None
    value: str | None = None
    name_contains: bool = False


@dataclass(frozen=True)
class AllOf:
    """Every condition holds (an empty AllOf always holds)."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    """At least one condition holds (an empty AnyOf never holds)."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    """The condition does not hold."""

    condition: Condition


Condition = TextMatch | OneOf | Compare | Present | HasTag | AllOf | AnyOf | Not

# The condition that every file meets.
MATCH_ALL: Condition = AllOf(())


def all_of(conditions: Sequence[Condition]) -> Condition:
    """ANDs conditions, flattening nested AllOf and dropping always-true parts."""
    flat: list[Condition] = []
    for condition in conditions:
        if isinstance(condition, AllOf):
            flat.extend(condition.conditions)
        else:
            flat.append(condition)
    if len(flat) == 1:
        return flat[0]
    return AllOf(tuple(flat))
