"""The Hologres adapter: an index is one Hologres table with Proxima vector indexes, over asyncpg.

Hologres speaks the PostgreSQL protocol; its vector search is the Proxima
extension as the vendor documents it ("Proxima Graph indexes",
alibabacloud.com/help/en/hologres/user-guide/guide-on-vector-processing):
vectors are ``FLOAT4[]`` columns with a one-dimensional length CHECK, the
index is the ``proxima_vectors`` table property, set with
``CALL set_table_property(...)`` in the transaction that creates the table,
and queries order by ``pm_approx_<distance>(column, query)`` (index) or
``pm_<distance>(...)`` (exact). Proxima has no cosine distance, so viewfinder
stores **unit-length** vectors and uses ``SquaredEuclidean`` (the method the
vendor recommends as the fastest): for unit vectors ``d = |a - b|^2 = 2 - 2
cos``, so cosine = ``1 - d / 2`` and the order by ``d`` ascending is the order
by cosine descending.

Schema of index ``<name>`` (created by ``ensure_index`` if absent)::

    BEGIN;
    CREATE TABLE vf_index_<name> (
        file_id            text NOT NULL,            -- the catalogue's files.id
        dataset_version_id text NOT NULL,            -- filter column (clustering key)
        etag               text NOT NULL,
        <field> float4[] NOT NULL CHECK (array_ndims(<field>) = 1 AND array_length(<field>, 1) = <dim>),
        ...
        updated_at         timestamptz NOT NULL,
        PRIMARY KEY (file_id)
    );
    CALL set_table_property('vf_index_<name>', 'orientation', 'column');
    CALL set_table_property('vf_index_<name>', 'clustering_key', 'dataset_version_id');
    CALL set_table_property('vf_index_<name>', 'proxima_vectors',
        '{"<field>": {"algorithm": "Graph", "distance_method": "SquaredEuclidean",
                      "builder_params": {"min_flush_proxima_row_count": 1000,
                                         "min_compaction_proxima_row_count": 1000,
                                         "max_total_size_to_merge_mb": 2000}}, ...}');
    COMMIT;

(Vector indexes need a column-oriented or hybrid table; the clustering key
is the vendor's advice for a string filter column.) An existing table is
accepted when these columns exist with these types (text or varchar ids,
``real[]`` vectors with a matching length CHECK), ``file_id`` alone is the
primary key, extra columns are nullable or defaulted, and each vector field
that has a Proxima index uses ``SquaredEuclidean``; missing Proxima entries are
added (Hologres 2.0.11+ builds them for existing data), everything else is a
``SchemaMismatch`` naming each difference. The table property is read back
from ``hologres.hg_table_properties``.

Queries (one table, no joins, as the vendor requires for the index to be used):

* ANN: ``SELECT file_id, pm_approx_squared_euclidean_distance(<field>, $1)
  AS distance FROM t WHERE dataset_version_id = $2 [AND file_id = ANY($3)]
  ORDER BY distance ASC LIMIT k``. Proxima is lossy and the vendor warns that
  ``LIMIT 1000`` may return 500 rows: an answer shorter than top_k is replaced
  by the exact one, so results are never silently short;
* exact: the same with ``pm_squared_euclidean_distance`` and a ``file_id``
  tie break;
* the threshold is applied to the k rows (the top-k above a threshold is the
  top-k cut at the threshold).

Writes are ``INSERT … ON CONFLICT (file_id) DO UPDATE`` (Hologres' upsert) in
batches through ``executemany``; a pool this store opens resets connections
with nothing (it sets no session state), since Hologres need not support the
advisory-lock / LISTEN statements asyncpg's default reset sends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import numpy as np
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from viewfinder_common.errors import FailedPrecondition, Unavailable
from viewfinder_common.vectorstore import (
    DEFAULT_SEARCH_BREADTH,
    IndexNotFound,
    IndexSchema,
    SchemaMismatch,
    VectorField,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
    canonical_id,
    validate_field_name,
    validate_schema,
)
from viewfinder_common.vectorstore.postgres_sql import count_rows, index_connection, quote_ident, table_name
from viewfinder_common.vectorstore.rows import CheckedQuery, checked_query, row_columns

# The vendor's recommended builder parameters.
PROXIMA_BUILDER_PARAMS: Final = {
    "min_flush_proxima_row_count": 1000,
    "min_compaction_proxima_row_count": 1000,
    "max_total_size_to_merge_mb": 2000,
}
DISTANCE_METHOD: Final = "SquaredEuclidean"
APPROX_DISTANCE: Final = "pm_approx_squared_euclidean_distance"
EXACT_DISTANCE: Final = "pm_squared_euclidean_distance"
_ID_TYPES: Final = frozenset({"text", "character varying"})
_LENGTH_CHECK = re.compile(r'array_length\(\s*"?([a-z][a-z0-9_]*)"?\s*,\s*1\s*\)\s*=\s*(\d+)')
_NDIMS_CHECK = re.compile(r'array_ndims\(\s*"?([a-z][a-z0-9_]*)"?\s*\)\s*=\s*1')


class HologresSettings(BaseSettings):
    """A Hologres instance (``VIEWFINDER_HOLOGRES_*``): AccessKey ID and secret log in as user
    and password."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_HOLOGRES_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 80
    database: str = "postgres"
    access_key_id: str | None = None
    access_key_secret: SecretStr | None = None
    ssl: bool = False
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=10, ge=1)
    timeout_s: float = Field(default=30.0, gt=0)


async def _reset_nothing(connection: asyncpg.Connection) -> None:
    """Pool reset: the store changes no session state, so there is nothing to undo."""


async def create_hologres_pool(settings: HologresSettings) -> asyncpg.Pool:
    """An asyncpg pool to Hologres (the caller, or ``HologresVectorStore(owns_pool=True)``, closes it)."""
    try:
        pool = await asyncpg.create_pool(
            host=settings.host,
            port=settings.port,
            database=settings.database,
            user=settings.access_key_id,
            password=settings.access_key_secret.get_secret_value() if settings.access_key_secret else None,
            ssl=settings.ssl,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.timeout_s,
            command_timeout=settings.timeout_s,
            reset=_reset_nothing,
        )
    except (OSError, TimeoutError) as err:
        raise Unavailable(
            f"Hologres at {settings.host}:{settings.port} is unreachable: {type(err).__name__}"
        ) from err
    except asyncpg.InvalidAuthorizationSpecificationError as err:
        raise FailedPrecondition(
            f"Hologres at {settings.host}:{settings.port} rejected the AccessKey (check id and secret)"
        ) from err
    assert pool is not None
    return pool


def quote_literal(text: str) -> str:
    """A single-quoted SQL string literal (for ``CALL set_table_property``, sent as simple query)."""
    return "'" + text.replace("'", "''") + "'"


def proxima_entry() -> dict[str, Any]:
    """The ``proxima_vectors`` entry of one vector column."""
    return {
        "algorithm": "Graph",
        "distance_method": DISTANCE_METHOD,
        "builder_params": dict(PROXIMA_BUILDER_PARAMS),
    }


def create_statements(schema: IndexSchema) -> list[str]:
    """The statements that create the table of ``schema``, to run in one transaction."""
    table = table_name(schema.name)
    columns = [
        "    file_id text NOT NULL",
        "    dataset_version_id text NOT NULL",
        "    etag text NOT NULL",
    ]
    for f in schema.fields:
        name = quote_ident(f.name)
        columns.append(
            f"    {name} float4[] NOT NULL CHECK (array_ndims({name}) = 1 AND array_length({name}, 1) = {int(f.dim)})"
        )
    columns += ["    updated_at timestamptz NOT NULL", "    PRIMARY KEY (file_id)"]
    proxima = json.dumps({f.name: proxima_entry() for f in schema.fields}, separators=(",", ":"))
    call = "CALL set_table_property({}, {}, {})"
    return [
        f"CREATE TABLE {quote_ident(table)} (\n" + ",\n".join(columns) + "\n)",
        call.format(quote_literal(table), quote_literal("orientation"), quote_literal("column")),
        call.format(
            quote_literal(table), quote_literal("clustering_key"), quote_literal("dataset_version_id")
        ),
        call.format(quote_literal(table), quote_literal("proxima_vectors"), quote_literal(proxima)),
    ]


def upsert_sql(index: str, schema: IndexSchema) -> str:
    """One row's upsert: $1 file id, $2 version, $3 etag, $4… one float4[] per field."""
    names = [quote_ident(f.name) for f in schema.fields]
    values = ", ".join(f"${4 + i}::float4[]" for i in range(len(names)))
    updated = ["dataset_version_id", "etag", *names, "updated_at"]
    return (
        f"INSERT INTO {quote_ident(table_name(index))} "  # noqa: S608 (quoted, validated identifiers)
        f"(file_id, dataset_version_id, etag, {', '.join(names)}, updated_at) "
        f"VALUES ($1, $2, $3, {values}, now()) "
        "ON CONFLICT (file_id) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in updated)
    )


def search_sql(index: str, vector_field: str, top_k: int, *, exact: bool, with_file_ids: bool) -> str:
    """The search statement: $1 query vector (float4[]), $2 version, $3 file ids (text[])."""
    column = quote_ident(validate_field_name(vector_field))
    function = EXACT_DISTANCE if exact else APPROX_DISTANCE
    file_filter = " AND file_id = ANY($3::text[])" if with_file_ids else ""
    # Proxima uses its index only for ORDER BY distance ASC on SquaredEuclidean;
    # the exact query adds the tie break the other adapters use.
    order = "distance ASC, file_id ASC" if exact else "distance ASC"
    return (
        f"SELECT file_id, {function}({column}, $1::float4[]) AS distance "  # noqa: S608
        f"FROM {quote_ident(table_name(index))} "
        f"WHERE dataset_version_id = $2{file_filter} "
        f"ORDER BY {order} LIMIT {int(top_k)}"
    )


def unit_rows(matrix: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Each row scaled to unit length (rows are validated non-zero before)."""
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1, keepdims=True)
    unit: np.ndarray[Any, np.dtype[np.float32]] = (matrix / norms).astype(np.float32)
    return unit


class HologresVectorStore:
    """``VectorStore`` over Hologres tables with Proxima indexes; uses (by default does not own) a pool."""

    def __init__(self, pool: asyncpg.Pool, *, upsert_batch_size: int = 500, owns_pool: bool = False) -> None:
        if upsert_batch_size < 1:
            raise ValueError(f"upsert_batch_size must be at least 1, got {upsert_batch_size}")
        self._pool = pool
        self._owns_pool = owns_pool
        self._upsert_batch_size = upsert_batch_size
        self._schemas: dict[str, IndexSchema] = {}

    @classmethod
    async def connect(
        cls, settings: HologresSettings, *, upsert_batch_size: int = 500
    ) -> HologresVectorStore:
        """A store on its own pool (closed by ``close()``)."""
        return cls(await create_hologres_pool(settings), upsert_batch_size=upsert_batch_size, owns_pool=True)

    async def server_version(self) -> str:
        """The server's version string (``SELECT version()``), e.g. for a connection test."""
        async with self._pool.acquire() as conn:
            return str(await conn.fetchval("SELECT version()"))

    # ── index lifecycle ─────────────────────────────────────────────

    async def ensure_index(self, schema: IndexSchema) -> None:
        """Creates the table with its Proxima indexes if absent, or validates an existing one."""
        validate_schema(schema)
        table = table_name(schema.name)
        async with self._pool.acquire() as conn:
            await self._require_proxima(conn)
            if not await self._table_exists(conn, table):
                try:
                    async with conn.transaction():
                        for statement in create_statements(schema):
                            await conn.execute(statement)
                except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
                    pass  # another replica created it a moment ago: validate that one
                else:
                    self._schemas[schema.name] = IndexSchema(schema.name, tuple(schema.fields))
                    return
            await self._validate_table(conn, table, schema)
        self._schemas[schema.name] = IndexSchema(schema.name, tuple(schema.fields))

    @staticmethod
    async def _require_proxima(conn: Any) -> None:
        installed = await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = $1", APPROX_DISTANCE)
        if not installed:
            raise FailedPrecondition(
                "the Proxima extension is not installed in this Hologres database; a superuser must run "
                "CREATE EXTENSION proxima once per database"
            )

    @staticmethod
    async def _table_exists(conn: Any, table: str) -> bool:
        found = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1",
            table,
        )
        return bool(found)

    @staticmethod
    async def _columns(conn: Any, table: str) -> dict[str, Any]:
        rows = await conn.fetch(
            """
            SELECT column_name, data_type, udt_name, is_nullable, column_default
            FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = $1
            ORDER BY ordinal_position
            """,
            table,
        )
        return {row["column_name"]: row for row in rows}

    @staticmethod
    async def _vector_dims(conn: Any, table: str) -> tuple[dict[str, int], set[str]]:
        """Dimension of each column from its ``array_length(col, 1) = n`` CHECK, and the columns
        whose CHECK pins ``array_ndims`` to 1."""
        clauses = await conn.fetch(
            """
            SELECT cc.check_clause
            FROM information_schema.table_constraints tc
            JOIN information_schema.check_constraints cc
              ON cc.constraint_schema = tc.constraint_schema AND cc.constraint_name = tc.constraint_name
            WHERE tc.table_schema = current_schema() AND tc.table_name = $1 AND tc.constraint_type = 'CHECK'
            """,
            table,
        )
        dims: dict[str, int] = {}
        one_dimensional: set[str] = set()
        for row in clauses:
            clause = str(row["check_clause"])
            for column, dim in _LENGTH_CHECK.findall(clause):
                dims[column] = int(dim)
            one_dimensional.update(_NDIMS_CHECK.findall(clause))
        return dims, one_dimensional

    @staticmethod
    async def _proxima_vectors(conn: Any, table: str) -> dict[str, Any]:
        value = await conn.fetchval(
            """
            SELECT property_value FROM hologres.hg_table_properties
            WHERE table_namespace = current_schema() AND table_name = $1 AND property_key = 'proxima_vectors'
            """,
            table,
        )
        if not value:
            return {}
        parsed = json.loads(value)
        return parsed if isinstance(parsed, dict) else {}

    async def _validate_table(self, conn: Any, table: str, schema: IndexSchema) -> None:
        columns = await self._columns(conn, table)
        dims, one_dimensional = await self._vector_dims(conn, table)
        problems = column_problems(columns, dims, one_dimensional, schema)
        primary_key = await conn.fetch(
            """
            SELECT kcu.column_name FROM information_schema.table_constraints tc
            JOIN information_schema.key_column_usage kcu
              ON kcu.constraint_schema = tc.constraint_schema AND kcu.constraint_name = tc.constraint_name
            WHERE tc.table_schema = current_schema() AND tc.table_name = $1 AND tc.constraint_type = 'PRIMARY KEY'
            """,
            table,
        )
        if [row["column_name"] for row in primary_key] != ["file_id"]:
            problems.append("the primary key is not (file_id)")
        proxima = await self._proxima_vectors(conn, table)
        for f in schema.fields:
            entry = proxima.get(f.name)
            if isinstance(entry, dict) and entry.get("distance_method") != DISTANCE_METHOD:
                problems.append(
                    f"column {f.name!r} has a Proxima index with distance_method "
                    f"{entry.get('distance_method')}; viewfinder queries {DISTANCE_METHOD} on unit vectors"
                )
        if problems:
            raise SchemaMismatch(
                f"table {table!r} does not match vector index {schema.name!r}: " + "; ".join(problems)
            )
        missing = [f.name for f in schema.fields if f.name not in proxima]
        if missing:
            merged = {**proxima, **{name: proxima_entry() for name in missing}}
            await conn.execute(
                f"CALL set_table_property({quote_literal(table)}, 'proxima_vectors', "
                f"{quote_literal(json.dumps(merged, separators=(',', ':')))})"
            )

    async def _schema(self, index: str) -> IndexSchema:
        """The index's schema: remembered from ``ensure_index`` or read from the table."""
        cached = self._schemas.get(index)
        if cached is not None:
            return cached
        table = table_name(index)
        async with self._pool.acquire() as conn:
            columns = await self._columns(conn, table)
            if not columns:
                raise IndexNotFound(f"vector index {index!r} does not exist (no table {table!r})")
            dims, _ = await self._vector_dims(conn, table)
        fields = []
        for name, column in columns.items():
            if column["udt_name"] == "_float4":
                if name not in dims:
                    raise SchemaMismatch(
                        f"column {name!r} of {table!r} has no array_length CHECK (no dimension)"
                    )
                fields.append(VectorField(name, dims[name]))
        schema = IndexSchema(index, tuple(fields))
        self._schemas[index] = schema
        return schema

    # ── writes ──────────────────────────────────────────────────────

    async def upsert(self, index: str, rows: Sequence[VectorRow]) -> None:
        """Inserts or replaces rows keyed by file id; vectors are stored at unit length."""
        schema = await self._schema(index)
        columns = row_columns(schema, rows)
        if not len(columns):
            return
        sql = upsert_sql(index, schema)
        unit = {f.name: unit_rows(columns.vectors[f.name]) for f in schema.fields}
        records = [
            (
                file_id,
                columns.dataset_version_ids[i],
                columns.etags[i],
                *(unit[f.name][i].tolist() for f in schema.fields),
            )
            for i, file_id in enumerate(columns.file_ids)
        ]
        async with index_connection(self._pool, index, self._schemas) as conn:
            for start in range(0, len(records), self._upsert_batch_size):
                await conn.executemany(sql, records[start : start + self._upsert_batch_size])

    async def delete(self, index: str, file_ids: Sequence[str]) -> None:
        """Removes the rows of these files; missing ids are ignored."""
        await self._schema(index)
        ids = list(dict.fromkeys(canonical_id(file_id) for file_id in file_ids))
        if not ids:
            return
        table = quote_ident(table_name(index))
        async with index_connection(self._pool, index, self._schemas) as conn:
            await conn.execute(f"DELETE FROM {table} WHERE file_id = ANY($1::text[])", ids)  # noqa: S608

    # ── reads ───────────────────────────────────────────────────────

    async def search(self, index: str, query: VectorQuery) -> list[VectorHit]:
        """Top-k by cosine similarity on one field, filtered, above the threshold (see module doc)."""
        schema = await self._schema(index)
        checked = checked_query(schema, query, DEFAULT_SEARCH_BREADTH)
        if checked.file_ids is not None and not checked.file_ids:
            return []
        unit_query = unit_rows(checked.vector.reshape(1, -1))[0].tolist()
        args: list[Any] = [unit_query, checked.dataset_version_id]
        if checked.file_ids is not None:
            args.append(checked.file_ids)
        with_ids = checked.file_ids is not None
        async with index_connection(self._pool, index, self._schemas) as conn:
            if not query.exact:
                rows = await conn.fetch(
                    search_sql(index, query.vector_field, checked.top_k, exact=False, with_file_ids=with_ids),
                    *args,
                )
                if len(rows) >= checked.top_k:
                    return _hits(rows, checked)
                # Short: fewer matching rows than top_k, or Proxima's lossy index
                # lost some (the vendor warns LIMIT 1000 may return 500).
            rows = await conn.fetch(
                search_sql(index, query.vector_field, checked.top_k, exact=True, with_file_ids=with_ids),
                *args,
            )
        return _hits(rows, checked)

    async def count(self, index: str, filter: VectorFilter | None = None) -> int:
        """Rows in the index, optionally only those of one version (and file ids)."""
        await self._schema(index)
        table = quote_ident(table_name(index))
        async with index_connection(self._pool, index, self._schemas) as conn:
            return await count_rows(conn, table, filter, "text")

    async def close(self) -> None:
        """Closes the pool if this store created it; a shared pool stays open for its owner."""
        if self._owns_pool:
            await self._pool.close()


def column_problems(
    columns: dict[str, Any], dims: dict[str, int], one_dimensional: set[str], schema: IndexSchema
) -> list[str]:
    """Every difference between a table's columns (information_schema rows) and the documented ones."""
    problems = []
    for name in ("file_id", "dataset_version_id", "etag"):
        column = columns.get(name)
        if column is None:
            problems.append(f"column {name!r} is missing (expected text)")
        elif column["data_type"] not in _ID_TYPES:
            problems.append(f"column {name!r} is {column['data_type']}, expected text")
    if "updated_at" not in columns:
        problems.append("column 'updated_at' is missing (expected timestamp with time zone)")
    for f in schema.fields:
        problems.extend(_vector_column_problems(f, columns.get(f.name), dims.get(f.name), one_dimensional))
    expected = {"file_id", "dataset_version_id", "etag", "updated_at", *(f.name for f in schema.fields)}
    for name, column in columns.items():
        if name not in expected and column["is_nullable"] == "NO" and column["column_default"] is None:
            problems.append(f"extra column {name!r} is NOT NULL without a default, so rows cannot be written")
    return problems


def _vector_column_problems(
    f: VectorField, column: Any, found_dim: int | None, one_dimensional: set[str]
) -> list[str]:
    expected = f"float4[] of length {f.dim}"
    if column is None:
        return [f"column {f.name!r} is missing (expected {expected})"]
    if column["udt_name"] != "_float4":
        return [f"column {f.name!r} is {column['data_type']} {column['udt_name']}, expected {expected}"]
    if found_dim != f.dim:
        return [
            f"column {f.name!r} has no CHECK (array_length({f.name}, 1) = {f.dim})"
            + (f" (its CHECK says {found_dim})" if found_dim is not None else "")
        ]
    if f.name not in one_dimensional:
        return [f"column {f.name!r} has no CHECK (array_ndims({f.name}) = 1)"]
    return []


def _hits(rows: Sequence[Any], checked: CheckedQuery) -> list[VectorHit]:
    """Rows (squared Euclidean distance of unit vectors) as cosine hits above the threshold,
    best first with the file-id tie break."""
    hits = [VectorHit(str(row["file_id"]), 1.0 - float(row["distance"]) / 2.0) for row in rows]
    threshold = checked.score_threshold
    hits = [hit for hit in hits if threshold is None or hit.score >= threshold]
    hits.sort(key=lambda hit: (-hit.score, hit.file_id))
    return hits[: checked.top_k]
