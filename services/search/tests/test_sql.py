"""SQL compilation: values only ever travel as parameters."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from viewfinder_search.domain.conditions import (
    MATCH_ALL,
    AllOf,
    AnyOf,
    Compare,
    Comparison,
    HasTag,
    Not,
    OneOf,
    OrderedAttribute,
    Present,
    TagSourceScope,
    TextAttribute,
    TextMatch,
    TextMatchMode,
)
from viewfinder_search.domain.dsl import parse_query
from viewfinder_search.domain.sql import (
    CatalogueFilter,
    SqlParameters,
    compile_condition,
    facet_sql,
    like_escape,
    page_sql,
)

VERSION = "6f1c9a52-8d1e-4a57-9d0c-2b1f5f0f3a11"
HOSTILE = "x'); DROP TABLE files; --"


def test_every_value_is_a_numbered_parameter_and_never_in_the_text() -> None:
    condition = AllOf(
        (
            TextMatch(TextAttribute.NAME, TextMatchMode.EXACT, HOSTILE),
            TextMatch(TextAttribute.DIRECTORY, TextMatchMode.CONTAINS, HOSTILE),
            TextMatch(TextAttribute.KEY, TextMatchMode.PREFIX, HOSTILE),
            OneOf(TextAttribute.FORMAT, (HOSTILE, "PNG")),
            HasTag(TagSourceScope.AI, name=HOSTILE, value=HOSTILE),
            Not(Compare(OrderedAttribute.SIZE, Comparison.GE, 12345678)),
            Compare(OrderedAttribute.MODIFIED, Comparison.LT, datetime(2025, 1, 2, tzinfo=UTC)),
        )
    )
    params = SqlParameters()
    sql = CatalogueFilter(VERSION, condition).where(params)
    assert HOSTILE not in sql
    assert "12345678" not in sql
    assert "DROP" not in sql
    numbers = [int(n) for n in re.findall(r"\$(\d+)::", sql)]
    # Numbered in order of first use; a tag name is used twice (semi- and anti-join).
    assert list(dict.fromkeys(numbers)) == list(range(1, len(params.values) + 1))
    assert params.values[0] == VERSION
    assert params.values.count(HOSTILE) == 4
    # The token match travels as an escaped LIKE pattern, still a parameter.
    assert f"%{HOSTILE}%" in params.values
    assert ["x'); drop table files; --", "png"] in params.values


def test_empty_groups_are_true_and_false() -> None:
    params = SqlParameters()
    assert compile_condition(MATCH_ALL, params) == "TRUE"
    assert compile_condition(AnyOf(()), params) == "FALSE"
    assert params.values == []


def test_leaves_are_never_unknown_so_not_is_a_complement() -> None:
    params = SqlParameters()
    sql = compile_condition(Not(Compare(OrderedAttribute.WIDTH, Comparison.GT, 100)), params)
    assert sql == "(NOT (f.width IS NOT NULL AND f.width > $1::bigint))"
    assert compile_condition(Present(OrderedAttribute.WIDTH), params) == "(f.width IS NOT NULL)"


def test_tag_conditions_respect_source_and_hidden_ai_tags() -> None:
    params = SqlParameters()
    user = compile_condition(HasTag(TagSourceScope.USER, name="sky"), params)
    ai = compile_condition(HasTag(TagSourceScope.AI), params)
    assert "NOT t.removed AND t.source = 'user'" in user
    assert "hidden" not in user
    assert "t.source = 'ai'" in ai
    assert "hidden.removed" in ai
    named_ai = compile_condition(HasTag(TagSourceScope.AI, name="sky"), params)
    assert "t.source = 'ai'" in named_ai
    assert "NOT EXISTS (SELECT 1 FROM file_tags hidden WHERE hidden.file_id = f.id" in named_ai
    assert params.values == ["sky", "sky"]


def test_keyset_page_sql_continues_after_the_cursor() -> None:
    sql, values = page_sql(
        CatalogueFilter(VERSION, parse_query('FileType="PNG"').condition),
        descending=True,
        after=(datetime(2025, 4, 1, tzinfo=UTC), "00000000-0000-4000-8000-000000000001"),
        limit=11,
    )
    assert sql.endswith("ORDER BY f.last_modified DESC, f.id DESC LIMIT $5::bigint")
    assert "f.last_modified < $4::timestamptz" in sql
    assert values[-1] == 11


def test_facet_sql_narrows_to_the_vector_result() -> None:
    sql, values = facet_sql(CatalogueFilter(VERSION, MATCH_ALL), ["00000000-0000-4000-8000-000000000001"], 50)
    assert "f.id = ANY($2::uuid[])" in sql
    assert values == [VERSION, ["00000000-0000-4000-8000-000000000001"], 50]


def test_token_match_is_an_escaped_like_pattern() -> None:
    params = SqlParameters()
    sql = compile_condition(TextMatch(TextAttribute.DIRECTORY, TextMatchMode.CONTAINS, "50%_off\\x"), params)
    # The expression is exactly the one migration 0011 indexes.
    assert sql == "(lower(regexp_replace(f.key, '/?[^/]*$', '')) LIKE lower($1::text))"
    assert params.values == ["%50\\%\\_off\\\\x%"]
    assert like_escape("a_b%c\\d") == "a\\_b\\%c\\\\d"
