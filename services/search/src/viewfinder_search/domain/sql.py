"""Compiles catalogue conditions to parameterised PostgreSQL.

Every value a user typed becomes a ``$n`` parameter with an explicit cast;
the SQL text is built only from constants in this module, so quotes,
semicolons or SQL keywords inside a value are just characters being matched.

Conditions are written over ``files f``. A leaf on a nullable column is
written ``(col IS NOT NULL AND col op $n)``, so a missing value (NULL width,
format …) makes the leaf false rather than unknown, and ``NOT`` is the plain
complement (``NOT Width > 100`` finds files of unknown width too). That form,
unlike ``(...) IS TRUE``, keeps PostgreSQL's selectivity estimates (measured:
``IS TRUE`` made it expect 374 rows instead of 52,544 and pick a nested loop).

Tags in effect follow migration 0003 through ``viewfinder_common.tags_sql``
(shared with the exporter): a user row is in effect unless removed; an AI row
unless removed or hidden by a removed user row of the same tag. The hiding is
written as an anti-join (``NOT EXISTS`` on the file and the tag name), which
the partial index of migration 0005 answers without scanning ``file_tags``.
"""

# S608 flags every f-string that looks like SQL. Here the f-strings only join
# constants of this module and "$n" placeholders; values never enter the text.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from viewfinder_common.tags_sql import (
    TAGS_IN_EFFECT_BY_FILE,
    TagSource,
    removed_user_tag_exists,
    tag_in_effect,
)
from viewfinder_search.domain.conditions import (
    AllOf,
    AnyOf,
    Compare,
    Condition,
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

# The last segment of the key, and the key without it ("a/b" for "a/b/c.jpg").
_TEXT_EXPRESSIONS = {
    TextAttribute.NAME: "regexp_replace(f.key, '^.*/', '')",
    TextAttribute.DIRECTORY: "regexp_replace(f.key, '/?[^/]*$', '')",
    TextAttribute.KEY: "f.key",
    TextAttribute.FORMAT: "f.format",
}
_ORDERED_COLUMNS = {
    OrderedAttribute.SIZE: ("f.size", "bigint"),
    OrderedAttribute.WIDTH: ("f.width", "bigint"),
    OrderedAttribute.HEIGHT: ("f.height", "bigint"),
    OrderedAttribute.MODIFIED: ("f.last_modified", "timestamptz"),
}
# Columns that may be NULL (files.key and files.size are NOT NULL).
_NULLABLE = {"f.format", "f.width", "f.height", "f.last_modified"}


def _null_safe(column: str, predicate: str) -> str:
    """``predicate`` over ``column``, false (never unknown) when the column is NULL."""
    if column in _NULLABLE:
        return f"({column} IS NOT NULL AND {predicate})"
    return f"({predicate})"


_PRESENT = {
    TextAttribute.NAME: "regexp_replace(f.key, '^.*/', '') <> ''",
    TextAttribute.DIRECTORY: "strpos(f.key, '/') > 0",
    TextAttribute.KEY: "f.key <> ''",
    TextAttribute.FORMAT: "coalesce(f.format, '') <> ''",
    OrderedAttribute.SIZE: "f.size IS NOT NULL",
    OrderedAttribute.WIDTH: "f.width IS NOT NULL",
    OrderedAttribute.HEIGHT: "f.height IS NOT NULL",
    OrderedAttribute.MODIFIED: "f.last_modified IS NOT NULL",
}


_SCOPE_SOURCE: dict[TagSourceScope, TagSource | None] = {
    TagSourceScope.ALL: None,
    TagSourceScope.AI: "ai",
    TagSourceScope.USER: "user",
}


def effective_tag_predicate(alias: str, scope: TagSourceScope) -> str:
    """SQL over ``file_tags <alias>`` true for tag rows in effect from ``scope``."""
    return tag_in_effect(alias, _SCOPE_SOURCE[scope])


@dataclass
class SqlParameters:
    """The positional parameters of one statement, numbered in order of use."""

    values: list[object] = field(default_factory=list)

    def add(self, value: object, cast: str) -> str:
        """Adds a value and returns its placeholder, e.g. ``$3::text``."""
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


def compile_condition(condition: Condition, params: SqlParameters) -> str:  # noqa: PLR0911 (one return per condition type)
    """SQL boolean expression over ``files f`` for the condition; values go to ``params``."""
    if isinstance(condition, AllOf):
        if not condition.conditions:
            return "TRUE"
        return "(" + " AND ".join(compile_condition(c, params) for c in condition.conditions) + ")"
    if isinstance(condition, AnyOf):
        if not condition.conditions:
            return "FALSE"
        return "(" + " OR ".join(compile_condition(c, params) for c in condition.conditions) + ")"
    if isinstance(condition, Not):
        return f"(NOT {compile_condition(condition.condition, params)})"
    if isinstance(condition, TextMatch):
        return _text_match(condition, params)
    if isinstance(condition, OneOf):
        expression = _TEXT_EXPRESSIONS[condition.attribute]
        upper = params.add([value.upper() for value in condition.values], "text[]")
        lower = params.add([value.lower() for value in condition.values], "text[]")
        # The plain comparison with the canonical (upper-case Pillow) spelling is
        # redundant for the result but gives PostgreSQL a selectivity it can
        # estimate from column statistics; lower() alone it guesses at 0.5 %.
        return _null_safe(expression, f"({expression} = ANY({upper}) OR lower({expression}) = ANY({lower}))")
    if isinstance(condition, Compare):
        column, cast = _ORDERED_COLUMNS[condition.attribute]
        value: int | datetime = condition.value
        return _null_safe(column, f"{column} {condition.comparison.value} {params.add(value, cast)}")
    if isinstance(condition, Present):
        return f"({_PRESENT[condition.attribute]})"
    if isinstance(condition, HasTag):
        return _has_tag(condition, params)
    raise TypeError(f"not a condition: {condition!r}")


def _text_match(condition: TextMatch, params: SqlParameters) -> str:
    expression = _TEXT_EXPRESSIONS[condition.attribute]
    if condition.mode is TextMatchMode.CONTAINS:
        return _null_safe(expression, _contains(expression, params, condition.value))
    value = params.add(condition.value, "text")
    if condition.mode is TextMatchMode.EXACT:
        return _null_safe(expression, f"{expression} = {value}")
    if condition.mode is TextMatchMode.EXACT_IGNORE_CASE:
        # As for OneOf: the upper() comparison is there for the row estimate.
        return _null_safe(
            expression, f"({expression} = upper({value}) OR lower({expression}) = lower({value}))"
        )
    return _null_safe(expression, f"starts_with({expression}, {value})")


def like_escape(value: str) -> str:
    """``value`` as a LIKE pattern that matches exactly it: ``\\``, ``%`` and ``_`` escaped."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _contains(expression: str, params: SqlParameters, value: str) -> str:
    """``expression`` contains ``value``, ignoring case.

    Written as ``lower(expression) LIKE lower('%value%')`` with the value's
    ``%``, ``_`` and ``\\`` escaped (plain characters, as in ``strpos``) rather
    than ``strpos(...) > 0``: the trigram indexes of migration 0011 on the
    lower-cased directory and name serve it, and their statistics give
    PostgreSQL a row estimate (``strpos`` it guesses at a third of the files,
    whatever the value; measured at 100k files: a directory matching 400 files
    read in 1.6 ms instead of 120 ms, estimated at 983 rows instead of 33,333).
    """
    pattern = params.add(f"%{like_escape(value)}%", "text")
    return f"lower({expression}) LIKE lower({pattern})"


def _has_tag(condition: HasTag, params: SqlParameters) -> str:
    if condition.name is not None and not condition.name_contains:
        return _has_named_tag(condition.scope, condition.name, condition.value, params)
    parts = ["t.file_id = f.id", effective_tag_predicate("t", condition.scope)]
    if condition.name is not None:
        parts.append(f"strpos(lower(t.tag), lower({params.add(condition.name, 'text')})) > 0")
    if condition.value is not None:
        parts.append(f"t.value = {params.add(condition.value, 'text')}")
    return f"EXISTS (SELECT 1 FROM file_tags t WHERE {' AND '.join(parts)})"


def _has_named_tag(scope: TagSourceScope, name: str, value: str | None, params: SqlParameters) -> str:
    """A tag of a known name: a semi-join on the tag, and (unless only user tags
    count) an anti-join on a removed user row of that name — two joins
    PostgreSQL plans from the tag indexes instead of a per-row subplan."""
    placeholder = params.add(name, "text")
    present = ["t.file_id = f.id", f"t.tag = {placeholder}", "NOT t.removed"]
    if scope is not TagSourceScope.ALL:
        present.append(f"t.source = '{scope.value}'")
    if value is not None:
        present.append(f"t.value = {params.add(value, 'text')}")
    sql = f"EXISTS (SELECT 1 FROM file_tags t WHERE {' AND '.join(present)})"
    if scope is TagSourceScope.USER:
        return sql
    # A removed user row hides the AI row, and a user row that is removed is no tag at all.
    return f"({sql} AND NOT {removed_user_tag_exists('f.id', placeholder)})"


@dataclass(frozen=True)
class CatalogueFilter:
    """The files of one dataset version that are active and meet a condition."""

    dataset_version_id: str
    condition: Condition

    def where(self, params: SqlParameters) -> str:
        """The WHERE clause over ``files f`` (without the keyword)."""
        version = params.add(self.dataset_version_id, "uuid")
        return f"f.version_id = {version} AND f.status = 'active' AND {compile_condition(self.condition, params)}"

    @property
    def is_whole_version(self) -> bool:
        """True when the condition keeps every active file (nothing but the version filters)."""
        return isinstance(self.condition, AllOf) and not self.condition.conditions


def matching_ids_sql(catalogue_filter: CatalogueFilter, file_ids: Sequence[str]) -> tuple[str, list[object]]:
    """Which of ``file_ids`` pass the filter: the post-check of vector hits."""
    params = SqlParameters()
    ids = params.add(list(file_ids), "uuid[]")
    where = catalogue_filter.where(params)
    return f"SELECT f.id FROM files f WHERE f.id = ANY({ids}) AND {where}", params.values


def estimate_sql(catalogue_filter: CatalogueFilter) -> tuple[str, list[object]]:
    """The plan (JSON) of reading the matching files: PostgreSQL's row estimate, no rows read."""
    params = SqlParameters()
    where = catalogue_filter.where(params)
    return f"EXPLAIN (FORMAT JSON) SELECT 1 FROM files f WHERE {where}", params.values


def candidate_ids_sql(catalogue_filter: CatalogueFilter, limit: int) -> tuple[str, list[object]]:
    """The ids of matching files, at most ``limit`` (the planner only asks "at most N?")."""
    params = SqlParameters()
    where = catalogue_filter.where(params)
    return f"SELECT f.id FROM files f WHERE {where} LIMIT {params.add(limit, 'bigint')}", params.values


FILE_COLUMNS = (
    "f.id, f.dataset_id, f.version_id, f.bucket, f.key, f.uri, f.size, f.etag, f.last_modified, "
    "f.format, f.width, f.height, f.frames, f.mode, f.status, f.error, f.created_at, f.updated_at"
)


def page_sql(
    catalogue_filter: CatalogueFilter,
    *,
    descending: bool,
    after: tuple[datetime | None, str] | None,
    limit: int,
) -> tuple[str, list[object]]:
    """One page of matching files ordered by (last_modified, id), after a keyset cursor.

    PostgreSQL's default NULL order is kept (NULL sorts as the latest time:
    last ascending, first descending), so the order matches a plain btree on
    (version_id, last_modified) and every file is on exactly one page.
    """
    params = SqlParameters()
    where = catalogue_filter.where(params)
    if after is not None:
        modified, file_id = after
        last_id = params.add(file_id, "uuid")
        if modified is None:
            if descending:
                keyset = f"((f.last_modified IS NULL AND f.id < {last_id}) OR f.last_modified IS NOT NULL)"
            else:
                keyset = f"(f.last_modified IS NULL AND f.id > {last_id})"
        else:
            last_time = params.add(modified, "timestamptz")
            if descending:
                keyset = (
                    f"(f.last_modified < {last_time} OR (f.last_modified = {last_time} AND f.id < {last_id}))"
                )
            else:
                keyset = (
                    f"(f.last_modified > {last_time} OR (f.last_modified = {last_time} AND f.id > {last_id})"
                    " OR f.last_modified IS NULL)"
                )
        where = f"{where} AND {keyset}"
    direction = "DESC" if descending else "ASC"
    bound = params.add(limit, "bigint")
    sql = (
        f"SELECT {FILE_COLUMNS} FROM files f WHERE {where} "
        f"ORDER BY f.last_modified {direction}, f.id {direction} LIMIT {bound}"
    )
    return sql, params.values


def files_by_ids_sql(file_ids: Sequence[str]) -> tuple[str, list[object]]:
    """The catalogue rows of these files."""
    return f"SELECT {FILE_COLUMNS} FROM files f WHERE f.id = ANY($1::uuid[])", [list(file_ids)]


def tags_by_file_sql(file_ids: Sequence[str]) -> tuple[str, list[object]]:
    """The tags in effect on these files, ordered by file, tag and source."""
    return TAGS_IN_EFFECT_BY_FILE, [list(file_ids)]


def facet_sql(
    catalogue_filter: CatalogueFilter, file_ids: Sequence[str] | None, tag_limit: int
) -> tuple[str, list[object]]:
    """Matched file count and the most frequent tags (name, value) over the matching set.

    ``file_ids`` narrows the set to a vector result. One statement returns
    a first row with the total (``tag`` NULL) followed by the tag counts.
    """
    params = SqlParameters()
    where = catalogue_filter.where(params)
    if file_ids is not None:
        where = f"{where} AND f.id = ANY({params.add(list(file_ids), 'uuid[]')})"
    bound = params.add(tag_limit, "bigint")
    sql = (
        f"WITH matching AS MATERIALIZED (SELECT f.id FROM files f WHERE {where}), "
        "counts AS ("
        "SELECT t.tag, t.value, count(DISTINCT t.file_id) AS n FROM file_tags t "
        "JOIN matching m ON m.id = t.file_id "
        f"WHERE {tag_in_effect('t')} "
        f"GROUP BY t.tag, t.value ORDER BY n DESC, t.tag, t.value LIMIT {bound}) "
        "SELECT NULL::text AS tag, NULL::text AS value, (SELECT count(*) FROM matching) AS n, 0 AS part "
        "UNION ALL SELECT tag, value, n, 1 AS part FROM counts "
        "ORDER BY part, n DESC, tag, value"
    )
    return sql, params.values
