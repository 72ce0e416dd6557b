"""The tags-in-effect rule (migration 0003) against real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from viewfinder_common.tags_sql import TAGS_IN_EFFECT_BY_FILE, removed_user_tag_exists, tag_in_effect

# (file key, tag, source, removed)
ROWS = [
    ("a.jpg", "car", "ai", False),  # an AI tag alone: in effect
    ("a.jpg", "sky", "user", False),  # a user tag: in effect
    ("a.jpg", "tree", "ai", False),  # an AI tag a person removed ...
    ("a.jpg", "tree", "user", True),  # ... by this removed user row: neither is in effect
    ("a.jpg", "road", "ai", True),  # a removed AI tag: not in effect
    ("b.jpg", "car", "ai", False),  # the same tag from both sources: both in effect
    ("b.jpg", "car", "user", False),
    ("b.jpg", "dog", "user", True),  # a removed user tag with no AI row: nothing
]


@pytest.fixture
async def conn(catalogue_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(catalogue_db_url)
    try:
        dataset = await connection.fetchval(
            "INSERT INTO datasets (name, bucket) VALUES ('d', 'b') RETURNING id"
        )
        version = await connection.fetchval(
            "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset
        )
        for key in ("a.jpg", "b.jpg"):
            await connection.execute(
                "INSERT INTO files (dataset_id, version_id, bucket, key, uri) VALUES ($1, $2, 'b', $3, 's3://b/' || $3)",
                dataset,
                version,
                key,
            )
        await connection.executemany(
            "INSERT INTO file_tags (file_id, tag, source, removed) "
            "SELECT id, $2, $3, $4 FROM files WHERE key = $1",
            ROWS,
        )
        yield connection
    finally:
        await connection.close()


async def in_effect(conn: asyncpg.Connection, predicate: str) -> set[tuple[str, str, str]]:
    rows = await conn.fetch(
        f"SELECT f.key, t.tag, t.source FROM file_tags t JOIN files f ON f.id = t.file_id WHERE {predicate}"
    )
    return {(row["key"], row["tag"], row["source"]) for row in rows}


async def test_rows_in_effect_by_source(conn: asyncpg.Connection) -> None:
    assert await in_effect(conn, tag_in_effect("t")) == {
        ("a.jpg", "car", "ai"),
        ("a.jpg", "sky", "user"),
        ("b.jpg", "car", "ai"),
        ("b.jpg", "car", "user"),
    }
    assert await in_effect(conn, tag_in_effect("t", "ai")) == {("a.jpg", "car", "ai"), ("b.jpg", "car", "ai")}
    assert await in_effect(conn, tag_in_effect("t", "user")) == {
        ("a.jpg", "sky", "user"),
        ("b.jpg", "car", "user"),
    }


async def test_removed_user_tag_exists_for_a_file_and_a_tag_parameter(conn: asyncpg.Connection) -> None:
    sql = f"SELECT f.key FROM files f WHERE {removed_user_tag_exists('f.id', '$1::text')} ORDER BY f.key"
    assert [row["key"] for row in await conn.fetch(sql, "tree")] == ["a.jpg"]
    assert [row["key"] for row in await conn.fetch(sql, "dog")] == ["b.jpg"]
    assert await conn.fetch(sql, "car") == []


async def test_tags_in_effect_by_file_lists_the_rows_in_order(conn: asyncpg.Connection) -> None:
    ids = {row["key"]: row["id"] for row in await conn.fetch("SELECT key, id FROM files")}
    rows = await conn.fetch(TAGS_IN_EFFECT_BY_FILE, [ids["b.jpg"], ids["a.jpg"]])
    by_key = {value: key for key, value in ids.items()}
    got = [(by_key[row["file_id"]], row["tag"], row["source"]) for row in rows]
    expected = [
        ("a.jpg", "car", "ai"),
        ("a.jpg", "sky", "user"),
        ("b.jpg", "car", "ai"),
        ("b.jpg", "car", "user"),
    ]
    assert sorted(got, key=lambda r: (str(ids[r[0]]), r[1], r[2])) == got
    assert sorted(got) == expected
    assert await conn.fetch(TAGS_IN_EFFECT_BY_FILE, [ids["b.jpg"]]) == [
        row for row in rows if row["file_id"] == ids["b.jpg"]
    ]
