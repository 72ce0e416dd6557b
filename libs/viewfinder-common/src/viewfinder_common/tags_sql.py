"""Which tag rows are in effect, as SQL: the rule of migration 0003 in one place.

A ``file_tags`` row is one (file, tag, source). A user row is in effect unless
removed. An AI row is in effect unless removed or hidden by a removed user
row of the same file and tag name (a person took the AI's tag away).

The functions return SQL text built only from the aliases and expressions the
caller passes (constants of the calling module, never user input); values
stay bind parameters of the caller's statement.
"""

# S608 flags every f-string that looks like SQL; these join only constants and
# the caller's aliases, never values.
# ruff: noqa: S608

from __future__ import annotations

from typing import Final, Literal

TagSource = Literal["ai", "user"]


def removed_user_tag_exists(file_id: str, tag: str) -> str:
    """SQL true when a removed user row exists for the file and tag name given as SQL
    expressions (e.g. ``t.file_id`` and ``t.tag``, or ``f.id`` and ``$2::text``).

    Such rows are rare; migration 0005's partial index answers this without
    scanning ``file_tags``.
    """
    return (
        "EXISTS (SELECT 1 FROM file_tags hidden "
        f"WHERE hidden.file_id = {file_id} AND hidden.tag = {tag} "
        "AND hidden.source = 'user' AND hidden.removed)"
    )


def tag_in_effect(alias: str, source: TagSource | None = None) -> str:
    """SQL over ``file_tags <alias>``: true for rows in effect (of ``source`` only, when given)."""
    hidden = removed_user_tag_exists(f"{alias}.file_id", f"{alias}.tag")
    if source == "user":
        return f"({alias}.source = 'user' AND NOT {alias}.removed)"
    if source == "ai":
        return f"({alias}.source = 'ai' AND NOT {alias}.removed AND NOT {hidden})"
    return f"(NOT {alias}.removed AND ({alias}.source = 'user' OR NOT {hidden}))"


# The tags in effect on a list of files ($1 uuid[]), ordered by file, tag and source.
TAGS_IN_EFFECT_BY_FILE: Final = (
    "SELECT t.file_id, t.tag, t.value, t.source, t.confidence, t.model, t.definition_id, "
    "t.definition_version FROM file_tags t "
    f"WHERE t.file_id = ANY($1::uuid[]) AND {tag_in_effect('t')} "
    "ORDER BY t.file_id, t.tag, t.source"
)
