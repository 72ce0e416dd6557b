"""The Elasticsearch 8.17+ adapter: an index is one Elasticsearch index, spoken to over plain REST.

Mapping of index ``<name>`` (created by ``ensure_index`` if absent)::

    PUT /vf_index_<name>
    {"mappings": {"dynamic": "strict", "properties": {
        "file_id":            {"type": "keyword"},        # also the document _id
        "dataset_version_id": {"type": "keyword"},        # filter field
        "etag":               {"type": "keyword", "index": false},
        "<field>": {"type": "dense_vector", "dims": <dim>, "element_type": "float", "index": true,
                    "similarity": "cosine",
                    "index_options": {"type": "hnsw", "m": 16, "ef_construction": 64}},
        ...}}}

``index_options.type`` is ``hnsw`` on purpose: since 8.14 a float vector field
defaults to ``int8_hnsw`` (scalar-quantised), whose scores are approximations
of the cosine; viewfinder's thresholds mean the same cosine in every adapter.
An existing index is accepted when these fields exist with these types, each
vector field is an indexed ``dense_vector`` of the declared ``dims`` with
``cosine`` similarity (any HNSW or flat ``index_options`` type), and is
otherwise reported field by field in ``SchemaMismatch``.

Requests, as documented for 8.17 (elastic.co/guide/en/elasticsearch/reference/8.17):

* writes: ``POST /_bulk?refresh=wait_for`` with NDJSON ``index`` / ``delete``
  actions keyed by ``_id`` = file id (an ``index`` action replaces the whole
  document, so a redelivered row changes nothing but ``_version``);
  ``refresh=wait_for`` makes a search after ``upsert`` see it, like
  pgvector's commit and Milvus' Strong consistency;
* ANN: ``POST /<index>/_search`` with the top-level ``knn`` section
  ``{field, query_vector, k, num_candidates, filter}`` (``filter`` is applied
  *during* the HNSW walk, so Elasticsearch returns ``k`` hits whenever ``k``
  documents match it). ``_score`` is ``(1 + cosine) / 2`` for ``cosine``
  similarity (dense-vector docs), so cosine = ``2 * _score - 1``. The score
  threshold is applied here to the ``k`` hits rather than through knn's
  ``similarity`` option: that way a result with fewer than ``k`` hits always
  means "the index came back short", and the exact path answers instead;
* exact: a ``script_score`` query over the filter with the Painless vector
  function ``cosineSimilarity(params.query_vector, '<field>') + 1.0`` (script
  scores must not be negative), ``min_score`` = threshold + 1, sorted by
  ``_score`` then ``file_id``: the true top-k, brute force over the
  filtered documents;
* counts: ``POST /<index>/_count``.

File-id filters are ``terms`` queries of at most ``MAX_TERMS`` ids (the
default ``index.max_terms_count``); longer lists are searched in chunks whose
top-k are merged. ``top_k`` may not exceed ``index.max_result_window``
(10,000). The query DSL helpers here are shared with the OpenSearch / Lindorm
adapter (OpenSearch forked Elasticsearch 7.10 and kept this DSL).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

import aiohttp
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from viewfinder_common.errors import DomainError, FailedPrecondition, Unavailable
from viewfinder_common.http_retry import (
    HTTPStatusError,
    RetriesExhausted,
    RetryPolicy,
    call_with_retries,
    mask_secrets,
    parse_retry_after,
)
from viewfinder_common.vectorstore import (
    DEFAULT_SEARCH_BREADTH,
    INDEX_PREFIX,
    IndexNotFound,
    IndexSchema,
    InvalidVectorInput,
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
from viewfinder_common.vectorstore.rows import CheckedQuery, checked_file_ids, checked_query, row_columns

HNSW_M: Final = 16
HNSW_EF_CONSTRUCTION: Final = 64
# dense_vector indexes at most this many dimensions (8.17 docs).
MAX_DIMS: Final = 4096
# index.max_terms_count's default: ids per `terms` query.
MAX_TERMS: Final = 65_536
# index.max_result_window's default; knn's k and num_candidates have the same ceiling.
MAX_RESULT_WINDOW: Final = 10_000
_ERROR_EXCERPT_CHARS: Final = 300
_T = TypeVar("_T")
# Index settings and mapping fields every index has besides its vector fields.
KEYWORD_FIELDS: Final = ("file_id", "dataset_version_id", "etag")
# HNSW and flat variants Elasticsearch accepts as an index's `index_options.type`.
_ACCEPTED_INDEX_TYPES: Final = frozenset(
    {"hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw", "flat", "int8_flat", "int4_flat", "bbq_flat"}
)


class ElasticsearchSettings(BaseSettings):
    """An Elasticsearch 8.17+ cluster (``VIEWFINDER_ELASTICSEARCH_*``)."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_ELASTICSEARCH_", extra="ignore")

    uri: str = "http://127.0.0.1:9200"
    username: str | None = None
    password: SecretStr | None = None
    # An API key (the base64 "id:key" form Elasticsearch hands out) instead of a user.
    api_key: SecretStr | None = None
    verify_tls: bool = True
    ca_file: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    # "wait_for": a search after upsert sees it; "false" leaves it to refresh_interval.
    refresh: Literal["wait_for", "true", "false"] = "wait_for"


def index_name(index: str) -> str:
    """The Elasticsearch index holding vector index ``index``."""
    return INDEX_PREFIX + validate_index_name(index)


# ── query DSL helpers (shared with the OpenSearch / Lindorm adapter) ──────


def filter_clause(dataset_version_id: str, file_ids: Sequence[str] | None) -> dict[str, Any]:
    """The ``bool`` filter selecting one version's documents (and these file ids)."""
    clauses: list[dict[str, Any]] = [{"term": {"dataset_version_id": dataset_version_id}}]
    if file_ids is not None:
        clauses.append({"terms": {"file_id": list(file_ids)}})
    return {"bool": {"filter": clauses}}


def id_chunks(file_ids: list[str] | None) -> list[list[str] | None]:
    """``[None]`` for an unrestricted filter, else the ids in ``terms``-sized chunks (none if empty)."""
    if file_ids is None:
        return [None]
    return [file_ids[start : start + MAX_TERMS] for start in range(0, len(file_ids), MAX_TERMS)]


def check_top_k(top_k: int) -> None:
    """``InvalidVectorInput`` when ``top_k`` exceeds what one search request may return."""
    if top_k > MAX_RESULT_WINDOW:
        raise InvalidVectorInput(
            f"top_k {top_k} exceeds the search engine's result window ({MAX_RESULT_WINDOW})"
        )


def merge_hits(hits: Iterable[VectorHit], top_k: int, score_threshold: float | None) -> list[VectorHit]:
    """Hits above the threshold, best first (ties by file id), at most ``top_k``."""
    kept = [hit for hit in hits if score_threshold is None or hit.score >= score_threshold]
    kept.sort(key=lambda hit: (-hit.score, hit.file_id))
    return kept[:top_k]


def bulk_index_actions(
    target: str, schema: IndexSchema, rows: Sequence[VectorRow], *, with_index_name: bool = True
) -> list[list[dict[str, Any]]]:
    """Validated rows as ``_bulk`` ``index`` action/document pairs, one list per row."""
    columns = row_columns(schema, rows)
    actions: list[list[dict[str, Any]]] = []
    for i, file_id in enumerate(columns.file_ids):
        meta: dict[str, Any] = {"_id": file_id}
        if with_index_name:
            meta["_index"] = target
        document: dict[str, Any] = {
            "file_id": file_id,
            "dataset_version_id": columns.dataset_version_ids[i],
            "etag": columns.etags[i],
        }
        for vector_field in schema.fields:
            document[vector_field.name] = columns.vectors[vector_field.name][i].tolist()
        actions.append([{"index": meta}, document])
    return actions


def bulk_item_errors(response: Mapping[str, Any]) -> list[tuple[int, str, str]]:
    """``(status, error type, reason)`` of every failed ``_bulk`` item (a missing document
    on delete is not a failure)."""
    failures = []
    for item in response.get("items", []):
        for outcome in item.values():
            status = int(outcome.get("status", 200))
            if status == 404 and outcome.get("result") == "not_found":
                continue
            error = outcome.get("error")
            if error is not None or status >= 300:
                error = error if isinstance(error, dict) else {"type": str(error), "reason": str(error)}
                failures.append((status, str(error.get("type", "")), str(error.get("reason", ""))))
    return failures


def raise_for_bulk_errors(response: Mapping[str, Any], index: str) -> None:
    """Turns failed bulk items into the domain error their type calls for; retryable
    (429 / 5xx) items raise ``HTTPStatusError`` so the whole (idempotent) batch is retried."""
    if not response.get("errors"):
        return
    failures = bulk_item_errors(response)
    if not failures:
        return
    if any(status in (429, 502, 503, 504) for status, _, _ in failures):
        raise HTTPStatusError(429, f"bulk request partly rejected ({failures[0][1]}): {failures[0][2]}")
    status, error_type, reason = failures[0]
    summary = f"{len(failures)} of {len(response.get('items', []))} bulk items failed, first: {error_type}: {reason}"
    if error_type == "index_not_found_exception":
        raise IndexNotFound(f"vector index {index!r} does not exist")
    if error_type in {
        "strict_dynamic_mapping_exception",
        "mapper_parsing_exception",
        "document_parsing_exception",
        "illegal_argument_exception",
    }:
        raise SchemaMismatch(f"vector index {index!r} rejected rows: {summary}")
    raise FailedPrecondition(f"vector index {index!r}: {summary} (HTTP {status})")


def mapping_problems(properties: Mapping[str, Any], schema: IndexSchema) -> list[str]:
    """Every difference between an Elasticsearch mapping and the documented one."""
    problems = []
    for name in KEYWORD_FIELDS:
        field = properties.get(name)
        if field is None:
            problems.append(f"field {name!r} is missing (expected keyword)")
        elif field.get("type") != "keyword":
            problems.append(f"field {name!r} is {field.get('type')}, expected keyword")
    for vector_field in schema.fields:
        field = properties.get(vector_field.name)
        expected = f"dense_vector({vector_field.dim}, cosine)"
        if field is None:
            problems.append(f"field {vector_field.name!r} is missing (expected {expected})")
            continue
        if field.get("type") != "dense_vector":
            problems.append(f"field {vector_field.name!r} is {field.get('type')}, expected {expected}")
            continue
        if field.get("dims") != vector_field.dim:
            problems.append(
                f"field {vector_field.name!r} is dense_vector({field.get('dims')}), expected {expected}"
            )
        if field.get("index") is False:
            problems.append(f"field {vector_field.name!r} is not indexed for kNN search (index: false)")
        # Since 8.11 an indexed float vector defaults to cosine.
        similarity = field.get("similarity", "cosine")
        if similarity != "cosine":
            problems.append(
                f"field {vector_field.name!r} uses similarity {similarity}; viewfinder's scores are cosine"
            )
        element_type = field.get("element_type", "float")
        if element_type != "float":
            problems.append(f"field {vector_field.name!r} stores {element_type} elements, expected float")
        index_type = (field.get("index_options") or {}).get("type", "hnsw")
        if index_type not in _ACCEPTED_INDEX_TYPES:
            problems.append(f"field {vector_field.name!r} has index_options type {index_type}")
    return problems


def vector_fields_of(
    properties: Mapping[str, Any], vector_type: str, dim_key: str
) -> tuple[VectorField, ...]:
    """The vector fields of a mapping (``dense_vector`` / ``knn_vector`` properties)."""
    return tuple(
        VectorField(name, int(field[dim_key]))
        for name, field in properties.items()
        if isinstance(field, Mapping) and field.get("type") == vector_type and dim_key in field
    )


def error_type_and_reason(body: Any) -> tuple[str, str]:
    """``(type, reason)`` of an Elasticsearch / OpenSearch error body."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            return str(error.get("type", "")), str(error.get("reason", ""))
        if isinstance(error, str):
            return error, error
    return "", ""


class ElasticsearchError(HTTPStatusError):
    """An error response from Elasticsearch with its parsed error ``type``."""

    def __init__(self, status: int, error_type: str, message: str, retry_after_s: float | None) -> None:
        super().__init__(status, message, retry_after_s=retry_after_s)
        self.error_type = error_type


class ElasticsearchVectorStore:
    """``VectorStore`` over Elasticsearch indices through one aiohttp session."""

    def __init__(
        self,
        settings: ElasticsearchSettings,
        *,
        upsert_batch_size: int = 500,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        if upsert_batch_size < 1:
            raise ValueError(f"upsert_batch_size must be at least 1, got {upsert_batch_size}")
        url = URL(settings.uri)
        # Credentials written into the URI move to the auth header, so that no
        # URL in a log or error message carries them.
        username = settings.username or url.user
        password = settings.password.get_secret_value() if settings.password else (url.password or "")
        self._base = url.with_user(None).with_password(None)
        self._headers = {"Accept": "application/json"}
        self._secrets = [
            s for s in (password, settings.api_key.get_secret_value() if settings.api_key else "") if s
        ]
        if settings.api_key is not None:
            self._headers["Authorization"] = f"ApiKey {settings.api_key.get_secret_value()}"
        elif username:
            self._headers["Authorization"] = aiohttp.encode_basic_auth(username, password)
        self._settings = settings
        self._upsert_batch_size = upsert_batch_size
        self._retry_policy = retry_policy or RetryPolicy(max_attempts=4, base_delay_s=0.2, max_delay_s=5.0)
        self._session: aiohttp.ClientSession | None = None
        self._schemas: dict[str, IndexSchema] = {}

    # ── HTTP ────────────────────────────────────────────────────────

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl: Any = None
            if self._base.scheme == "https":
                if not self._settings.verify_tls:
                    ssl = False
                elif self._settings.ca_file:
                    import ssl as ssl_module  # noqa: PLC0415 (only for https with a private CA)

                    ssl = ssl_module.create_default_context(cafile=self._settings.ca_file)
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s),
                connector=aiohttp.TCPConnector(ssl=ssl),
            )
        return self._session

    async def _request_once(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        ndjson: Sequence[Mapping[str, Any]] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One REST call; returns the parsed JSON body or raises ``ElasticsearchError``."""
        url = self._base.with_path(self._base.path.rstrip("/") + path)
        headers: dict[str, str] = {}
        data: bytes | None = None
        if ndjson is not None:
            # NDJSON: one JSON object per line, and the body ends with a newline.
            data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in ndjson).encode()
            headers["Content-Type"] = "application/x-ndjson"
        elif body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        async with self._client().request(method, url, data=data, headers=headers, params=params) as response:
            text = await response.text()
            try:
                parsed: Any = json.loads(text) if text else None
            except ValueError:
                parsed = None
            if response.status >= 400:
                error_type, reason = error_type_and_reason(parsed)
                excerpt = mask_secrets(" ".join((reason or text).split()), self._secrets)
                raise ElasticsearchError(
                    response.status,
                    error_type,
                    f"Elasticsearch {method} {url.path}: HTTP {response.status} "
                    f"{error_type}: {excerpt[:_ERROR_EXCERPT_CHARS]}",
                    parse_retry_after(response.headers.get("Retry-After")),
                )
            return parsed

    async def _with_retries(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Runs ``operation`` with retries on 429/5xx/timeouts/dropped connections; an
        unreachable cluster becomes ``Unavailable``, rejected credentials ``FailedPrecondition``."""
        try:
            return await call_with_retries(operation, self._retry_policy)
        except RetriesExhausted as err:
            raise Unavailable(f"Elasticsearch at {self._base} is unavailable: {err}") from err
        except ElasticsearchError as err:
            if err.status in (401, 403):
                raise FailedPrecondition(
                    f"Elasticsearch at {self._base} rejected the credentials (HTTP {err.status})"
                ) from err
            raise
        except (aiohttp.ClientError, TimeoutError) as err:
            raise Unavailable(f"Elasticsearch at {self._base} is unavailable: {type(err).__name__}") from err

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """``_request_once`` with retries."""
        return await self._with_retries(lambda: self._request_once(method, path, **kwargs))

    async def _index_request(self, index: str, method: str, path: str, **kwargs: Any) -> Any:
        """A request about one index: a missing index becomes ``IndexNotFound`` (and is forgotten)."""
        return await self._on_index(index, lambda: self._request(method, path, **kwargs))

    async def _bulk(self, index: str, lines: Sequence[Mapping[str, Any]]) -> None:
        """One ``_bulk`` request; items rejected with 429/5xx retry the whole (idempotent) batch."""

        async def attempt() -> None:
            response = await self._request_once(
                "POST", "/_bulk", ndjson=lines, params={"refresh": self._settings.refresh}
            )
            raise_for_bulk_errors(response, index)

        await self._on_index(index, lambda: self._with_retries(attempt))

    async def _on_index(self, index: str, operation: Callable[[], Awaitable[_T]]) -> _T:
        try:
            return await operation()
        except IndexNotFound:  # from a bulk item: the index vanished under us
            self._schemas.pop(index, None)
            raise
        except ElasticsearchError as err:
            if err.status == 404 and err.error_type == "index_not_found_exception":
                self._schemas.pop(index, None)
                raise IndexNotFound(f"vector index {index!r} does not exist") from err
            raise _domain_error(err) from err

    async def server_version(self) -> str:
        """The cluster's version number (``GET /``), e.g. for a connection test."""
        try:
            info = await self._request("GET", "/")
        except ElasticsearchError as err:
            raise _domain_error(err) from err
        return str(info["version"]["number"])

    # ── index lifecycle ─────────────────────────────────────────────

    async def ensure_index(self, schema: IndexSchema) -> None:
        """Creates the index with the documented mapping if absent, or validates an existing one."""
        validate_schema(schema)
        for vector_field in schema.fields:
            if vector_field.dim > MAX_DIMS:
                raise SchemaMismatch(
                    f"vector field {vector_field.name!r} has {vector_field.dim} dimensions; "
                    f"Elasticsearch's dense_vector holds at most {MAX_DIMS}"
                )
        target = index_name(schema.name)
        properties = await self._properties(target)
        if properties is None:
            try:
                await self._request("PUT", f"/{target}", body=self.index_body(schema))
            except ElasticsearchError as err:
                # Another replica created it a moment ago: validate that one.
                if err.error_type != "resource_already_exists_exception":
                    raise _domain_error(err) from err
                properties = await self._properties(target)
        if properties is not None:
            problems = mapping_problems(properties, schema)
            if problems:
                raise SchemaMismatch(
                    f"index {target!r} does not match vector index {schema.name!r}: " + "; ".join(problems)
                )
        self._schemas[schema.name] = IndexSchema(schema.name, tuple(schema.fields))

    @staticmethod
    def index_body(schema: IndexSchema) -> dict[str, Any]:
        """The ``PUT /<index>`` body of the documented schema."""
        properties: dict[str, Any] = {
            "file_id": {"type": "keyword"},
            "dataset_version_id": {"type": "keyword"},
            "etag": {"type": "keyword", "index": False},
        }
        for vector_field in schema.fields:
            properties[vector_field.name] = {
                "type": "dense_vector",
                "dims": vector_field.dim,
                "element_type": "float",
                "index": True,
                "similarity": "cosine",
                "index_options": {"type": "hnsw", "m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION},
            }
        return {"mappings": {"dynamic": "strict", "properties": properties}}

    async def _properties(self, target: str) -> dict[str, Any] | None:
        """The index's mapped properties, or None when it does not exist."""
        try:
            body = await self._request("GET", f"/{target}/_mapping")
        except ElasticsearchError as err:
            if err.status == 404:
                return None
            raise _domain_error(err) from err
        mappings = next(iter(body.values()))["mappings"]
        return dict(mappings.get("properties", {}))

    async def _schema(self, index: str) -> IndexSchema:
        """The index's schema: remembered from ``ensure_index`` or read from its mapping."""
        cached = self._schemas.get(index)
        if cached is not None:
            return cached
        target = index_name(index)
        properties = await self._properties(target)
        if properties is None:
            raise IndexNotFound(f"vector index {index!r} does not exist (no index {target!r})")
        schema = IndexSchema(index, vector_fields_of(properties, "dense_vector", "dims"))
        self._schemas[index] = schema
        return schema

    # ── writes ──────────────────────────────────────────────────────

    async def upsert(self, index: str, rows: Sequence[VectorRow]) -> None:
        """Indexes rows keyed by file id (``_bulk`` ``index`` actions replace whole documents)."""
        schema = await self._schema(index)
        target = index_name(index)
        actions = bulk_index_actions(target, schema, rows)
        for start in range(0, len(actions), self._upsert_batch_size):
            lines = [line for pair in actions[start : start + self._upsert_batch_size] for line in pair]
            await self._bulk(index, lines)

    async def delete(self, index: str, file_ids: Sequence[str]) -> None:
        """Removes the documents of these files; missing ids are ignored."""
        await self._schema(index)
        target = index_name(index)
        ids = list(dict.fromkeys(canonical_id(file_id) for file_id in file_ids))
        for start in range(0, len(ids), self._upsert_batch_size):
            lines = [
                {"delete": {"_index": target, "_id": i}} for i in ids[start : start + self._upsert_batch_size]
            ]
            await self._bulk(index, lines)

    # ── reads ───────────────────────────────────────────────────────

    async def search(self, index: str, query: VectorQuery) -> list[VectorHit]:
        """Top-k by cosine similarity on one field, filtered, above the threshold (see module doc)."""
        schema = await self._schema(index)
        checked = checked_query(schema, query, DEFAULT_SEARCH_BREADTH)
        check_top_k(checked.top_k)
        hits: list[VectorHit] = []
        for chunk in id_chunks(checked.file_ids):
            hits.extend(
                await self._search_chunk(index, query.vector_field, checked, chunk, exact=query.exact)
            )
        return merge_hits(hits, checked.top_k, checked.score_threshold)

    async def _search_chunk(
        self, index: str, vector_field: str, checked: CheckedQuery, file_ids: list[str] | None, *, exact: bool
    ) -> list[VectorHit]:
        target = index_name(index)
        vector = checked.vector.tolist()
        where = filter_clause(checked.dataset_version_id, file_ids)
        if not exact:
            body = self.knn_body(vector_field, vector, checked, where)
            response = await self._index_request(index, "POST", f"/{target}/_search", body=body)
            found = response["hits"]["hits"]
            if len(found) >= checked.top_k:
                return [VectorHit(hit["_id"], 2.0 * float(hit["_score"]) - 1.0) for hit in found]
            # Short: fewer documents match the filter than top_k (the exact
            # query over them is cheap) or the graph walk gave up early.
        body = self.exact_body(vector_field, vector, checked, where)
        response = await self._index_request(index, "POST", f"/{target}/_search", body=body)
        return [VectorHit(hit["_id"], float(hit["_score"]) - 1.0) for hit in response["hits"]["hits"]]

    @staticmethod
    def knn_body(
        vector_field: str, vector: list[float], checked: CheckedQuery, where: dict[str, Any]
    ) -> dict[str, Any]:
        """The approximate search: the top-level ``knn`` section with a pre-filter."""
        return {
            "size": checked.top_k,
            "_source": False,
            "knn": {
                "field": vector_field,
                "query_vector": vector,
                "k": checked.top_k,
                "num_candidates": min(max(checked.search_breadth, checked.top_k), MAX_RESULT_WINDOW),
                "filter": where,
            },
        }

    @staticmethod
    def exact_body(
        vector_field: str, vector: list[float], checked: CheckedQuery, where: dict[str, Any]
    ) -> dict[str, Any]:
        """The exact search: brute-force ``script_score`` over the filtered documents."""
        script_score: dict[str, Any] = {
            "query": where,
            "script": {
                # The field name matches FIELD_NAME ([a-z0-9_]), so it is safe inside quotes.
                "source": f"cosineSimilarity(params.query_vector, '{vector_field}') + 1.0",
                "params": {"query_vector": vector},
            },
        }
        if checked.score_threshold is not None:
            script_score["min_score"] = checked.score_threshold + 1.0
        return {
            "size": checked.top_k,
            "_source": False,
            "track_scores": True,
            "query": {"script_score": script_score},
            "sort": [{"_score": {"order": "desc"}}, {"file_id": {"order": "asc"}}],
        }

    async def count(self, index: str, filter: VectorFilter | None = None) -> int:
        """Documents in the index, optionally only those of one version (and file ids)."""
        await self._schema(index)
        target = index_name(index)
        if filter is None:
            response = await self._index_request(index, "POST", f"/{target}/_count")
            return int(response["count"])
        version = canonical_id(filter.dataset_version_id, "dataset version id")
        total = 0
        for chunk in id_chunks(checked_file_ids(filter)):
            body = {"query": filter_clause(version, chunk)}
            response = await self._index_request(index, "POST", f"/{target}/_count", body=body)
            total += int(response["count"])
        return total

    async def close(self) -> None:
        """Closes the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _domain_error(err: ElasticsearchError) -> DomainError:
    """A domain error for an Elasticsearch error response that is not handled on the spot."""
    if err.status in (401, 403):
        return FailedPrecondition(f"Elasticsearch rejected the credentials (HTTP {err.status})")
    if err.error_type in {"mapper_parsing_exception", "strict_dynamic_mapping_exception"}:
        return SchemaMismatch(str(err))
    return FailedPrecondition(str(err))
