"""The OpenSearch and Lindorm vector-engine adapters, over opensearch-py's ``AsyncOpenSearch``.

Both speak the OpenSearch k-NN REST API; an index is one search index with a
``knn_vector`` field per named vector field. They differ where the vendors
document differences:

**OpenSearch** (docs.opensearch.org, "k-NN vector", "Methods and engines",
"Spaces", "Exact k-NN search with scoring script")::

    PUT /vf_index_<name>
    {"settings": {"index": {"knn": true}},
     "mappings": {"dynamic": "strict", "properties": {
        "file_id": {"type": "keyword"}, "dataset_version_id": {"type": "keyword"},
        "etag": {"type": "keyword", "index": false},
        "<field>": {"type": "knn_vector", "dimension": <dim>,
                    "method": {"name": "hnsw", "space_type": "cosinesimil", "engine": "lucene",
                               "parameters": {"m": 16, "ef_construction": 64}}}}}}

* engine ``lucene`` (default) filters *during* the HNSW walk ("efficient
  filtering", 2.4+) and ignores ``ef_search``, using ``k`` instead, so the
  search breadth is passed as ``k`` (and ``size`` cuts the hits to top_k);
  ``faiss`` (cosinesimil since 2.19, efficient filtering since 2.9) takes
  ``k = top_k`` and ``method_parameters.ef_search`` = the breadth;
* ANN: ``{"query": {"knn": {"<field>": {"vector", "k", "filter"}}}}``; the
  score of ``cosinesimil`` is ``(2 - d) / 2`` with ``d = 1 - cosine``, so
  cosine = ``2 * score - 1``;
* exact: ``script_score`` with the k-NN plugin's ``knn_score`` script
  (``"lang": "knn"``, ``params: {field, query_value, space_type}``), whose
  ``cosinesimil`` score is ``1 + cosine`` (the plugin adds 1 because scores
  may not be negative: ``KNNScoringSpace.CosineSimilarity``).

**Lindorm vector engine** (help.aliyun.com/document_detail/2773371.html,
"Access the vector engine through curl"; and "向量检索得分" in
help.aliyun.com/zh/lindorm/user-guide/vector-knn-retrieval)::

    "<field>": {"type": "knn_vector", "dimension": <dim>, "data_type": "float",
                "method": {"engine": "lvector", "name": "hnsw", "space_type": "cosinesimil",
                           "parameters": {"m": 24, "ef_construction": 200}}}

* ANN: ``{"query": {"knn": {"<field>": {"vector", "k", "filter"}}},
  "ext": {"lvector": {"filter_type": "pre_filter", "ef_search": "<n>"}}}``
  (``ext.lvector`` values are strings, as in the vendor's examples);
* score: ``1 / (1 + d)`` with ``d = 1 - cosine`` for cosine distance, so
  cosine = ``2 - 1 / score``;
* exact: Lindorm documents no exact scoring script, so exact search is brute
  force here: the candidates' vectors are read from ``_source`` (paged with
  ``search_after`` on ``file_id``) and ranked by ``rows.exact_top_k``. That is
  why the mapping keeps vectors in ``_source`` (the vendor's examples exclude
  them to save space).

Common to both (and to the Elasticsearch adapter, whose DSL helpers this
module reuses): writes are ``_bulk`` ``index`` / ``delete`` actions keyed by
``_id`` = file id with ``refresh=wait_for``; filters are a ``bool`` filter of a
``term`` on ``dataset_version_id`` and a ``terms`` on ``file_id`` (chunked);
the score threshold is applied to the ANN hits here, and an ANN answer with
fewer than top_k hits is replaced by the exact answer, so results are never
silently short. An existing index is validated field by field
(``SchemaMismatch``), including ``index.knn``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Literal, Protocol, TypeVar

import numpy as np
from opensearchpy import AsyncOpenSearch
from opensearchpy import exceptions as os_errors
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from viewfinder_common.errors import DomainError, FailedPrecondition, Unavailable
from viewfinder_common.http_retry import (
    HTTPStatusError,
    RetriesExhausted,
    RetryDecision,
    RetryPolicy,
    call_with_retries,
    mask_secrets,
)
from viewfinder_common.vectorstore import (
    DEFAULT_SEARCH_BREADTH,
    IndexNotFound,
    IndexSchema,
    SchemaMismatch,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
    canonical_id,
    validate_schema,
)
from viewfinder_common.vectorstore.elasticsearch import (
    KEYWORD_FIELDS,
    MAX_RESULT_WINDOW,
    bulk_index_actions,
    check_top_k,
    error_type_and_reason,
    filter_clause,
    id_chunks,
    index_name,
    merge_hits,
    raise_for_bulk_errors,
    vector_fields_of,
)
from viewfinder_common.vectorstore.rows import CheckedQuery, checked_file_ids, checked_query, exact_top_k

HNSW_M: Final = 16
HNSW_EF_CONSTRUCTION: Final = 64
# Lindorm's own example values for its hnsw method.
LINDORM_HNSW_M: Final = 24
LINDORM_HNSW_EF_CONSTRUCTION: Final = 200
# Documents per page when the exact path reads candidate vectors (Lindorm).
SCAN_PAGE: Final = 1_000
_RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
_T = TypeVar("_T")


class OpenSearchSettings(BaseSettings):
    """An OpenSearch 2.x cluster with the k-NN plugin (``VIEWFINDER_OPENSEARCH_*``)."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_OPENSEARCH_", extra="ignore")

    uri: str = "http://127.0.0.1:9200"
    username: str | None = None
    password: SecretStr | None = None
    verify_certs: bool = True
    ca_file: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    # lucene: efficient filtering since 2.4; faiss: cosinesimil since 2.19.
    engine: Literal["lucene", "faiss"] = "lucene"
    refresh: Literal["wait_for", "true", "false"] = "wait_for"


class LindormSettings(BaseSettings):
    """A Lindorm vector engine endpoint (``VIEWFINDER_LINDORM_*``); it speaks the OpenSearch API."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_LINDORM_", extra="ignore")

    uri: str = "http://127.0.0.1:30070"
    username: str | None = None
    password: SecretStr | None = None
    verify_certs: bool = True
    ca_file: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    # flat: brute force, for under ~10,000 vectors; hnsw: 10,000 to 1,000,000 (vendor's table).
    method: Literal["hnsw", "flat"] = "hnsw"
    # pre_filter: filter, then search among the matches; post_filter may come back short.
    filter_type: Literal["pre_filter", "efficient_filter", "post_filter"] = "pre_filter"
    # The vendor suggests the number of vector-engine nodes; None keeps the server default.
    number_of_shards: int | None = Field(default=None, ge=1)
    refresh: Literal["wait_for", "true", "false"] = "wait_for"


class _Flavor(Protocol):
    """What differs between OpenSearch and Lindorm."""

    name: str
    native_exact: bool

    def index_body(self, schema: IndexSchema) -> dict[str, Any]: ...

    def field_problems(self, name: str, field: Mapping[str, Any], dim: int) -> list[str]: ...

    def ann_body(
        self, vector_field: str, vector: list[float], checked: CheckedQuery, where: dict[str, Any]
    ) -> dict[str, Any]: ...

    def ann_cosine(self, score: float) -> float: ...


def _keyword_properties() -> dict[str, Any]:
    return {
        "file_id": {"type": "keyword"},
        "dataset_version_id": {"type": "keyword"},
        "etag": {"type": "keyword", "index": False},
    }


class OpenSearchFlavor:
    """OpenSearch's k-NN plugin (lucene or faiss engine)."""

    name = "OpenSearch"
    native_exact = True

    def __init__(self, engine: str) -> None:
        self.engine = engine

    def index_body(self, schema: IndexSchema) -> dict[str, Any]:
        """The ``PUT /<index>`` body of the documented schema."""
        properties = _keyword_properties()
        for vector_field in schema.fields:
            properties[vector_field.name] = {
                "type": "knn_vector",
                "dimension": vector_field.dim,
                "method": {
                    "name": "hnsw",
                    "space_type": "cosinesimil",
                    "engine": self.engine,
                    "parameters": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION},
                },
            }
        return {
            "settings": {"index": {"knn": True}},
            "mappings": {"dynamic": "strict", "properties": properties},
        }

    def field_problems(self, name: str, field: Mapping[str, Any], dim: int) -> list[str]:
        """Differences between an existing ``knn_vector`` field and the documented one."""
        problems = _knn_vector_problems(name, field, dim)
        method = field.get("method") or {}
        if "model_id" in field:
            problems.append(f"field {name!r} uses a trained model; viewfinder needs a method definition")
        space_type = method.get("space_type", field.get("space_type", "l2"))
        if space_type != "cosinesimil":
            problems.append(f"field {name!r} uses space_type {space_type}; viewfinder's scores are cosine")
        engine = method.get("engine", "faiss")
        if engine not in {"lucene", "faiss", "nmslib"}:
            problems.append(f"field {name!r} uses engine {engine}")
        return problems

    def ann_body(
        self, vector_field: str, vector: list[float], checked: CheckedQuery, where: dict[str, Any]
    ) -> dict[str, Any]:
        """``knn`` query with an efficient filter; breadth as lucene's ``k`` or faiss' ``ef_search``."""
        breadth = min(max(checked.search_breadth, checked.top_k), MAX_RESULT_WINDOW)
        knn: dict[str, Any] = {"vector": vector, "filter": where}
        if self.engine == "faiss":
            knn["k"] = checked.top_k
            knn["method_parameters"] = {"ef_search": breadth}
        else:
            knn["k"] = breadth
        return {"size": checked.top_k, "_source": False, "query": {"knn": {vector_field: knn}}}

    def ann_cosine(self, score: float) -> float:
        """cosinesimil: score = (2 - d) / 2 with d = 1 - cosine."""
        return 2.0 * score - 1.0

    @staticmethod
    def exact_body(
        vector_field: str, vector: list[float], checked: CheckedQuery, where: dict[str, Any]
    ) -> dict[str, Any]:
        """Brute force with the k-NN plugin's ``knn_score`` script (score = 1 + cosine)."""
        script_score: dict[str, Any] = {
            "query": where,
            "script": {
                "source": "knn_score",
                "lang": "knn",
                "params": {"field": vector_field, "query_value": vector, "space_type": "cosinesimil"},
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


class LindormFlavor:
    """Lindorm's vector engine (``lvector``)."""

    name = "Lindorm"
    native_exact = False

    def __init__(self, method: str, filter_type: str, number_of_shards: int | None) -> None:
        self.method = method
        self.filter_type = filter_type
        self.number_of_shards = number_of_shards

    def index_body(self, schema: IndexSchema) -> dict[str, Any]:
        """The ``PUT /<index>`` body of the documented schema, with Lindorm's method definition."""
        properties = _keyword_properties()
        for vector_field in schema.fields:
            method: dict[str, Any] = {"engine": "lvector", "name": self.method, "space_type": "cosinesimil"}
            if self.method == "hnsw":
                method["parameters"] = {"m": LINDORM_HNSW_M, "ef_construction": LINDORM_HNSW_EF_CONSTRUCTION}
            properties[vector_field.name] = {
                "type": "knn_vector",
                "dimension": vector_field.dim,
                "data_type": "float",
                "method": method,
            }
        index_settings: dict[str, Any] = {"knn": True}
        if self.number_of_shards is not None:
            index_settings["number_of_shards"] = self.number_of_shards
        return {
            "settings": {"index": index_settings},
            "mappings": {"dynamic": "strict", "properties": properties},
        }

    def field_problems(self, name: str, field: Mapping[str, Any], dim: int) -> list[str]:
        """Differences between an existing Lindorm ``knn_vector`` field and the documented one."""
        problems = _knn_vector_problems(name, field, dim)
        method = field.get("method") or {}
        if method.get("engine") != "lvector":
            problems.append(f"field {name!r} uses engine {method.get('engine')}, expected lvector")
        if method.get("space_type") != "cosinesimil":
            problems.append(
                f"field {name!r} uses space_type {method.get('space_type')}; viewfinder's scores are cosine"
            )
        return problems

    def ann_body(
        self, vector_field: str, vector: list[float], checked: CheckedQuery, where: dict[str, Any]
    ) -> dict[str, Any]:
        """``knn`` query with a filter and Lindorm's ``ext.lvector`` search parameters (strings)."""
        lvector = {"filter_type": self.filter_type}
        if self.method == "hnsw":
            lvector["ef_search"] = str(min(max(checked.search_breadth, checked.top_k), MAX_RESULT_WINDOW))
        return {
            "size": checked.top_k,
            "_source": False,
            "query": {"knn": {vector_field: {"vector": vector, "k": checked.top_k, "filter": where}}},
            "ext": {"lvector": lvector},
        }

    def ann_cosine(self, score: float) -> float:
        """Cosine distance d = 1 - cosine, score = 1 / (1 + d)."""
        return 2.0 - 1.0 / score


def _knn_vector_problems(name: str, field: Mapping[str, Any], dim: int) -> list[str]:
    expected = f"knn_vector({dim}, cosinesimil)"
    if field.get("type") != "knn_vector":
        return [f"field {name!r} is {field.get('type')}, expected {expected}"]
    problems = []
    if field.get("dimension") != dim:
        problems.append(f"field {name!r} is knn_vector({field.get('dimension')}), expected {expected}")
    data_type = field.get("data_type", "float")
    if data_type != "float":
        problems.append(f"field {name!r} stores {data_type} elements, expected float")
    return problems


class _OpenSearchApiStore:
    """``VectorStore`` over an OpenSearch-API server; ``flavor`` holds the vendor differences."""

    def __init__(
        self,
        *,
        uri: str,
        username: str | None,
        password: SecretStr | None,
        verify_certs: bool,
        ca_file: str | None,
        timeout_s: float,
        refresh: str,
        flavor: _Flavor,
        upsert_batch_size: int,
        retry_policy: RetryPolicy | None,
    ) -> None:
        if upsert_batch_size < 1:
            raise ValueError(f"upsert_batch_size must be at least 1, got {upsert_batch_size}")
        url = URL(uri)
        # Credentials written into the URI move to http_auth: no logged URL carries them.
        user = username or url.user
        secret = password.get_secret_value() if password else (url.password or "")
        self._base = url.with_user(None).with_password(None)
        self._secrets = [secret] if secret else []
        self._flavor = flavor
        self._refresh = refresh
        self._upsert_batch_size = upsert_batch_size
        self._retry_policy = retry_policy or RetryPolicy(max_attempts=4, base_delay_s=0.2, max_delay_s=5.0)
        options: dict[str, Any] = {
            "hosts": [str(self._base)],
            "timeout": timeout_s,
            # Retries (with backoff and jitter) are ours: see _with_retries.
            "max_retries": 0,
            "verify_certs": verify_certs,
            "ssl_show_warn": False,
        }
        if user:
            options["http_auth"] = (user, secret)
        if ca_file:
            options["ca_certs"] = ca_file
        self._client = AsyncOpenSearch(**options)
        self._schemas: dict[str, IndexSchema] = {}

    # ── calls ───────────────────────────────────────────────────────

    async def _with_retries(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Runs ``operation`` with retries on 429/5xx/timeouts/dropped connections."""
        name = self._flavor.name
        try:
            return await call_with_retries(operation, self._retry_policy, classify=_classify)
        except RetriesExhausted as err:
            raise Unavailable(f"{name} at {self._base} is unavailable: {self._masked(err)}") from err
        except (os_errors.AuthenticationException, os_errors.AuthorizationException) as err:
            raise FailedPrecondition(
                f"{name} at {self._base} rejected the credentials (HTTP {err.status_code})"
            ) from err
        except os_errors.ConnectionError as err:
            raise Unavailable(f"{name} at {self._base} is unavailable: {type(err).__name__}") from err

    async def _call(self, index: str | None, operation: Callable[[], Awaitable[_T]]) -> _T:
        """A call about ``index``: a missing index becomes ``IndexNotFound``, other rejections
        domain errors with the server's reason."""
        try:
            return await self._with_retries(operation)
        except IndexNotFound:  # from a bulk item: the index vanished under us
            if index is not None:
                self._schemas.pop(index, None)
            raise
        except os_errors.TransportError as err:
            error_type, _ = error_type_and_reason(err.info)
            if index is not None and err.status_code == 404 and error_type == "index_not_found_exception":
                self._schemas.pop(index, None)
                raise IndexNotFound(f"vector index {index!r} does not exist") from err
            raise self._domain_error(err) from err

    def _masked(self, err: BaseException) -> str:
        return mask_secrets(str(err), self._secrets)

    def _domain_error(self, err: os_errors.TransportError) -> DomainError:
        error_type, reason = error_type_and_reason(err.info)
        message = (
            f"{self._flavor.name} rejected the request: HTTP {err.status_code} {error_type}: "
            + (mask_secrets(reason, self._secrets)[:300])
        )
        if error_type in {"mapper_parsing_exception", "strict_dynamic_mapping_exception"}:
            return SchemaMismatch(message)
        return FailedPrecondition(message)

    async def server_version(self) -> str:
        """The server's version number (``GET /``), e.g. for a connection test."""
        info = await self._call(None, self._client.info)
        return str(info["version"]["number"])

    # ── index lifecycle ─────────────────────────────────────────────

    async def ensure_index(self, schema: IndexSchema) -> None:
        """Creates the index with the documented mapping if absent, or validates an existing one."""
        validate_schema(schema)
        target = index_name(schema.name)
        described = await self._describe(target)
        if described is None:
            body = self._flavor.index_body(schema)
            try:
                await self._with_retries(lambda: self._client.indices.create(index=target, body=body))
            except os_errors.TransportError as err:
                # Another replica created it a moment ago: validate that one.
                if error_type_and_reason(err.info)[0] != "resource_already_exists_exception":
                    raise self._domain_error(err) from err
                described = await self._describe(target)
        if described is not None:
            properties, knn_enabled = described
            problems = self._problems(properties, knn_enabled, schema)
            if problems:
                raise SchemaMismatch(
                    f"index {target!r} does not match vector index {schema.name!r}: " + "; ".join(problems)
                )
        self._schemas[schema.name] = IndexSchema(schema.name, tuple(schema.fields))

    def _problems(self, properties: Mapping[str, Any], knn_enabled: bool, schema: IndexSchema) -> list[str]:
        problems = []
        if not knn_enabled:
            problems.append("index setting index.knn is not true, so no k-NN search is possible")
        for name in KEYWORD_FIELDS:
            field = properties.get(name)
            if field is None:
                problems.append(f"field {name!r} is missing (expected keyword)")
            elif field.get("type") != "keyword":
                problems.append(f"field {name!r} is {field.get('type')}, expected keyword")
        for vector_field in schema.fields:
            field = properties.get(vector_field.name)
            if field is None:
                problems.append(
                    f"field {vector_field.name!r} is missing (expected knn_vector({vector_field.dim}, cosinesimil))"
                )
            else:
                problems.extend(self._flavor.field_problems(vector_field.name, field, vector_field.dim))
        return problems

    async def _describe(self, target: str) -> tuple[dict[str, Any], bool] | None:
        """The index's mapped properties and whether ``index.knn`` is on; None if it does not exist."""
        # ignore=404: a missing index is an answer here, not a failure to log.
        missing = {"ignore": 404}
        try:
            mapping = await self._with_retries(
                lambda: self._client.indices.get_mapping(index=target, params=dict(missing))
            )
            if mapping.get("status") == 404:
                return None
            settings = await self._with_retries(
                lambda: self._client.indices.get_settings(index=target, params=dict(missing))
            )
            if settings.get("status") == 404:
                return None
        except os_errors.TransportError as err:
            raise self._domain_error(err) from err
        properties = dict(next(iter(mapping.values()))["mappings"].get("properties", {}))
        index_settings = next(iter(settings.values()))["settings"].get("index", {})
        knn = index_settings.get("knn", False)
        return properties, str(knn).lower() == "true"

    async def _schema(self, index: str) -> IndexSchema:
        """The index's schema: remembered from ``ensure_index`` or read from its mapping."""
        cached = self._schemas.get(index)
        if cached is not None:
            return cached
        target = index_name(index)
        described = await self._describe(target)
        if described is None:
            raise IndexNotFound(f"vector index {index!r} does not exist (no index {target!r})")
        schema = IndexSchema(index, vector_fields_of(described[0], "knn_vector", "dimension"))
        self._schemas[index] = schema
        return schema

    # ── writes ──────────────────────────────────────────────────────

    async def _bulk(self, index: str, lines: list[dict[str, Any]]) -> None:
        async def attempt() -> None:
            response = await self._client.bulk(body=lines, params={"refresh": self._refresh})
            raise_for_bulk_errors(response, index)

        await self._call(index, attempt)

    async def upsert(self, index: str, rows: Sequence[VectorRow]) -> None:
        """Indexes rows keyed by file id (``_bulk`` ``index`` actions replace whole documents)."""
        schema = await self._schema(index)
        actions = bulk_index_actions(index_name(index), schema, rows)
        for start in range(0, len(actions), self._upsert_batch_size):
            await self._bulk(
                index, [line for pair in actions[start : start + self._upsert_batch_size] for line in pair]
            )

    async def delete(self, index: str, file_ids: Sequence[str]) -> None:
        """Removes the documents of these files; missing ids are ignored."""
        await self._schema(index)
        target = index_name(index)
        ids = list(dict.fromkeys(canonical_id(file_id) for file_id in file_ids))
        for start in range(0, len(ids), self._upsert_batch_size):
            chunk = ids[start : start + self._upsert_batch_size]
            await self._bulk(index, [{"delete": {"_index": target, "_id": i}} for i in chunk])

    # ── reads ───────────────────────────────────────────────────────

    async def _search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        target = index_name(index)
        result: dict[str, Any] = await self._call(index, lambda: self._client.search(index=target, body=body))
        return result

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
        vector = checked.vector.tolist()
        where = filter_clause(checked.dataset_version_id, file_ids)
        if not exact:
            response = await self._search(index, self._flavor.ann_body(vector_field, vector, checked, where))
            found = response["hits"]["hits"]
            if len(found) >= checked.top_k:
                return [VectorHit(hit["_id"], self._flavor.ann_cosine(float(hit["_score"]))) for hit in found]
            # Short: fewer matching documents than top_k, or a post-filter /
            # graph walk that lost some: the exact answer replaces it.
        if isinstance(self._flavor, OpenSearchFlavor):
            response = await self._search(
                index, OpenSearchFlavor.exact_body(vector_field, vector, checked, where)
            )
            return [VectorHit(hit["_id"], float(hit["_score"]) - 1.0) for hit in response["hits"]["hits"]]
        ids, vectors = await self._candidates(index, vector_field, where)
        return exact_top_k(checked.vector, ids, vectors, checked.top_k, checked.score_threshold)

    async def _candidates(
        self, index: str, vector_field: str, where: dict[str, Any]
    ) -> tuple[list[str], np.ndarray[Any, np.dtype[np.float32]]]:
        """Ids and vectors of every document the filter matches, paged by ``search_after``."""
        ids: list[str] = []
        vectors: list[list[float]] = []
        after: str | None = None
        while True:
            body: dict[str, Any] = {
                "size": SCAN_PAGE,
                "_source": [vector_field],
                "query": where,
                "sort": [{"file_id": {"order": "asc"}}],
            }
            if after is not None:
                body["search_after"] = [after]
            page = (await self._search(index, body))["hits"]["hits"]
            for hit in page:
                ids.append(hit["_id"])
                vectors.append(hit["_source"][vector_field])
            if len(page) < SCAN_PAGE:
                break
            after = str(page[-1]["sort"][0])
        if not ids:
            return ids, np.zeros((0, 1), dtype=np.float32)
        return ids, np.asarray(vectors, dtype=np.float32)

    async def count(self, index: str, filter: VectorFilter | None = None) -> int:
        """Documents in the index, optionally only those of one version (and file ids)."""
        await self._schema(index)
        target = index_name(index)
        if filter is None:
            response = await self._call(index, lambda: self._client.count(index=target))
            return int(response["count"])
        version = canonical_id(filter.dataset_version_id, "dataset version id")
        total = 0
        for chunk in id_chunks(checked_file_ids(filter)):
            total += await self._count(index, target, {"query": filter_clause(version, chunk)})
        return total

    async def _count(self, index: str, target: str, body: dict[str, Any]) -> int:
        response = await self._call(index, lambda: self._client.count(index=target, body=body))
        return int(response["count"])

    async def close(self) -> None:
        """Closes the client's connections."""
        await self._client.close()


def _classify(error: BaseException, policy: RetryPolicy) -> RetryDecision:
    """429/5xx and connection trouble retry; other rejections are final."""
    if isinstance(error, os_errors.ConnectionError):  # includes timeouts
        return RetryDecision(True, reason=type(error).__name__)
    if isinstance(error, os_errors.TransportError) and error.status_code in _RETRY_STATUSES:
        return RetryDecision(True, reason=f"HTTP {error.status_code}")
    if isinstance(error, HTTPStatusError) and error.status in _RETRY_STATUSES:
        return RetryDecision(True, reason="bulk items rejected")  # from raise_for_bulk_errors
    return RetryDecision(False, reason=type(error).__name__)


class OpenSearchVectorStore(_OpenSearchApiStore):
    """``VectorStore`` over OpenSearch with the k-NN plugin."""

    def __init__(
        self,
        settings: OpenSearchSettings,
        *,
        upsert_batch_size: int = 500,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(
            uri=settings.uri,
            username=settings.username,
            password=settings.password,
            verify_certs=settings.verify_certs,
            ca_file=settings.ca_file,
            timeout_s=settings.timeout_s,
            refresh=settings.refresh,
            flavor=OpenSearchFlavor(settings.engine),
            upsert_batch_size=upsert_batch_size,
            retry_policy=retry_policy,
        )


class LindormVectorStore(_OpenSearchApiStore):
    """``VectorStore`` over Lindorm's vector engine (OpenSearch API, ``lvector`` engine)."""

    def __init__(
        self,
        settings: LindormSettings,
        *,
        upsert_batch_size: int = 500,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(
            uri=settings.uri,
            username=settings.username,
            password=settings.password,
            verify_certs=settings.verify_certs,
            ca_file=settings.ca_file,
            timeout_s=settings.timeout_s,
            refresh=settings.refresh,
            flavor=LindormFlavor(settings.method, settings.filter_type, settings.number_of_shards),
            upsert_batch_size=upsert_batch_size,
            retry_policy=retry_policy,
        )
