"""The query DSL: what parses to what, and a precise error for every malformed query."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from viewfinder_search.domain.conditions import (
    AllOf,
    AnyOf,
    Compare,
    Comparison,
    HasTag,
    Not,
    OrderedAttribute,
    Present,
    TagSourceScope,
    TextAttribute,
    TextMatch,
    TextMatchMode,
)
from viewfinder_search.domain.dsl import FIELD_NAMES, QueryError, parse_query
from viewfinder_search.domain.semantic import ImageUriQuery, TextQuery

EXAMPLE = (
    '(FileUpdateTime > "2025-02-28T00:00:00Z" AND FileUpdateTime < "2025-05-30T09:27:29Z") '
    'AND FileDir:"blue_car" AND NOT FileName="toyota.jpg" '
    'AND ((Tags.all="lane line" AND Tags.all="barrier gate") OR NOT Tags.user="rainy days") '
    'AND HAS Tags.ai AND Content:"a fallen water horse" AND TopK=100'
)


def test_issue_example_compiles_to_the_expected_tree() -> None:
    compiled = parse_query(EXAMPLE)
    assert compiled.semantic == TextQuery("a fallen water horse")
    assert compiled.top_k == 100
    assert compiled.score_threshold is None
    assert compiled.condition == AllOf(
        (
            Compare(OrderedAttribute.MODIFIED, Comparison.GT, datetime(2025, 2, 28, tzinfo=UTC)),
            Compare(OrderedAttribute.MODIFIED, Comparison.LT, datetime(2025, 5, 30, 9, 27, 29, tzinfo=UTC)),
            TextMatch(TextAttribute.DIRECTORY, TextMatchMode.CONTAINS, "blue_car"),
            Not(TextMatch(TextAttribute.NAME, TextMatchMode.EXACT, "toyota.jpg")),
            AnyOf(
                (
                    AllOf(
                        (
                            HasTag(TagSourceScope.ALL, name="lane line"),
                            HasTag(TagSourceScope.ALL, name="barrier gate"),
                        )
                    ),
                    Not(HasTag(TagSourceScope.USER, name="rainy days")),
                )
            ),
            HasTag(TagSourceScope.AI),
        )
    )


def test_and_binds_tighter_than_or_and_not_tighter_than_and() -> None:
    compiled = parse_query('Width>1 OR NOT Height>2 AND FileType="png"')
    assert compiled.condition == AnyOf(
        (
            Compare(OrderedAttribute.WIDTH, Comparison.GT, 1),
            AllOf(
                (
                    Not(Compare(OrderedAttribute.HEIGHT, Comparison.GT, 2)),
                    TextMatch(TextAttribute.FORMAT, TextMatchMode.EXACT_IGNORE_CASE, "png"),
                )
            ),
        )
    )


def test_keywords_and_field_names_are_case_insensitive() -> None:
    lower = parse_query('width >= 10 and not has filetype or tags.AI:"car"')
    upper = parse_query('Width >= 10 AND NOT HAS FileType OR Tags.ai:"car"')
    assert lower == upper
    assert lower.condition == AnyOf(
        (
            AllOf(
                (
                    Compare(OrderedAttribute.WIDTH, Comparison.GE, 10),
                    Not(Present(TextAttribute.FORMAT)),
                )
            ),
            HasTag(TagSourceScope.AI, name="car", name_contains=True),
        )
    )


def test_field_names_that_start_with_keywords_are_fields() -> None:
    # "Height" starts with no keyword, but "notes"/"android" would; a made-up field
    # name starting with a keyword must still lex as a field (and be unknown).
    with pytest.raises(QueryError) as caught:
        parse_query('android="x"')
    assert caught.value.message == "unknown field 'android'"


def test_values_escape_quotes_and_backslashes() -> None:
    compiled = parse_query(r'FileName="say \"hi\"\\ there"')
    assert compiled.condition == TextMatch(TextAttribute.NAME, TextMatchMode.EXACT, 'say "hi"\\ there')


def test_times_without_offset_are_utc_and_offsets_are_kept() -> None:
    naive = parse_query('FileUpdateTime >= "2025-03-01T12:00:00"').condition
    offset = parse_query('FileUpdateTime >= "2025-03-01T14:00:00+02:00"').condition
    assert isinstance(naive, Compare)
    assert isinstance(offset, Compare)
    assert naive.value == offset.value == datetime(2025, 3, 1, 12, tzinfo=UTC)


def test_directives_inside_and_only_groups_are_top_level() -> None:
    compiled = parse_query('(Width > 5 AND (Image="s3://b/q.jpg" AND ScoreThreshold=0.25)) AND TopK=7')
    assert compiled.semantic == ImageUriQuery("s3://b/q.jpg")
    assert compiled.top_k == 7
    assert compiled.score_threshold == 0.25
    assert compiled.condition == Compare(OrderedAttribute.WIDTH, Comparison.GT, 5)


def test_a_query_of_only_a_semantic_part_keeps_every_file() -> None:
    compiled = parse_query('Content:"red car"')
    assert compiled.condition == AllOf(())
    assert compiled.top_k is None


def test_file_dir_exact_ignores_a_trailing_slash() -> None:
    assert parse_query('FileDir="cars/blue/"').condition == TextMatch(
        TextAttribute.DIRECTORY, TextMatchMode.EXACT, "cars/blue"
    )


def test_every_documented_field_is_known() -> None:
    assert set(FIELD_NAMES) == {
        "FileName",
        "FileDir",
        "FileType",
        "FileUpdateTime",
        "FileSize",
        "Width",
        "Height",
        "Tags.all",
        "Tags.ai",
        "Tags.user",
        "Content",
        "Image",
        "TopK",
        "ScoreThreshold",
    }


START = ('"("', "NOT", "HAS", "a field name")
VALUE = ("a quoted string", "a number")
OPERATOR = ("an operator (= : > >= < <=)",)
AFTER_CONDITION = ("AND", "OR", "the end of the query")

# (query, line, column, message, expected): each malformed query and the exact error it gets.
MALFORMED = [
    ("", 1, 1, "the query is empty", ("a condition",)),
    ("   ", 1, 1, "the query is empty", ("a condition",)),
    ("FileName", 1, 9, "unexpected end of the query; expected an operator (= : > >= < <=)", OPERATOR),
    ("FileName=", 1, 10, "unexpected end of the query; expected a quoted string or a number", VALUE),
    (
        'FileName="a.jpg',
        1,
        10,
        "unterminated string: it needs a closing double quote on the same line",
        ("a closing '\"'",),
    ),
    (
        "FileName=a.jpg",
        1,
        10,
        "unexpected 'a.jpg' (text values need double quotes); expected a quoted string or a number",
        VALUE,
    ),
    (
        "FileName='a.jpg'",
        1,
        10,
        'unexpected "\'" (strings use double quotes); expected a quoted string or a number',
        VALUE,
    ),
    ('FileName=="a"', 1, 10, "unexpected '='; expected a quoted string or a number", VALUE),
    ('FileName ~ "a"', 1, 10, "unexpected character '~'; expected an operator (= : > >= < <=)", OPERATOR),
    ('(FileName="a"', 1, 14, 'unexpected end of the query; expected ")"', ('")"',)),
    (
        'FileName="a")',
        1,
        13,
        "unexpected ')' without a matching '('; expected AND, OR or the end of the query",
        AFTER_CONDITION,
    ),
    ('((FileName="a") AND (Width>1)', 1, 30, 'unexpected end of the query; expected ")"', ('")"',)),
    (
        'FileName="a" Width>1',
        1,
        14,
        "unexpected 'Width'; expected AND, OR or the end of the query",
        AFTER_CONDITION,
    ),
    ('FileName="a" AND', 1, 17, 'unexpected end of the query; expected "(", NOT, HAS or a field name', START),
    ('AND FileName="a"', 1, 1, "unexpected 'AND'; expected \"(\", NOT, HAS or a field name", START),
    (
        'FileName="a" AND AND Width>1',
        1,
        18,
        "unexpected 'AND'; expected \"(\", NOT, HAS or a field name",
        START,
    ),
    ('FileName="a" OR OR Width>1', 1, 17, "unexpected 'OR'; expected \"(\", NOT, HAS or a field name", START),
    ("NOT", 1, 4, 'unexpected end of the query; expected "(", NOT, HAS or a field name', START),
    ("HAS", 1, 4, "unexpected end of the query; expected a field name", ("a field name",)),
    ('HAS "x"', 1, 5, "unexpected '\"x\"'; expected a field name", ("a field name",)),
    ("HAS AND", 1, 5, "unexpected 'AND'; expected a field name", ("a field name",)),
    ("()", 1, 2, "unexpected ')'; expected \"(\", NOT, HAS or a field name", START),
    ('FileNme="a"', 1, 1, "unknown field 'FileNme'; did you mean FileName?", FIELD_NAMES),
    ('Foo="a"', 1, 1, "unknown field 'Foo'", FIELD_NAMES),
    ('Tags.robot="x"', 1, 1, "unknown field 'Tags.robot'; did you mean Tags.user?", FIELD_NAMES),
    ('FileName>"a"', 1, 9, "FileName does not support '>'", ("=", ":")),
    ('Width:"100"', 1, 6, "Width does not support ':'", ("=", ">", ">=", "<", "<=")),
    ('Width="100"', 1, 7, "Width needs a whole number", ("an integer",)),
    ("Width>1.5", 1, 7, "Width needs a whole number", ("an integer",)),
    (
        'FileUpdateTime>"yesterday"',
        1,
        16,
        "'yesterday' is not an ISO-8601 time (e.g. 2025-02-28T00:00:00Z)",
        ('"2025-02-28T00:00:00Z"',),
    ),
    (
        "FileUpdateTime>20250228",
        1,
        16,
        "FileUpdateTime needs an ISO-8601 time in double quotes",
        ('"2025-02-28T00:00:00Z"',),
    ),
    ('FileUpdateTime:"2025"', 1, 15, "FileUpdateTime does not support ':'", ("=", ">", ">=", "<", "<=")),
    ("Tags.all=1", 1, 10, "Tags.all needs a text value in double quotes", ("a quoted string",)),
    ("HAS Content", 1, 5, "HAS does not apply to Content", FIELD_NAMES[:10]),
    ("HAS TopK", 1, 5, "HAS does not apply to TopK", FIELD_NAMES[:10]),
    ("TopK=0", 1, 6, "TopK must be between 1 and 1000, got 0", ("an integer",)),
    ("TopK=1001", 1, 6, "TopK must be between 1 and 1000, got 1001", ("an integer",)),
    (
        "TopK=10",
        1,
        1,
        "TopK needs a semantic query (Content or Image) in the same query",
        ("Content", "Image"),
    ),
    (
        "Width>1 AND\n  ScoreThreshold=0.5",
        2,
        3,
        "ScoreThreshold needs a semantic query (Content or Image) in the same query",
        ("Content", "Image"),
    ),
    ('Content:"x" AND TopK="10"', 1, 22, "TopK needs a whole number", ("an integer",)),
    ('Content:"x" AND TopK>10', 1, 21, "TopK does not support '>'", ("=",)),
    ('Content:"x" AND ScoreThreshold="high"', 1, 32, "ScoreThreshold needs a number", ("a number",)),
    (
        'Content:"x" OR Width>1',
        1,
        1,
        "Content may only appear in the top-level AND chain, not under OR or NOT",
        ("a filter condition",),
    ),
    (
        'NOT Content:"x"',
        1,
        5,
        "Content may only appear in the top-level AND chain, not under OR or NOT",
        ("a filter condition",),
    ),
    (
        'Width>1 OR (Image="s3://b/k.jpg" AND TopK=5)',
        1,
        13,
        "Image may only appear in the top-level AND chain, not under OR or NOT",
        ("a filter condition",),
    ),
    (
        'Content:"x" AND NOT (Width>1 AND TopK=5)',
        1,
        34,
        "TopK may only appear in the top-level AND chain, not under OR or NOT",
        ("a filter condition",),
    ),
    (
        'Content:"x" AND Content:"y"',
        1,
        17,
        "a query holds one semantic query; Content at line 1, column 1 is one already",
        (),
    ),
    (
        'Content:"x" AND Image="s3://b/k.jpg"',
        1,
        17,
        "a query holds one semantic query; Content at line 1, column 1 is one already",
        (),
    ),
    ('Content:""', 1, 9, "Content needs a non-empty value", ("a quoted string",)),
    (
        'Image="not a uri"',
        1,
        7,
        "Image needs a bucket URI such as s3://bucket/key.jpg, got 'not a uri'",
        ('"s3://bucket/key.jpg"',),
    ),
    ('Content:"x" AND TopK=5 AND TopK=6', 1, 28, "TopK is given twice", ()),
    ('FileName="a\\q"', 1, 12, "unknown escape '\\q' in a string", ('\\"', "\\\\", "\\n", "\\t")),
    (
        'FileName="a" AND\n  Width ! 2',
        2,
        9,
        "unexpected character '!'; expected an operator (= : > >= < <=)",
        OPERATOR,
    ),
    (
        'FileName="a" AND\n(Width>1 OR\n   Height<)',
        3,
        11,
        "unexpected ')'; expected a quoted string or a number",
        VALUE,
    ),
    (
        'FileName="a" # comment',
        1,
        14,
        "unexpected character '#'; expected AND, OR or the end of the query",
        AFTER_CONDITION,
    ),
    (
        "Width>99999999999999999999999",
        1,
        7,
        "Width must be between -9223372036854775807 and 9223372036854775807, got 99999999999999999999999",
        ("an integer",),
    ),
]


@pytest.mark.parametrize(("query", "line", "column", "message", "expected"), MALFORMED)
def test_malformed_query_gets_a_precise_error(
    query: str, line: int, column: int, message: str, expected: tuple[str, ...]
) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query(query)
    error = caught.value
    assert (error.line, error.column, error.message, error.expected) == (line, column, message, expected)
    assert str(error) == f"query error at line {line}, column {column}: {message}"


def test_there_are_more_than_thirty_malformed_cases() -> None:
    assert len(MALFORMED) >= 30
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED)
