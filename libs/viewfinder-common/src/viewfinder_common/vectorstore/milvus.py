"""The Milvus adapter (Milvus 2.4+ and the Milvus Lite server), over pymilvus' async client.

Collection of index ``<name>`` (created by ``ensure_index`` if absent)::

    vf_index_<name>
        file_id            VARCHAR(64)  primary key, not auto-generated
        dataset_version_id VARCHAR(64)  INVERTED scalar index (filter field)
        etag               VARCHAR(1024)
        <field>            FLOAT_VECTOR(<dim>)  HNSW (M=16, efConstruction=64), metric COSINE
        ...
    consistency level Strong (a search sees every completed upsert)

An existing collection is accepted when these fields exist with these types,
the primary key is ``file_id`` without auto id, and each vector field that has
an index uses metric COSINE (missing vector indexes are created); otherwise
``ensure_index`` raises ``SchemaMismatch`` naming every difference. A
collection is loaded by ``ensure_index`` and, in a process that did not call
it, before its first use; a collection found released (the server restarted)
is loaded again and the call retried once.

Search: HNSW with ``ef = max(search_breadth, top_k)``, filtered by a boolean
expression (``dataset_version_id == "…" and file_id in ["…", …]``; values are
canonical UUIDs, quoted and escaped). Milvus reports COSINE scores as
similarities, so the threshold (score >= threshold) is applied to the top-k
the index returns, which is the same set as the top-k above the threshold.

``exact=True`` has no server-side equivalent for an HNSW field, so it is
brute force here: the candidates' vectors are fetched (by id when the filter
lists file ids, else the whole version, paged by file-id prefix so that no
query exceeds Milvus' result window) and ranked in numpy (``rows.exact_top_k``).
That costs a transfer of every candidate, which is what the search planner's
"selective filter → exact" path means it to cost. When an ANN search returns
fewer than ``top_k`` rows, the same exact path answers, so filtered results
are never silently short.

Index creation goes through the synchronous client with ``sync=False`` (in an
executor): the async client always waits for the build through an RPC the
Milvus Lite server does not implement (AllocTimestamp), and the index is
built on an empty collection anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import numpy as np
from pymilvus import AsyncMilvusClient, DataType, MilvusClient
from pymilvus.client.types import LoadState
from pymilvus.exceptions import MilvusException

from viewfinder_common.settings import MilvusSettings
from viewfinder_common.vectorstore import (
    DEFAULT_SEARCH_BREADTH,
    INDEX_PREFIX,
    IndexNotFound,
    IndexSchema,
    SchemaMismatch,
    VectorField,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
    canonical_id,
    validate_index_name,
    validate_schema,
)
from viewfinder_common.vectorstore.rows import checked_file_ids, checked_query, exact_top_k, row_columns

# Milvus error codes (common.ErrorCode / merr) this adapter reacts to.
COLLECTION_NOT_FOUND: Final = 100
COLLECTION_NOT_LOADED: Final = 101
HNSW_M: Final = 16
HNSW_EF_CONSTRUCTION: Final = 64
ID_MAX_LENGTH: Final = 64
ETAG_MAX_LENGTH: Final = 1024
# Milvus caps offset + limit of one query at 16,384 rows.
QUERY_WINDOW: Final = 16_384
# Ids per `file_id in [...]` expression when fetching or deleting by id.
IDS_PER_EXPRESSION: Final = 1_000
_HEX: Final = "0123456789abcdef"
_T = TypeVar("_T")


def collection_name(index: str) -> str:
    """The collection holding ``index``."""
    return INDEX_PREFIX + validate_index_name(index)


def string_literal(value: str) -> str:
    """A double-quoted Milvus expression string literal with backslash escapes."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def filter_expression(
    dataset_version_id: str, file_ids: Sequence[str] | None = None, id_prefix: str = ""
) -> str:
    """The boolean expression selecting one version's rows (and file ids / an id prefix)."""
    parts = [
        f"dataset_version_id == {string_literal(canonical_id(dataset_version_id, 'dataset version id'))}"
    ]
    if file_ids is not None:
        parts.append(f"file_id in [{', '.join(string_literal(canonical_id(i)) for i in file_ids)}]")
    if id_prefix:
        # Only hex digits reach here (see _scan_version); "%" is LIKE's wildcard.
        parts.append(f"file_id like {string_literal(id_prefix + '%')}")
    return " and ".join(parts)


class MilvusVectorStore:
    """``VectorStore`` over Milvus collections through one dedicated async connection."""

    def __init__(
        self,
        settings: MilvusSettings,
        *,
        upsert_batch_size: int = 500,
        consistency_level: str = "Strong",
        timeout_s: float = 60.0,
    ) -> None:
        if upsert_batch_size < 1:
            raise ValueError(f"upsert_batch_size must be at least 1, got {upsert_batch_size}")
        self._settings = settings
        self._upsert_batch_size = upsert_batch_size
        self._consistency_level = consistency_level
        self._timeout_s = timeout_s
        # Dedicated: pymilvus shares connections per event loop by default,
        # and a store must not outlive (or be closed under) another's use.
        self._client = AsyncMilvusClient(
            uri=settings.uri,
            token=self._token(),
            db_name=settings.db_name,
            timeout=timeout_s,
            dedicated=True,
        )
        self._schemas: dict[str, IndexSchema] = {}
        self._loaded: set[str] = set()

    def _token(self) -> str:
        return self._settings.token.get_secret_value() if self._settings.token else ""

    # ── index lifecycle ─────────────────────────────────────────────

    async def ensure_index(self, schema: IndexSchema) -> None:
        """Creates the collection, its indexes and loads it; or validates an existing one."""
        validate_schema(schema)
        name = collection_name(schema.name)
        created = False
        if not await self._client.has_collection(name):
            try:
                await self._client.create_collection(
                    name, schema=self._collection_schema(schema), consistency_level=self._consistency_level
                )
                created = True
            except MilvusException:
                # Another replica may have created it a moment ago: validate that one.
                if not await self._client.has_collection(name):
                    raise
        if not created:
            described = await self._client.describe_collection(name)
            problems = _schema_problems(described, schema)
            if problems:
                raise SchemaMismatch(
                    f"collection {name!r} does not match vector index {schema.name!r}: " + "; ".join(problems)
                )
        await self._create_missing_indexes(name, schema, with_scalar_index=created)
        self._loaded.discard(name)
        await self._ensure_loaded(name)
        self._schemas[schema.name] = IndexSchema(schema.name, tuple(schema.fields))

    @staticmethod
    def _collection_schema(schema: IndexSchema) -> Any:
        collection = AsyncMilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        collection.add_field("file_id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        collection.add_field("dataset_version_id", DataType.VARCHAR, max_length=ID_MAX_LENGTH)
        collection.add_field("etag", DataType.VARCHAR, max_length=ETAG_MAX_LENGTH)
        for vector_field in schema.fields:
            collection.add_field(vector_field.name, DataType.FLOAT_VECTOR, dim=vector_field.dim)
        return collection

    async def _create_missing_indexes(
        self, name: str, schema: IndexSchema, *, with_scalar_index: bool
    ) -> None:
        index_params = MilvusClient.prepare_index_params()
        missing = 0
        for vector_field in schema.fields:
            existing = await self._client.list_indexes(name, field_name=vector_field.name)
            if existing:
                described = await self._client.describe_index(name, existing[0])
                metric = str(described.get("metric_type", "")).upper()
                if metric != "COSINE":
                    raise SchemaMismatch(
                        f"collection {name!r}: vector field {vector_field.name!r} is indexed with metric "
                        f"{metric or 'unknown'}; viewfinder's scores are cosine similarities (COSINE)"
                    )
                continue
            index_params.add_index(
                field_name=vector_field.name,
                index_type="HNSW",
                metric_type="COSINE",
                params={"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
            )
            missing += 1
        if with_scalar_index:
            index_params.add_index(field_name="dataset_version_id", index_type="INVERTED")
            missing += 1
        if not missing:
            return

        def create() -> None:
            client = MilvusClient(
                uri=self._settings.uri,
                token=self._token(),
                db_name=self._settings.db_name,
                timeout=self._timeout_s,
            )
            try:
                client.create_index(name, index_params, sync=False)
            finally:
                client.close()

        await asyncio.get_running_loop().run_in_executor(None, create)

    async def _ensure_loaded(self, name: str) -> None:
        if name in self._loaded:
            return
        state = await self._client.get_load_state(name)
        if state.get("state") != LoadState.Loaded:
            await self._client.load_collection(name)
        self._loaded.add(name)

    async def _schema(self, index: str) -> IndexSchema:
        """The index's schema: remembered from ``ensure_index`` or read from the collection."""
        cached = self._schemas.get(index)
        if cached is not None:
            return cached
        name = collection_name(index)
        if not await self._client.has_collection(name):
            raise IndexNotFound(f"vector index {index!r} does not exist (no collection {name!r})")
        described = await self._client.describe_collection(name)
        fields = tuple(
            VectorField(field["name"], int(field["params"]["dim"]))
            for field in described["fields"]
            if field["type"] == DataType.FLOAT_VECTOR
        )
        schema = IndexSchema(index, fields)
        self._schemas[index] = schema
        return schema

    async def _on_collection(self, index: str, operation: Callable[[str], Awaitable[_T]]) -> _T:
        """Runs ``operation(collection)`` on a loaded collection; reloads and retries once if the
        server lost the loaded state (restart), maps a vanished collection to ``IndexNotFound``."""
        name = collection_name(index)
        try:
            await self._ensure_loaded(name)
            try:
                return await operation(name)
            except MilvusException as err:
                if err.code != COLLECTION_NOT_LOADED:
                    raise
                self._loaded.discard(name)
                await self._ensure_loaded(name)
                return await operation(name)
        except MilvusException as err:
            if err.code == COLLECTION_NOT_FOUND:
                self._schemas.pop(index, None)
                self._loaded.discard(name)
                raise IndexNotFound(f"vector index {index!r} does not exist") from err
            raise

    # ── writes ──────────────────────────────────────────────────────

    async def upsert(self, index: str, rows: Sequence[VectorRow]) -> None:
        """Inserts or replaces rows keyed by file id, in batches."""
        schema = await self._schema(index)
        columns = row_columns(schema, rows)
        for chunk in columns.chunks(self._upsert_batch_size):
            entities = [
                {
                    "file_id": file_id,
                    "dataset_version_id": chunk.dataset_version_ids[i],
                    "etag": chunk.etags[i],
                    **{f.name: chunk.vectors[f.name][i] for f in schema.fields},
                }
                for i, file_id in enumerate(chunk.file_ids)
            ]

            async def write(name: str, entities: list[dict[str, Any]] = entities) -> None:
                await self._client.upsert(name, entities)

            await self._on_collection(index, write)

    async def delete(self, index: str, file_ids: Sequence[str]) -> None:
        """Removes the rows of these files; missing ids are ignored."""
        await self._schema(index)
        ids = list(dict.fromkeys(canonical_id(file_id) for file_id in file_ids))
        for start in range(0, len(ids), IDS_PER_EXPRESSION):
            chunk = ids[start : start + IDS_PER_EXPRESSION]

            async def remove(name: str, chunk: list[str] = chunk) -> None:
                await self._client.delete(name, ids=chunk)

            await self._on_collection(index, remove)

    # ── reads ───────────────────────────────────────────────────────

    async def search(self, index: str, query: VectorQuery) -> list[VectorHit]:
        """Top-k by cosine similarity on one field, filtered, above the threshold (see module doc)."""
        schema = await self._schema(index)
        checked = checked_query(schema, query, DEFAULT_SEARCH_BREADTH)
        if checked.file_ids is not None and not checked.file_ids:
            return []
        if not query.exact:

            async def ann(name: str) -> list[list[Any]]:
                result: list[list[Any]] = await self._client.search(
                    name,
                    data=[checked.vector.tolist()],
                    anns_field=query.vector_field,
                    filter=filter_expression(checked.dataset_version_id, checked.file_ids),
                    limit=checked.top_k,
                    search_params={"metric_type": "COSINE", "params": {"ef": checked.search_breadth}},
                    output_fields=["file_id"],
                    consistency_level=self._consistency_level,
                )
                return result

            found = (await self._on_collection(index, ann))[0]
            if len(found) >= checked.top_k:
                hits = [VectorHit(file_id=str(hit["file_id"]), score=float(hit["distance"])) for hit in found]
                hits.sort(key=lambda hit: (-hit.score, hit.file_id))
                threshold = checked.score_threshold
                return [hit for hit in hits if threshold is None or hit.score >= threshold]
            # Short: fewer matching rows than top_k (exact over them is
            # cheap) or the graph walk missed some (exact is the answer).
        file_ids, vectors = await self._candidates(
            index, query.vector_field, checked.dataset_version_id, checked.file_ids
        )
        return exact_top_k(checked.vector, file_ids, vectors, checked.top_k, checked.score_threshold)

    async def _candidates(
        self, index: str, vector_field: str, dataset_version_id: str, file_ids: list[str] | None
    ) -> tuple[list[str], np.ndarray[Any, np.dtype[np.float32]]]:
        """Ids and vectors of every row the filter matches (the exact path's input)."""
        rows: list[dict[str, Any]] = []
        if file_ids is not None:
            # A primary-key-only expression is a point lookup (Milvus Lite's get
            # path: ~4x faster than a filtered scan); the version is checked here.
            for start in range(0, len(file_ids), IDS_PER_EXPRESSION):
                chunk = file_ids[start : start + IDS_PER_EXPRESSION]
                expression = f"file_id in [{', '.join(string_literal(i) for i in chunk)}]"
                found = await self._query(
                    index, expression, ["file_id", "dataset_version_id", vector_field], len(chunk)
                )
                rows.extend(row for row in found if row["dataset_version_id"] == dataset_version_id)
        else:
            rows = await self._scan_version(index, dataset_version_id, vector_field, "")
        ids = [str(row["file_id"]) for row in rows]
        vectors = np.asarray([row[vector_field] for row in rows], dtype=np.float32)
        return ids, vectors

    async def _scan_version(
        self, index: str, dataset_version_id: str, vector_field: str, id_prefix: str
    ) -> list[dict[str, Any]]:
        """Every row of a version, in queries of at most ``QUERY_WINDOW`` rows: a file-id prefix
        that matches more is split into its 16 hex continuations."""
        expression = filter_expression(dataset_version_id, id_prefix=id_prefix)
        matching = await self._count_expression(index, expression)
        if matching == 0:
            return []
        if matching <= QUERY_WINDOW or len(id_prefix) >= 8:
            return await self._query(index, expression, ["file_id", vector_field], matching)
        rows: list[dict[str, Any]] = []
        for digit in _HEX:
            rows.extend(await self._scan_version(index, dataset_version_id, vector_field, id_prefix + digit))
        return rows

    async def _query(
        self, index: str, expression: str, output_fields: list[str], limit: int
    ) -> list[dict[str, Any]]:
        async def run(name: str) -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = await self._client.query(
                name,
                filter=expression,
                output_fields=output_fields,
                limit=limit,
                consistency_level=self._consistency_level,
            )
            return result

        return await self._on_collection(index, run)

    async def _count_expression(self, index: str, expression: str) -> int:
        async def run(name: str) -> int:
            result = await self._client.query(
                name, filter=expression, output_fields=["count(*)"], consistency_level=self._consistency_level
            )
            return int(result[0]["count(*)"])

        return await self._on_collection(index, run)

    async def count(self, index: str, filter: VectorFilter | None = None) -> int:
        """Rows in the index, optionally only those of one version (and file ids)."""
        await self._schema(index)
        if filter is None:
            return await self._count_expression(index, "")
        file_ids = checked_file_ids(filter)
        if file_ids is not None and not file_ids:
            return 0
        return await self._count_expression(index, filter_expression(filter.dataset_version_id, file_ids))

    async def close(self) -> None:
        """Closes the connection."""
        await self._client.close()


def _schema_problems(described: dict[str, Any], schema: IndexSchema) -> list[str]:
    """Every difference between a described collection and the schema viewfinder writes."""
    fields = {field["name"]: field for field in described.get("fields", [])}
    problems: list[str] = []
    expected: dict[str, tuple[DataType, int | None]] = {
        "file_id": (DataType.VARCHAR, None),
        "dataset_version_id": (DataType.VARCHAR, None),
        "etag": (DataType.VARCHAR, None),
    } | {f.name: (DataType.FLOAT_VECTOR, f.dim) for f in schema.fields}
    for name, (data_type, dim) in expected.items():
        field = fields.get(name)
        if field is None:
            problems.append(
                f"field {name!r} is missing (expected {data_type.name}{f'({dim})' if dim else ''})"
            )
            continue
        if field["type"] != data_type:
            problems.append(f"field {name!r} is {_type_name(field['type'])}, expected {data_type.name}")
        elif dim is not None and int(field.get("params", {}).get("dim", -1)) != dim:
            problems.append(
                f"field {name!r} is FLOAT_VECTOR({field.get('params', {}).get('dim')}), expected FLOAT_VECTOR({dim})"
            )
    primary = [name for name, field in fields.items() if field.get("is_primary")]
    if primary != ["file_id"]:
        problems.append(f"the primary key is {primary or 'missing'}, expected 'file_id'")
    if described.get("auto_id"):
        problems.append("the primary key is auto-generated; viewfinder writes file ids itself")
    return problems


def _type_name(data_type: Any) -> str:
    return str(getattr(data_type, "name", data_type))
