"""The embedder's catalogue tables in PostgreSQL (migration 0004) and the datasets it reads."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from viewfinder_embedder.domain.model import ModelField, ModelIdentity, QueryKind
from viewfinder_embedder.domain.ports import (
    CurrentVectors,
    DatasetIndexing,
    EmbeddedFile,
    IndexRecord,
    IndexState,
)

_INDEX_COLUMNS = """
    name, dataset_id::text AS dataset_id, model_connection, model_id, model_version,
    vector_store_connection, vector_fields, state, active, created_at
"""


def fields_to_json(fields: Sequence[ModelField]) -> str:
    """The ``vector_fields`` column value."""
    return json.dumps(
        [
            {
                "name": f.name,
                "dimension": f.dimension,
                "metric": f.metric,
                "query_kinds": sorted(kind.value for kind in f.query_kinds),
            }
            for f in fields
        ]
    )


def fields_from_json(value: str | list[dict[str, Any]]) -> list[ModelField]:
    """Parses the ``vector_fields`` column."""
    items = json.loads(value) if isinstance(value, str) else value
    return [
        ModelField(
            name=item["name"],
            dimension=int(item["dimension"]),
            query_kinds=frozenset(QueryKind(kind) for kind in item.get("query_kinds", [])),
            metric=item.get("metric", "cosine"),
        )
        for item in items
    ]


def _index(row: Mapping[str, Any]) -> IndexRecord:
    return IndexRecord(
        name=row["name"],
        dataset_id=row["dataset_id"],
        model_connection=row["model_connection"],
        model=ModelIdentity(row["model_id"], row["model_version"]),
        vector_store_connection=row["vector_store_connection"],
        fields=fields_from_json(row["vector_fields"]),
        state=IndexState(row["state"]),
        active=row["active"],
        create_time=row["created_at"],
    )


class PgIndexCatalogue:
    """``IndexCatalogue`` over the catalogue's PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def dataset_indexing(self, dataset_id: str) -> DatasetIndexing | None:
        """The dataset's indexing settings (``datasets.indexing``, written by DatasetService)."""
        # to_jsonb(d) -> 'indexing' is NULL (not an error) on a schema without the column.
        row = await self._pool.fetchrow(
            "SELECT to_jsonb(d) -> 'indexing' AS indexing FROM datasets d WHERE id = $1::uuid", dataset_id
        )
        if row is None:
            return None
        settings = json.loads(row["indexing"]) if row["indexing"] else {}
        return DatasetIndexing(
            dataset_id=dataset_id,
            model_connection=str(settings.get("model_connection") or settings.get("modelConnection") or ""),
            vector_store_connection=str(
                settings.get("vector_store_connection") or settings.get("vectorStoreConnection") or ""
            ),
        )

    async def active_index(self, dataset_id: str) -> IndexRecord | None:
        """The dataset's active index."""
        row = await self._pool.fetchrow(
            f"SELECT {_INDEX_COLUMNS} FROM embedding_indexes WHERE dataset_id = $1::uuid AND active",  # noqa: S608 (constant column list)
            dataset_id,
        )
        return _index(row) if row else None

    async def get_index(self, name: str) -> IndexRecord | None:
        """An index by name."""
        row = await self._pool.fetchrow(
            f"SELECT {_INDEX_COLUMNS} FROM embedding_indexes WHERE name = $1",  # noqa: S608
            name,
        )
        return _index(row) if row else None

    async def list_indexes(self, dataset_id: str) -> list[IndexRecord]:
        """A dataset's indexes, the active one first, then newest first."""
        rows = await self._pool.fetch(
            f"SELECT {_INDEX_COLUMNS} FROM embedding_indexes WHERE dataset_id = $1::uuid "  # noqa: S608
            "ORDER BY active DESC, created_at DESC, name",
            dataset_id,
        )
        return [_index(row) for row in rows]

    async def create_index(self, index: IndexRecord) -> IndexRecord:
        """Registers an index; an existing one of that name is returned unchanged."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                """
                INSERT INTO embedding_indexes
                    (name, dataset_id, model_connection, model_id, model_version,
                     vector_store_connection, vector_fields, state)
                VALUES ($1, $2::uuid, $3, $4, $5, $6, $7::jsonb, $8)
                ON CONFLICT (name) DO NOTHING
                """,
                index.name,
                index.dataset_id,
                index.model_connection,
                index.model.id,
                index.model.version,
                index.vector_store_connection,
                fields_to_json(index.fields),
                index.state.value,
            )
            row = await conn.fetchrow(
                f"SELECT {_INDEX_COLUMNS} FROM embedding_indexes WHERE name = $1",  # noqa: S608
                index.name,
            )
        assert row is not None
        return _index(row)

    async def activate_index(self, name: str) -> None:
        """Makes ``name`` the only active index of its dataset (and tells DatasetService's settings)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await activate_in_transaction(conn, name)

    async def set_index_state(self, name: str, state: IndexState) -> None:
        """Records an index's lifecycle state."""
        await self._pool.execute(
            "UPDATE embedding_indexes SET state = $2, updated_at = now() WHERE name = $1", name, state.value
        )

    async def current_vectors(self, index: str, file_ids: Sequence[str]) -> Mapping[str, CurrentVectors]:
        """What the given files' vectors in ``index`` were computed from."""
        if not file_ids:
            return {}
        rows = await self._pool.fetch(
            "SELECT file_id::text AS file_id, etag, model_version FROM embedding_index_files "
            "WHERE index_name = $1 AND file_id = ANY($2::uuid[])",
            index,
            list(file_ids),
        )
        return {row["file_id"]: CurrentVectors(row["etag"], row["model_version"]) for row in rows}

    async def record_embedded(
        self, index: str, files: Sequence[EmbeddedFile], model_version: str, job_id: str | None
    ) -> None:
        """Upserts the (index, file) records after the vectors were written."""
        if not files:
            return
        await self._pool.execute(
            """
            INSERT INTO embedding_index_files
                (index_name, file_id, dataset_version_id, etag, model_version, job_id, embedded_at)
            SELECT $1, f.file_id, f.version_id, f.etag, $5, $6::uuid, now()
            FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS f(file_id, version_id, etag)
            ON CONFLICT (index_name, file_id) DO UPDATE SET
                dataset_version_id = EXCLUDED.dataset_version_id,
                etag = EXCLUDED.etag,
                model_version = EXCLUDED.model_version,
                job_id = EXCLUDED.job_id,
                embedded_at = EXCLUDED.embedded_at
            """,
            index,
            [f.file_id for f in files],
            [f.dataset_version_id for f in files],
            [f.etag for f in files],
            model_version,
            job_id,
        )

    async def forget(self, index: str, file_ids: Sequence[str]) -> None:
        """Drops the (index, file) records of removed vectors."""
        if file_ids:
            await self._pool.execute(
                "DELETE FROM embedding_index_files WHERE index_name = $1 AND file_id = ANY($2::uuid[])",
                index,
                list(file_ids),
            )


async def activate_in_transaction(conn: asyncpg.Connection, name: str) -> None:
    """Inside the caller's transaction: ``name`` becomes its dataset's only active index, and ready.

    Also writes ``datasets.indexing.active_index``, as DatasetService shows it.
    """
    # NO KEY: rows that reference the index (the pipeline's records) need not wait for this.
    dataset_id = await conn.fetchval(
        "SELECT dataset_id FROM embedding_indexes WHERE name = $1 FOR NO KEY UPDATE", name
    )
    if dataset_id is None:
        return
    # Serialise activations of one dataset (the partial unique index forbids two active).
    await conn.execute("SELECT 1 FROM datasets WHERE id = $1 FOR UPDATE", dataset_id)
    await conn.execute(
        "UPDATE embedding_indexes SET active = false, updated_at = now() "
        "WHERE dataset_id = $1 AND active AND name <> $2",
        dataset_id,
        name,
    )
    await conn.execute(
        "UPDATE embedding_indexes SET active = true, state = 'ready', updated_at = now() WHERE name = $1",
        name,
    )
    has_settings = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'datasets' AND column_name = 'indexing')"
    )
    if has_settings:
        await conn.execute(
            "UPDATE datasets SET indexing = jsonb_set(coalesce(indexing, '{}'::jsonb), "
            "'{active_index}', to_jsonb($2::text)) WHERE id = $1",
            dataset_id,
            name,
        )
