"""A contract fake of Elasticsearch 8.17, OpenSearch 2.19 (k-NN plugin) and Lindorm's vector engine.

None of these servers can run on this machine, so the adapters are tested
against this real HTTP server (aiohttp, 127.0.0.1, port 0) that speaks the
subset of each vendor's REST API viewfinder uses **and checks every request
against the vendor's documentation**: unknown or misspelled keys, wrong types,
missing required fields and values outside the documented ranges are rejected
with a 400 in the servers' own error shape::

    {"error": {"root_cause": [{"type": "...", "reason": "..."}], "type": "...", "reason": "..."},
     "status": 400}

Each rejection is also appended to ``rejections``, so a test can assert that an
adapter never sent anything the real server would refuse. The fake *stores*
documents and answers kNN with real cosine arithmetic (float32 vectors,
float64 sums), so the results it returns are meaningful:

* Elasticsearch (``Dialect.ELASTICSEARCH``): ``PUT /<index>`` with
  ``dense_vector`` mappings (``dims`` ≤ 4096, ``element_type``,
  ``index``, ``similarity``, ``index_options`` of the documented types);
  ``_bulk`` NDJSON (must end with a newline); ``_search`` with the top-level
  ``knn`` section ``{field, query_vector, k, num_candidates ≥ k, ≤ 10000,
  filter, similarity}`` — filtered *during* the search, ``_score = (1 +
  cosine) / 2`` — and ``script_score`` with the Painless
  ``cosineSimilarity(params.<v>, '<field>') + 1.0`` / ``dotProduct(...)``
  functions; ``_count``; ``_mapping``; ``_settings``.
* OpenSearch (``Dialect.OPENSEARCH``): ``knn_vector`` mappings with a
  ``method`` (``hnsw`` / ``ivf``; engines ``lucene``, ``faiss``, ``nmslib``
  with their documented parameters and spaces; ``index.knn``); the ``knn``
  query ``{"<field>": {vector, k | min_score | max_distance, filter,
  method_parameters}}`` (``filter`` only for lucene and faiss; cosinesimil
  score ``(2 - d) / 2``); ``script_score`` with ``{"lang": "knn", "source":
  "knn_score", "params": {field, query_value, space_type}}`` (cosinesimil score
  ``1 + cosine``).
* Lindorm (``Dialect.LINDORM``): ``knn_vector`` with ``method.engine``
  ``lvector`` (``flat`` / ``hnsw`` / ``ivfpq`` / ``hnswq`` / ``ivfbq`` and
  their parameters), ``data_type``; the ``knn`` query ``{vector, k, filter}``
  with ``ext.lvector`` string parameters (``filter_type`` ``pre_filter`` /
  ``post_filter`` / ``efficient_filter``, ``ef_search``, ``min_score``,
  ``nprobe``, ``reorder_factor``, …); score ``1 / (1 + d)`` with ``d = 1 -
  cosine``. Without ``filter_type`` a filter is a post-filter, which can come
  back short, as the vendor's clients assume.

Limits, said plainly: it is one node without shards, replicas or refresh
delay (every write is visible at once, as with ``refresh=wait_for``); index
creation via a bulk write is off (as with ``action.auto_create_index:
false``); ANN is exact (no HNSW graph), except that ``short_ann_answers``
makes kNN answers drop their last hits so that adapters' fallbacks can be
exercised; only the query DSL viewfinder uses is understood (``bool``,
``term``, ``terms``, ``ids``, ``match_all``, ``script_score``, ``knn``), and
anything else is rejected rather than ignored.

Run standalone (for end-to-end tests)::

    python -m viewfinder_common.testing.fake_search_engine --dialect opensearch
    # prints "FAKE_SEARCH_ENGINE_URL=http://127.0.0.1:<port>" once it listens
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from aiohttp import web

MAX_RESULT_WINDOW: Final = 10_000
MAX_TERMS: Final = 65_536
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.+]*$")
_PAINLESS_VECTOR = re.compile(
    r"^\s*(cosineSimilarity|dotProduct)\(\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*,\s*"
    r"'([A-Za-z_][A-Za-z0-9_.]*)'\s*\)\s*\+\s*1(?:\.0)?\s*$"
)
_SEARCH_PARAMS: Final = frozenset(
    {
        "typed_keys",
        "request_cache",
        "timeout",
        "filter_path",
        "track_total_hits",
        "rest_total_hits_as_int",
        "pretty",
    }
)
_BULK_PARAMS: Final = frozenset(
    {"refresh", "timeout", "routing", "pipeline", "require_alias", "pretty", "filter_path"}
)


class Dialect(StrEnum):
    """Which vendor's API the fake speaks."""

    ELASTICSEARCH = "elasticsearch"
    OPENSEARCH = "opensearch"
    LINDORM = "lindorm"


class ApiError(Exception):
    """An error response; ``contract`` marks rejections of requests the vendor's docs do not allow."""

    def __init__(self, status: int, error_type: str, reason: str, *, contract: bool = True) -> None:
        super().__init__(f"{error_type}: {reason}")
        self.status = status
        self.error_type = error_type
        self.reason = reason
        self.contract = contract


def _violation(reason: str, error_type: str = "x_content_parse_exception") -> ApiError:
    return ApiError(400, error_type, reason)


@dataclass
class RecordedRequest:
    """One request the fake received (bodies parsed: JSON, or a list for NDJSON)."""

    method: str
    path: str
    params: dict[str, str]
    body: Any


@dataclass
class FakeIndex:
    """An index: its settings (dotted keys), mapping and documents by id."""

    name: str
    settings: dict[str, Any]
    mappings: dict[str, Any]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def properties(self) -> dict[str, Any]:
        props: dict[str, Any] = self.mappings.setdefault("properties", {})
        return props


# ── small validation helpers ──────────────────────────────────────────


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _violation(f"[{where}] must be an object, got {type(value).__name__}")
    return value


def _only(
    obj: Mapping[str, Any],
    allowed: frozenset[str] | set[str],
    where: str,
    error_type: str = "x_content_parse_exception",
) -> None:
    for key in obj:
        if key not in allowed:
            raise _violation(f"[{where}] unknown field [{key}]", error_type)


def _int(value: Any, where: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _violation(f"[{where}] must be an integer, got {value!r}")
    if low is not None and value < low:
        raise _violation(f"[{where}] must be >= {low}, got {value}", "illegal_argument_exception")
    if high is not None and value > high:
        raise _violation(f"[{where}] must be <= {high}, got {value}", "illegal_argument_exception")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _violation(f"[{where}] must be a finite number, got {value!r}")
    return float(value)


def _vector(value: Any, dims: int, where: str) -> npt.NDArray[np.float32]:
    if not isinstance(value, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in value
    ):
        raise _violation(f"[{where}] must be an array of finite numbers")
    if len(value) != dims:
        raise _violation(
            f"[{where}] has [{len(value)}] dimensions, the field is defined with [{dims}]",
            "illegal_argument_exception",
        )
    return np.asarray(value, dtype=np.float32)


def _bool_like(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    raise _violation(f"[{where}] must be a boolean, got {value!r}", "illegal_argument_exception")


def _flatten_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_settings(value, name + "."))
        else:
            flat[name] = value
    return {(k if k.startswith("index.") else "index." + k): v for k, v in flat.items()}


def _cosine(matrix: npt.NDArray[np.float32], query: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    rows = matrix.astype(np.float64)
    q = query.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        result: npt.NDArray[np.float64] = np.where(norms > 0, rows @ q / norms, 0.0)
    return result


def _as_f32(value: float) -> float:
    """A score as the engines report it (32-bit float)."""
    return float(np.float32(value))


# ── the fake ──────────────────────────────────────────────────────────


class FakeSearchEngine:
    """The fake server; use ``async with FakeSearchEngine(dialect) as fake: fake.url``."""

    def __init__(
        self,
        dialect: Dialect,
        *,
        username: str = "viewfinder",
        password: str = "contract-fake-password",  # noqa: S107 (a test server's own password)
        api_key: str | None = None,
    ) -> None:
        self.dialect = dialect
        self.username = username
        self.password = password
        self.api_key = api_key
        self.indices: dict[str, FakeIndex] = {}
        self.requests: list[RecordedRequest] = []
        self.rejections: list[str] = []
        # Knobs a test may change while the server runs.
        self.short_ann_answers = False
        self.fail_next: list[tuple[int, str]] = []  # (status, error type) for the next requests
        self.retry_after_s: float | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def version(self) -> str:
        """The version the fake claims to be."""
        return {Dialect.ELASTICSEARCH: "8.17.0", Dialect.OPENSEARCH: "2.19.0", Dialect.LINDORM: "3.10.15"}[
            self.dialect
        ]

    async def start(self) -> str:
        """Starts listening on 127.0.0.1 (a free port); returns the base URL."""
        app = web.Application(client_max_size=256 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        """Stops the server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSearchEngine:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ── HTTP plumbing ───────────────────────────────────────────────

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            return user == self.username and secret == self.password
        if header.startswith("ApiKey ") and self.api_key is not None:
            return header[7:] == self.api_key
        return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        params = dict(request.query)
        body: Any = None
        try:
            if not self._authorized(request):
                raise ApiError(
                    401,
                    "security_exception",
                    f"missing authentication credentials for REST request [{request.path}]",
                    contract=False,
                )
            if self.fail_next:
                status, error_type = self.fail_next.pop(0)
                raise ApiError(status, error_type, "injected failure", contract=False)
            segments = [s for s in request.path.split("/") if s]
            if segments and segments[-1] == "_bulk":
                body = self._parse_ndjson(request, raw)
            elif raw:
                if request.content_type not in ("application/json", "application/x-ndjson"):
                    raise ApiError(
                        406,
                        "media_type_header_exception",
                        f"Content-Type header [{request.content_type}] is not supported",
                    )
                try:
                    body = json.loads(raw)
                except ValueError as err:
                    raise _violation(f"request body is not JSON: {err}", "parsing_exception") from err
            self.requests.append(RecordedRequest(request.method, request.path, params, body))
            result, status = self._route(request.method, segments, params, body)
        except ApiError as err:
            if err.contract:
                self.rejections.append(f"{request.method} {request.path}: {err.error_type}: {err.reason}")
            payload = {
                "error": {
                    "root_cause": [{"type": err.error_type, "reason": err.reason}],
                    "type": err.error_type,
                    "reason": err.reason,
                },
                "status": err.status,
            }
            headers = {}
            if err.status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="security" charset="UTF-8"'
            if err.status == 429 and self.retry_after_s is not None:
                headers["Retry-After"] = str(self.retry_after_s)
            return web.json_response(payload, status=err.status, headers=headers)
        if request.method == "HEAD":
            return web.Response(status=status)
        return web.json_response(result, status=status)

    def _parse_ndjson(self, request: web.Request, raw: bytes) -> list[Any]:
        if request.content_type not in ("application/x-ndjson", "application/json"):
            raise ApiError(
                406,
                "media_type_header_exception",
                f"Content-Type header [{request.content_type}] is not supported",
            )
        text = raw.decode()
        if not text.endswith("\n"):
            raise _violation(
                "The bulk request must be terminated by a newline [\\n]", "illegal_argument_exception"
            )
        lines = []
        for number, line in enumerate(text.split("\n")[:-1], start=1):
            try:
                lines.append(json.loads(line))
            except ValueError as err:
                raise _violation(f"line {number} of the bulk body is not JSON", "parsing_exception") from err
        return lines

    def _route(  # noqa: PLR0911, PLR0912 (a routing table: one branch per endpoint)
        self, method: str, segments: list[str], params: dict[str, str], body: Any
    ) -> tuple[Any, int]:
        if not segments:
            if method in ("GET", "HEAD"):
                return self._info(), 200
        elif segments == ["_bulk"] and method in ("POST", "PUT"):
            return self._bulk(None, params, body), 200
        elif len(segments) == 1 and not segments[0].startswith("_"):
            name = segments[0]
            if method == "PUT":
                return self._create(name, params, body), 200
            if method == "HEAD":
                return None, 200 if name in self.indices else 404
            if method == "DELETE":
                self._index(name)
                del self.indices[name]
                return {"acknowledged": True}, 200
            if method == "GET":
                index = self._index(name)
                return {name: {"mappings": index.mappings, "settings": self._settings_view(index)}}, 200
        elif len(segments) == 2 and not segments[0].startswith("_"):
            name, action = segments
            if action == "_bulk" and method in ("POST", "PUT"):
                return self._bulk(name, params, body), 200
            if action == "_search" and method in ("GET", "POST"):
                return self._search(self._index(name), params, body), 200
            if action == "_count" and method in ("GET", "POST"):
                return self._count(self._index(name), params, body), 200
            if action == "_mapping" and method == "GET":
                return {name: {"mappings": self._index(name).mappings}}, 200
            if action == "_settings" and method == "GET":
                return {name: {"settings": self._settings_view(self._index(name))}}, 200
            if action == "_refresh" and method in ("GET", "POST"):
                self._index(name)
                return {"_shards": {"total": 1, "successful": 1, "failed": 0}}, 200
        raise ApiError(
            405 if segments else 400,
            "illegal_argument_exception",
            f"no handler found for uri [/{'/'.join(segments)}] and method [{method}]",
        )

    def _index(self, name: str) -> FakeIndex:
        index = self.indices.get(name)
        if index is None:
            raise ApiError(404, "index_not_found_exception", f"no such index [{name}]", contract=False)
        return index

    def _info(self) -> dict[str, Any]:
        version: dict[str, Any] = {"number": self.version}
        if self.dialect is Dialect.OPENSEARCH:
            version["distribution"] = "opensearch"
        return {
            "name": "contract-fake",
            "cluster_name": f"fake-{self.dialect.value}",
            "version": version,
            "tagline": "You Know, for Search"
            if self.dialect is Dialect.ELASTICSEARCH
            else "The OpenSearch Project",
        }

    @staticmethod
    def _settings_view(index: FakeIndex) -> dict[str, Any]:
        """Settings as the servers return them: nested, values as strings."""
        nested: dict[str, Any] = {}
        for key, value in index.settings.items():
            node = nested
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = str(value).lower() if isinstance(value, bool) else str(value)
        return nested

    # ── index creation ──────────────────────────────────────────────

    def _create(self, name: str, params: dict[str, str], body: Any) -> dict[str, Any]:
        if not _INDEX_NAME.match(name) or name.lower() != name:
            raise _violation(
                f"Invalid index name [{name}], must be lowercase", "invalid_index_name_exception"
            )
        if name in self.indices:
            raise ApiError(
                400, "resource_already_exists_exception", f"index [{name}] already exists", contract=False
            )
        _only(
            params,
            {"timeout", "master_timeout", "wait_for_active_shards", "pretty"},
            "create index params",
            "illegal_argument_exception",
        )
        body = _object(body or {}, "create index")
        _only(body, frozenset({"settings", "mappings", "aliases"}), "create index", "parsing_exception")
        settings = _flatten_settings(_object(body.get("settings", {}), "settings"))
        self._check_settings(settings)
        mappings = _object(body.get("mappings", {}), "mappings")
        _only(
            mappings, frozenset({"properties", "dynamic", "_source"}), "mappings", "mapper_parsing_exception"
        )
        if "dynamic" in mappings and mappings["dynamic"] not in (
            True,
            False,
            "true",
            "false",
            "strict",
            "runtime",
        ):
            raise _violation(f"unknown dynamic value [{mappings['dynamic']}]", "mapper_parsing_exception")
        if "_source" in mappings:
            source = _object(mappings["_source"], "_source")
            _only(
                source,
                frozenset({"enabled", "includes", "excludes", "mode"}),
                "_source",
                "mapper_parsing_exception",
            )
        for field_name, spec in _object(mappings.get("properties", {}), "properties").items():
            self._check_field(field_name, _object(spec, f"properties.{field_name}"), settings)
        self.indices[name] = FakeIndex(name, settings, json.loads(json.dumps(mappings)))
        return {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _check_settings(self, settings: Mapping[str, Any]) -> None:
        allowed = {
            "index.number_of_shards",
            "index.number_of_replicas",
            "index.refresh_interval",
            "index.max_result_window",
        }
        if self.dialect is Dialect.OPENSEARCH:
            allowed |= {"index.knn", "index.knn.algo_param.ef_search"}
        if self.dialect is Dialect.LINDORM:
            allowed |= {
                "index.knn",
                "index.knn_routing",
                "index.knn.offline.construction",
                "index.origin.vector_source_only_includes.enabled",
            }
        for key, value in settings.items():
            if key not in allowed:
                raise _violation(
                    f"unknown setting [{key}] please check that any required plugins are installed, "
                    "or check the breaking changes documentation for removed settings",
                    "illegal_argument_exception",
                )
            if key in {"index.number_of_shards", "index.number_of_replicas"}:
                number = int(value) if isinstance(value, str) and value.isdigit() else value
                _int(number, key, 0 if key.endswith("replicas") else 1)
            if key in {"index.knn", "index.knn_routing", "index.knn.offline.construction"}:
                _bool_like(value, key)

    def _check_field(self, name: str, spec: dict[str, Any], settings: Mapping[str, Any]) -> None:
        kind = spec.get("type")
        where = f"mapper [{name}] of type [{kind}]"

        def only(allowed: set[str]) -> None:
            for key in spec:
                if key not in allowed:
                    raise _violation(f"unknown parameter [{key}] on {where}", "mapper_parsing_exception")

        if kind == "keyword":
            only({"type", "index", "doc_values", "ignore_above", "store", "null_value", "normalizer"})
        elif kind in {"date", "long", "integer", "float", "double", "boolean"}:
            only({"type", "index", "doc_values", "format", "store", "null_value"})
        elif kind == "text":
            only({"type", "index", "analyzer", "search_analyzer", "store"})
        elif kind == "dense_vector" and self.dialect is Dialect.ELASTICSEARCH:
            self._check_dense_vector(spec, where, only)
        elif kind == "knn_vector" and self.dialect is Dialect.OPENSEARCH:
            self._check_opensearch_knn_vector(spec, where, only, settings)
        elif kind == "knn_vector" and self.dialect is Dialect.LINDORM:
            self._check_lindorm_knn_vector(spec, where, only, settings)
        else:
            raise _violation(
                f"No handler for type [{kind}] declared on field [{name}]", "mapper_parsing_exception"
            )

    @staticmethod
    def _check_dense_vector(  # noqa: PLR0912 (one check per documented mapping parameter)
        spec: dict[str, Any], where: str, only: Callable[[set[str]], None]
    ) -> None:
        only({"type", "dims", "element_type", "index", "similarity", "index_options"})
        _int(spec.get("dims"), f"{where} dims", 1, 4096)
        element = spec.get("element_type", "float")
        if element not in {"float", "byte", "bit"}:
            raise _violation(f"invalid element_type [{element}] on {where}", "mapper_parsing_exception")
        indexed = spec.get("index", True)
        if not isinstance(indexed, bool):
            raise _violation(f"[index] on {where} must be a boolean", "mapper_parsing_exception")
        if "similarity" in spec:
            if not indexed:
                raise _violation(
                    f"Field [similarity] requires field [index] to be configured and set to true on {where}",
                    "mapper_parsing_exception",
                )
            if spec["similarity"] not in {"l2_norm", "dot_product", "cosine", "max_inner_product"}:
                raise _violation(
                    f"invalid similarity [{spec['similarity']}] on {where}", "mapper_parsing_exception"
                )
        if "index_options" in spec:
            options = _object(spec["index_options"], f"{where} index_options")
            option_type = options.get("type")
            hnsw_types = {"hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw"}
            flat_types = {"flat", "int8_flat", "int4_flat", "bbq_flat"}
            if option_type not in hnsw_types | flat_types:
                raise _violation(
                    f"[index_options] requires a known [type], got [{option_type}] on {where}",
                    "mapper_parsing_exception",
                )
            allowed = {"type"}
            if option_type in hnsw_types:
                allowed |= {"m", "ef_construction"}
            if option_type in {"int8_hnsw", "int4_hnsw", "int8_flat", "int4_flat"}:
                allowed |= {"confidence_interval"}
            for key in options:
                if key not in allowed:
                    raise _violation(
                        f"unknown parameter [index_options.{key}] on {where}", "mapper_parsing_exception"
                    )
            if "m" in options:
                _int(options["m"], f"{where} index_options.m", 2, 512)
            if "ef_construction" in options:
                _int(options["ef_construction"], f"{where} index_options.ef_construction", 1, 3200)
            if option_type != "hnsw" and element != "float":
                raise _violation(
                    f"[index_options.type={option_type}] needs float elements on {where}",
                    "mapper_parsing_exception",
                )

    @staticmethod
    def _check_opensearch_knn_vector(
        spec: dict[str, Any], where: str, only: Callable[[set[str]], None], settings: Mapping[str, Any]
    ) -> None:
        only(
            {
                "type",
                "dimension",
                "data_type",
                "space_type",
                "method",
                "model_id",
                "mode",
                "compression_level",
            }
        )
        if "model_id" not in spec:
            _int(spec.get("dimension"), f"{where} dimension", 1, 16_000)
        if spec.get("data_type", "float") not in {"float", "byte", "binary"}:
            raise _violation(
                f"invalid data_type [{spec.get('data_type')}] on {where}", "mapper_parsing_exception"
            )
        if "method" not in spec:
            return
        if not _bool_like(settings.get("index.knn", False), "index.knn"):
            raise _violation(
                f"a method on {where} needs the index setting index.knn: true", "mapper_parsing_exception"
            )
        method = _object(spec["method"], f"{where} method")
        for key in method:
            if key not in {"name", "space_type", "engine", "parameters"}:
                raise _violation(f"unknown parameter [method.{key}] on {where}", "mapper_parsing_exception")
        name = method.get("name")
        engine = method.get("engine", "faiss")
        space = method.get("space_type", spec.get("space_type", "l2"))
        supported: dict[tuple[str, str], tuple[set[str], set[str]]] = {
            ("lucene", "hnsw"): ({"l2", "cosinesimil", "innerproduct"}, {"m", "ef_construction"}),
            ("faiss", "hnsw"): (
                {"l2", "innerproduct", "hamming", "cosinesimil"},
                {"m", "ef_construction", "ef_search", "encoder"},
            ),
            ("faiss", "ivf"): (
                {"l2", "innerproduct", "hamming", "cosinesimil"},
                {"nlist", "nprobes", "encoder"},
            ),
            ("nmslib", "hnsw"): (
                {"l2", "innerproduct", "cosinesimil", "l1", "linf"},
                {"m", "ef_construction", "ef_search"},
            ),
        }
        if (engine, name) not in supported:
            raise _violation(
                f"engine [{engine}] does not support method [{name}] on {where}", "mapper_parsing_exception"
            )
        spaces, parameters = supported[(str(engine), str(name))]
        if space not in spaces:
            raise _violation(
                f"engine [{engine}] does not support space_type [{space}] on {where}",
                "mapper_parsing_exception",
            )
        for key, value in _object(method.get("parameters") or {}, f"{where} method.parameters").items():
            if key not in parameters:
                raise _violation(
                    f"Invalid parameter [{key}] for method [{name}] of engine [{engine}] on {where}",
                    "mapper_parsing_exception",
                )
            if key in {"m", "ef_construction", "ef_search", "nlist", "nprobes"}:
                _int(value, f"{where} method.parameters.{key}", 1)

    @staticmethod
    def _check_lindorm_knn_vector(
        spec: dict[str, Any], where: str, only: Callable[[set[str]], None], settings: Mapping[str, Any]
    ) -> None:
        only({"type", "dimension", "data_type", "method"})
        _int(spec.get("dimension"), f"{where} dimension", 1)
        if spec.get("data_type", "float") not in {"float", "float16", "binary"}:
            raise _violation(
                f"invalid data_type [{spec.get('data_type')}] on {where}", "mapper_parsing_exception"
            )
        if not _bool_like(settings.get("index.knn", False), "index.knn"):
            raise _violation(f"{where} needs the index setting index.knn: true", "mapper_parsing_exception")
        method = _object(spec.get("method"), f"{where} method")
        for key in method:
            if key not in {"engine", "name", "space_type", "parameters"}:
                raise _violation(f"unknown parameter [method.{key}] on {where}", "mapper_parsing_exception")
        if method.get("engine") != "lvector":
            raise _violation(
                f"method.engine must be [lvector] on {where}, got [{method.get('engine')}]",
                "mapper_parsing_exception",
            )
        parameters_by_name = {
            "flat": set(),
            "hnsw": {"m", "ef_construction"},
            "hnswq": {"m", "ef_construction"},
            "ivfpq": {
                "m",
                "nlist",
                "centroids_use_hnsw",
                "centroids_hnsw_m",
                "centroids_hnsw_ef_construct",
                "centroids_hnsw_ef_search",
            },
            "ivfbq": {
                "nlist",
                "exbits",
                "centroids_use_hnsw",
                "centroids_hnsw_m",
                "centroids_hnsw_ef_construct",
                "centroids_hnsw_ef_search",
            },
        }
        name = method.get("name")
        if name not in parameters_by_name:
            raise _violation(f"unknown method.name [{name}] on {where}", "mapper_parsing_exception")
        if method.get("space_type", "l2") not in {"l2", "innerproduct", "cosinesimil", "hamming"}:
            raise _violation(
                f"unknown method.space_type [{method.get('space_type')}] on {where}",
                "mapper_parsing_exception",
            )
        for key, value in _object(method.get("parameters") or {}, f"{where} method.parameters").items():
            if key not in parameters_by_name[name]:
                raise _violation(
                    f"unknown parameter [method.parameters.{key}] for [{name}] on {where}",
                    "mapper_parsing_exception",
                )
            if key != "centroids_use_hnsw":
                _int(value, f"{where} method.parameters.{key}", 1)

    # ── documents ───────────────────────────────────────────────────

    def _bulk(  # noqa: PLR0912 (one check per documented bulk rule)
        self, path_index: str | None, params: dict[str, str], lines: list[Any]
    ) -> dict[str, Any]:
        for key in params:
            if key not in _BULK_PARAMS:
                raise _violation(
                    f"request [/_bulk] contains unrecognized parameter: [{key}]", "illegal_argument_exception"
                )
        if params.get("refresh", "") not in ("", "true", "false", "wait_for"):
            raise _violation(
                f"unknown value for refresh: [{params['refresh']}]", "illegal_argument_exception"
            )
        items = []
        errors = False
        position = 0
        while position < len(lines):
            action_line = lines[position]
            position += 1
            if not isinstance(action_line, dict) or len(action_line) != 1:
                raise _violation(
                    f"Malformed action/metadata line [{position}], expected a single action",
                    "illegal_argument_exception",
                )
            action, meta = next(iter(action_line.items()))
            if action not in {"index", "create", "update", "delete"}:
                raise _violation(
                    f"Malformed action/metadata line [{position}], unknown action [{action}]",
                    "illegal_argument_exception",
                )
            meta = _object(meta, f"bulk line {position} {action}")
            for key in meta:
                if key not in {
                    "_index",
                    "_id",
                    "routing",
                    "version",
                    "version_type",
                    "if_seq_no",
                    "if_primary_term",
                    "pipeline",
                    "require_alias",
                    "dynamic_templates",
                }:
                    raise _violation(
                        f"Action/metadata line [{position}] contains an unknown parameter [{key}]",
                        "illegal_argument_exception",
                    )
            index_name = meta.get("_index", path_index)
            if index_name is None:
                raise _violation(
                    f"Validation Failed: 1: index is missing (bulk line {position})",
                    "action_request_validation_exception",
                )
            doc_id = meta.get("_id")
            if doc_id is not None and not isinstance(doc_id, str):
                raise _violation(f"[_id] must be a string on bulk line {position}")
            source = None
            if action != "delete":
                if position >= len(lines):
                    raise _violation(
                        f"bulk line {position}: {action} needs a document line", "illegal_argument_exception"
                    )
                source = _object(lines[position], f"bulk line {position + 1}")
                position += 1
            elif doc_id is None:
                raise _violation(
                    f"Validation Failed: 1: id is missing (bulk line {position})",
                    "action_request_validation_exception",
                )
            if action == "update":
                raise _violation(
                    "the contract fake does not implement bulk update actions", "illegal_argument_exception"
                )
            item = self._bulk_item(action, index_name, doc_id, source)
            errors = errors or "error" in item
            items.append({action: item})
        return {"took": 1, "errors": errors, "items": items}

    def _bulk_item(
        self, action: str, index_name: str, doc_id: str | None, source: dict[str, Any] | None
    ) -> dict[str, Any]:
        index = self.indices.get(index_name)
        base: dict[str, Any] = {"_index": index_name, "_id": doc_id}
        if index is None:
            base.update(
                status=404,
                error={"type": "index_not_found_exception", "reason": f"no such index [{index_name}]"},
            )
            return base
        if action == "delete":
            assert doc_id is not None
            if index.docs.pop(doc_id, None) is None:
                return {
                    **base,
                    "result": "not_found",
                    "status": 404,
                    "_version": index.versions.get(doc_id, 1),
                }
            index.versions[doc_id] = index.versions.get(doc_id, 0) + 1
            return {**base, "result": "deleted", "status": 200, "_version": index.versions[doc_id]}
        assert source is not None
        try:
            self._check_document(index, source)
        except ApiError as err:
            # An item failure: the request itself was well formed.
            return {**base, "status": err.status, "error": {"type": err.error_type, "reason": err.reason}}
        if doc_id is None:
            doc_id = f"auto-{len(index.docs)}-{index.versions.get('_auto', 0)}"
            base["_id"] = doc_id
        if action == "create" and doc_id in index.docs:
            return {
                **base,
                "status": 409,
                "error": {"type": "version_conflict_engine_exception", "reason": "document already exists"},
            }
        existed = doc_id in index.docs
        index.docs[doc_id] = json.loads(json.dumps(source))
        index.versions[doc_id] = index.versions.get(doc_id, 0) + 1
        return {
            **base,
            "result": "updated" if existed else "created",
            "status": 200 if existed else 201,
            "_version": index.versions[doc_id],
        }

    def _check_document(self, index: FakeIndex, source: dict[str, Any]) -> None:
        dynamic = index.mappings.get("dynamic", True)
        for key, value in source.items():
            spec = index.properties.get(key)
            if spec is None:
                if dynamic == "strict":
                    raise ApiError(
                        400,
                        "strict_dynamic_mapping_exception",
                        f"[1:2] mapping set to strict, dynamic introduction of [{key}] within [_doc] is not allowed",
                        contract=False,
                    )
                continue
            kind = spec.get("type")
            if kind == "keyword" and not isinstance(value, str | int | float | bool):
                raise ApiError(
                    400,
                    "document_parsing_exception",
                    f"failed to parse field [{key}] of type [keyword]",
                    contract=False,
                )
            if kind in {"dense_vector", "knn_vector"}:
                dims = int(spec.get("dims", spec.get("dimension", 0)))
                try:
                    vector = _vector(value, dims, key)
                except ApiError as err:
                    raise ApiError(
                        400,
                        "document_parsing_exception",
                        f"failed to parse field [{key}]: {err.reason}",
                        contract=False,
                    ) from err
                if not np.any(vector) and self._space(spec) in {"cosine", "cosinesimil"}:
                    raise ApiError(
                        400,
                        "document_parsing_exception",
                        f"The [cosine] similarity does not support vectors with zero magnitude. Preview of invalid vector: {value[:5]}",
                        contract=False,
                    )

    @staticmethod
    def _space(spec: Mapping[str, Any]) -> str:
        if spec.get("type") == "dense_vector":
            return str(spec.get("similarity", "cosine"))
        method = spec.get("method") or {}
        return str(method.get("space_type", spec.get("space_type", "l2")))

    # ── search ──────────────────────────────────────────────────────

    def _count(self, index: FakeIndex, params: dict[str, str], body: Any) -> dict[str, Any]:
        for key in params:
            if key not in {"pretty", "routing", "ignore_unavailable", "allow_no_indices"}:
                raise _violation(
                    f"request [/{index.name}/_count] contains unrecognized parameter: [{key}]",
                    "illegal_argument_exception",
                )
        ids = list(index.docs)
        mask = np.ones(len(ids), dtype=bool)
        if body is not None:
            body = _object(body, "count")
            _only(body, frozenset({"query"}), "count", "parsing_exception")
            if "query" in body:
                mask, _ = self._query(index, ids, body["query"], "query")
        return {"count": int(mask.sum()), "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}

    def _search(  # noqa: PLR0912, PLR0915 (the search body's documented parts, in order)
        self, index: FakeIndex, params: dict[str, str], body: Any
    ) -> dict[str, Any]:
        for key in params:
            if key not in _SEARCH_PARAMS:
                raise _violation(
                    f"request [/{index.name}/_search] contains unrecognized parameter: [{key}]",
                    "illegal_argument_exception",
                )
        body = _object(body or {}, "search")
        allowed = {
            "query",
            "size",
            "from",
            "_source",
            "sort",
            "search_after",
            "min_score",
            "track_scores",
            "track_total_hits",
            "timeout",
            "explain",
            "version",
        }
        if self.dialect is Dialect.ELASTICSEARCH:
            allowed |= {"knn", "fields"}
        if self.dialect is Dialect.LINDORM:
            allowed |= {"ext"}
        for key in body:
            if key not in allowed:
                raise _violation(f"Unknown key for a START_OBJECT in [{key}].", "parsing_exception")
        size = _int(body.get("size", 10), "size", 0)
        start = _int(body.get("from", 0), "from", 0)
        if size + start > MAX_RESULT_WINDOW:
            raise _violation(
                f"Result window is too large, from + size must be less than or equal to: [{MAX_RESULT_WINDOW}] but was [{size + start}]",
                "illegal_argument_exception",
            )
        lvector = self._lvector_ext(body.get("ext")) if "ext" in body else {}
        ids = list(index.docs)
        if "knn" in body and "query" in body:
            raise _violation(
                "the contract fake does not combine knn with query", "illegal_argument_exception"
            )
        if "knn" in body:
            mask, scores = self._es_knn(index, ids, body["knn"])
        elif "query" in body:
            mask, scores = self._query(index, ids, body["query"], "query", lvector=lvector)
        else:
            mask, scores = np.ones(len(ids), dtype=bool), np.ones(len(ids))
        if "min_score" in body:
            mask &= scores >= _number(body["min_score"], "min_score")
        if "min_score" in lvector:
            mask &= scores >= float(lvector["min_score"])
        order = [i for i in range(len(ids)) if mask[i]]
        sort_spec = self._sort_spec(index, body.get("sort"))
        track_scores = bool(body.get("track_scores", False))
        if sort_spec:
            order.sort(key=self._sort_key(index, ids, scores, sort_spec))
        else:
            order.sort(key=lambda i: (-scores[i], ids[i]))
        if "search_after" in body:
            after = body["search_after"]
            if not sort_spec or not isinstance(after, list) or len(after) != len(sort_spec):
                raise _violation(
                    "search_after needs a sort with as many values", "illegal_argument_exception"
                )
            key_of = self._sort_key(index, ids, scores, sort_spec)
            after_key = tuple(
                (-float(v) if direction == "desc" else float(v))
                if name == "_score"
                else (v if direction == "asc" else _Reversed(v))
                for (name, direction), v in zip(sort_spec, after, strict=True)
            )
            order = [i for i in order if key_of(i) > after_key]
        page = order[start : start + size]
        hits = []
        for i in page:
            hit: dict[str, Any] = {"_index": index.name, "_id": ids[i]}
            hit["_score"] = None if sort_spec and not track_scores else _as_f32(scores[i])
            source = self._source_filter(index.docs[ids[i]], body.get("_source", True))
            if source is not None:
                hit["_source"] = source
            if sort_spec:
                hit["sort"] = [
                    _as_f32(scores[i]) if name == "_score" else index.docs[ids[i]].get(name)
                    for name, _ in sort_spec
                ]
            hits.append(hit)
        max_score = max((scores[i] for i in order), default=None)
        return {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": len(order), "relation": "eq"},
                "max_score": None if max_score is None or sort_spec else _as_f32(max_score),
                "hits": hits,
            },
        }

    def _lvector_ext(self, ext: Any) -> dict[str, str]:
        ext = _object(ext, "ext")
        _only(ext, frozenset({"lvector"}), "ext", "parsing_exception")
        lvector = _object(ext.get("lvector", {}), "ext.lvector")
        documented = {
            "min_score", "filter_type", "ef_search", "nprobe", "reorder_factor", "client_refactor",
            "k_expand_scope", "hybrid_search_type", "rrf_rank_constant", "rrf_knn_weight_factor", "rrf_window_size",
        }  # fmt: skip
        for key, value in lvector.items():
            if key not in documented:
                raise _violation(f"[ext.lvector] unknown parameter [{key}]", "illegal_argument_exception")
            if not isinstance(value, str):
                raise _violation(
                    f"[ext.lvector.{key}] must be a string, got {value!r}", "illegal_argument_exception"
                )
        if lvector.get("filter_type", "post_filter") not in {"pre_filter", "post_filter", "efficient_filter"}:
            raise _violation(
                f"[ext.lvector.filter_type] unknown value [{lvector['filter_type']}]",
                "illegal_argument_exception",
            )
        for key in (
            "ef_search",
            "nprobe",
            "reorder_factor",
            "k_expand_scope",
            "rrf_rank_constant",
            "rrf_window_size",
        ):
            if key in lvector and not lvector[key].isdigit():
                raise _violation(
                    f"[ext.lvector.{key}] must be a positive integer string, got [{lvector[key]}]",
                    "illegal_argument_exception",
                )
        if "min_score" in lvector:
            try:
                float(lvector["min_score"])
            except ValueError as err:
                raise _violation(
                    f"[ext.lvector.min_score] must be a number string, got [{lvector['min_score']}]",
                    "illegal_argument_exception",
                ) from err
        if "client_refactor" in lvector and lvector["client_refactor"] not in {
            "true",
            "false",
            "True",
            "False",
        }:
            raise _violation(
                "[ext.lvector.client_refactor] must be true or false", "illegal_argument_exception"
            )
        return dict(lvector)

    def _sort_spec(self, index: FakeIndex, sort: Any) -> list[tuple[str, str]]:
        if sort is None:
            return []
        entries = sort if isinstance(sort, list) else [sort]
        spec = []
        for entry in entries:
            if isinstance(entry, str):
                name, direction = entry, "desc" if entry == "_score" else "asc"
            else:
                sort_entry = _object(entry, "sort")
                if len(sort_entry) != 1:
                    raise _violation("[sort] entries name one field each", "parsing_exception")
                name, options = next(iter(sort_entry.items()))
                if isinstance(options, str):
                    direction = options
                else:
                    options = _object(options, f"sort.{name}")
                    _only(options, frozenset({"order", "missing", "unmapped_type", "mode"}), f"sort.{name}")
                    direction = options.get("order", "desc" if name == "_score" else "asc")
            if direction not in ("asc", "desc"):
                raise _violation(f"[sort] unknown order [{direction}]", "parsing_exception")
            if name != "_score":
                field_spec = index.properties.get(name)
                if field_spec is None or field_spec.get("type") not in {
                    "keyword",
                    "date",
                    "long",
                    "integer",
                    "float",
                    "double",
                }:
                    raise _violation(
                        f"No mapping found for [{name}] in order to sort on, or it cannot be sorted",
                        "illegal_argument_exception",
                    )
            spec.append((name, direction))
        return spec

    @staticmethod
    def _sort_key(
        index: FakeIndex, ids: list[str], scores: npt.NDArray[np.float64], spec: list[tuple[str, str]]
    ) -> Callable[[int], tuple[Any, ...]]:
        def key(i: int) -> tuple[Any, ...]:
            parts: list[Any] = []
            for name, direction in spec:
                if name == "_score":
                    score = float(np.float32(scores[i]))
                    parts.append(-score if direction == "desc" else score)
                else:
                    value = index.docs[ids[i]].get(name)
                    parts.append(value if direction == "asc" else _Reversed(value))
            return tuple(parts)

        return key

    @staticmethod
    def _source_filter(document: dict[str, Any], source: Any) -> dict[str, Any] | None:
        if source is False:
            return None
        if source is True:
            return document
        if isinstance(source, str):
            source = [source]
        if isinstance(source, list):
            if not all(isinstance(s, str) for s in source):
                raise _violation("[_source] must list field names")
            return {k: v for k, v in document.items() if k in source}
        options = _object(source, "_source")
        _only(options, frozenset({"includes", "excludes"}), "_source")
        includes = options.get("includes")
        excludes = set(options.get("excludes", []))
        return {
            k: v for k, v in document.items() if (includes is None or k in includes) and k not in excludes
        }

    # ── query DSL ───────────────────────────────────────────────────

    def _query(  # noqa: PLR0911 (one return per query type)
        self,
        index: FakeIndex,
        ids: list[str],
        query: Any,
        where: str,
        *,
        lvector: Mapping[str, str] | None = None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """(matches, scores) of a query over the index's documents, in ``ids`` order."""
        query = _object(query, where)
        if len(query) != 1:
            raise _violation(f"[{where}] malformed query, expected one query type", "parsing_exception")
        kind, spec = next(iter(query.items()))
        n = len(ids)
        ones = np.ones(n)
        if kind == "match_all":
            _only(_object(spec, kind), frozenset({"boost"}), kind, "parsing_exception")
            return np.ones(n, dtype=bool), ones
        if kind == "term":
            name, value = self._single_field(spec, kind)
            if isinstance(value, dict):
                _only(
                    value,
                    frozenset({"value", "boost", "case_insensitive"}),
                    f"term.{name}",
                    "parsing_exception",
                )
                value = value.get("value")
            self._filterable(index, name)
            return np.array([index.docs[i].get(name) == value for i in ids], dtype=bool), ones
        if kind == "terms":
            spec = _object(spec, kind)
            fields = [k for k in spec if k != "boost"]
            if len(fields) != 1:
                raise _violation("[terms] query requires one field", "parsing_exception")
            values = spec[fields[0]]
            if not isinstance(values, list):
                raise _violation("[terms] query values must be an array", "parsing_exception")
            if len(values) > MAX_TERMS:
                raise _violation(
                    f"The number of terms [{len(values)}] used in the Terms Query request has exceeded the allowed maximum of [{MAX_TERMS}].",
                    "illegal_argument_exception",
                )
            self._filterable(index, fields[0])
            wanted = set(values)
            return np.array([index.docs[i].get(fields[0]) in wanted for i in ids], dtype=bool), ones
        if kind == "ids":
            spec = _object(spec, kind)
            _only(spec, frozenset({"values", "boost"}), kind, "parsing_exception")
            wanted = set(spec.get("values", []))
            return np.array([i in wanted for i in ids], dtype=bool), ones
        if kind == "bool":
            return self._bool(index, ids, _object(spec, kind))
        if kind == "script_score":
            return self._script_score(index, ids, _object(spec, kind))
        if kind == "knn" and self.dialect is not Dialect.ELASTICSEARCH:
            return self._knn_query(index, ids, _object(spec, kind), lvector or {})
        raise _violation(f"unknown query [{kind}]", "parsing_exception")

    @staticmethod
    def _single_field(spec: Any, kind: str) -> tuple[str, Any]:
        fields = _object(spec, kind)
        if len(fields) != 1:
            raise _violation(f"[{kind}] query doesn't support multiple fields", "parsing_exception")
        name, value = next(iter(fields.items()))
        return str(name), value

    @staticmethod
    def _filterable(index: FakeIndex, name: str) -> None:
        spec = index.properties.get(name)
        if spec is not None and spec.get("index") is False:
            raise _violation(
                f"Cannot search on field [{name}] since it is not indexed.", "illegal_argument_exception"
            )

    def _bool(
        self, index: FakeIndex, ids: list[str], spec: dict[str, Any]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        _only(
            spec,
            frozenset({"filter", "must", "must_not", "should", "minimum_should_match", "boost"}),
            "bool",
            "parsing_exception",
        )
        n = len(ids)
        mask = np.ones(n, dtype=bool)
        scores = np.zeros(n)
        scored = False

        def clauses(key: str) -> list[Any]:
            value = spec.get(key, [])
            return value if isinstance(value, list) else [value]

        for clause in clauses("filter"):
            mask &= self._query(index, ids, clause, "bool.filter")[0]
        for clause in clauses("must"):
            matched, clause_scores = self._query(index, ids, clause, "bool.must")
            mask &= matched
            scores += clause_scores
            scored = True
        for clause in clauses("must_not"):
            mask &= ~self._query(index, ids, clause, "bool.must_not")[0]
        should = clauses("should")
        if should:
            hits = np.zeros(n, dtype=int)
            for clause in should:
                matched, clause_scores = self._query(index, ids, clause, "bool.should")
                hits += matched
                scores += np.where(matched, clause_scores, 0.0)
            minimum = int(spec.get("minimum_should_match", 0 if scored or "filter" in spec else 1))
            mask &= hits >= minimum
            scored = True
        return mask, scores if scored else np.zeros(n)

    def _field_matrix(
        self, index: FakeIndex, ids: list[str], field_name: str, kinds: set[str], where: str
    ) -> tuple[dict[str, Any], npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        spec = index.properties.get(field_name)
        if spec is None or spec.get("type") not in kinds:
            raise _violation(
                f"[{where}] field [{field_name}] is not a {'/'.join(sorted(kinds))} field",
                "illegal_argument_exception",
            )
        dims = int(spec.get("dims", spec.get("dimension", 0)))
        present = np.array([field_name in index.docs[i] for i in ids], dtype=bool)
        matrix = np.zeros((len(ids), dims), dtype=np.float32)
        for row, i in enumerate(ids):
            if present[row]:
                matrix[row] = index.docs[i][field_name]
        return spec, matrix, present

    def _es_knn(
        self, index: FakeIndex, ids: list[str], knn: Any
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        if isinstance(knn, list):
            if len(knn) != 1:
                raise _violation(
                    "the contract fake answers one knn search per request", "illegal_argument_exception"
                )
            knn = knn[0]
        knn = _object(knn, "knn")
        _only(
            knn,
            frozenset(
                {
                    "field",
                    "query_vector",
                    "query_vector_builder",
                    "k",
                    "num_candidates",
                    "filter",
                    "similarity",
                    "boost",
                    "inner_hits",
                    "rescore_vector",
                }
            ),
            "knn",
        )
        if "field" not in knn:
            raise _violation("[knn] failed to parse: [field] is required", "x_content_parse_exception")
        if "query_vector" not in knn:
            raise _violation(
                "[knn] requires either a query_vector or a query_vector_builder", "illegal_argument_exception"
            )
        spec, matrix, present = self._field_matrix(index, ids, knn["field"], {"dense_vector"}, "knn")
        if spec.get("index") is False:
            raise _violation(
                f"[knn] queries are only supported on indexed [dense_vector] fields, [{knn['field']}] is not indexed",
                "illegal_argument_exception",
            )
        query = _vector(knn["query_vector"], int(spec["dims"]), "knn.query_vector")
        k = _int(knn.get("k", 10), "knn.k", 1, MAX_RESULT_WINDOW)
        num_candidates = _int(
            knn.get("num_candidates", min(math.ceil(1.5 * k), MAX_RESULT_WINDOW)),
            "knn.num_candidates",
            1,
            MAX_RESULT_WINDOW,
        )
        if num_candidates < k:
            raise _violation(
                f"[num_candidates] cannot be less than [k], got {num_candidates} < {k}",
                "illegal_argument_exception",
            )
        similarity = self._space(spec)
        if similarity == "cosine" and not np.any(query):
            raise _violation(
                "The [cosine] similarity does not support vectors with zero magnitude.",
                "illegal_argument_exception",
            )
        mask = present.copy()
        filters = knn.get("filter", [])
        for clause in filters if isinstance(filters, list) else [filters]:
            mask &= self._query(index, ids, clause, "knn.filter")[0]
        if similarity not in {"cosine", "dot_product"}:
            raise _violation(
                "the contract fake scores cosine and dot_product similarity only",
                "illegal_argument_exception",
            )
        cosine = _cosine(matrix, query)
        if "similarity" in knn:
            mask &= cosine >= _number(knn["similarity"], "knn.similarity")
        scores = (1.0 + cosine) / 2.0
        return self._top(mask, scores, ids, k), scores

    def _top(
        self, mask: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64], ids: list[str], k: int
    ) -> npt.NDArray[np.bool_]:
        """The best ``k`` of ``mask`` (fewer when ``short_ann_answers`` drops the last ones)."""
        candidates = sorted(np.flatnonzero(mask).tolist(), key=lambda i: (-scores[i], ids[i]))[:k]
        if self.short_ann_answers and len(candidates) > 1:
            candidates = candidates[: len(candidates) // 2]
        top = np.zeros(len(ids), dtype=bool)
        top[candidates] = True
        return top

    def _script_score(
        self, index: FakeIndex, ids: list[str], spec: dict[str, Any]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        _only(spec, frozenset({"query", "script", "min_score", "boost"}), "script_score", "parsing_exception")
        if "query" not in spec or "script" not in spec:
            raise _violation("[script_score] requires [query] and [script]", "parsing_exception")
        mask, _ = self._query(index, ids, spec["query"], "script_score.query")
        script = _object(spec["script"], "script_score.script")
        _only(script, frozenset({"source", "lang", "params", "id"}), "script", "parsing_exception")
        params = _object(script.get("params", {}), "script.params")
        if self.dialect is Dialect.ELASTICSEARCH:
            scores = self._painless_vector_score(index, ids, script, params)
        elif self.dialect is Dialect.OPENSEARCH:
            scores = self._knn_score_script(index, ids, script, params)
        else:
            raise _violation(
                "the vendor documents no exact scoring script for the Lindorm vector engine",
                "illegal_argument_exception",
            )
        if "min_score" in spec:
            mask &= scores >= _number(spec["min_score"], "script_score.min_score")
        return mask, scores

    def _painless_vector_score(
        self, index: FakeIndex, ids: list[str], script: dict[str, Any], params: dict[str, Any]
    ) -> npt.NDArray[np.float64]:
        if script.get("lang", "painless") != "painless":
            raise _violation(
                f"script_lang not supported [{script.get('lang')}]", "illegal_argument_exception"
            )
        match = _PAINLESS_VECTOR.match(str(script.get("source", "")))
        if match is None:
            raise ApiError(
                400,
                "script_exception",
                f"compile error: the contract fake evaluates only "
                f"cosineSimilarity/dotProduct(params.<v>, '<field>') + 1.0, got [{script.get('source')}]",
            )
        function, param, field_name = match.groups()
        if param not in params:
            raise ApiError(400, "script_exception", f"runtime error: params.{param} is missing")
        spec, matrix, present = self._field_matrix(index, ids, field_name, {"dense_vector"}, "script")
        query = _vector(params[param], int(spec["dims"]), f"params.{param}")
        if function == "cosineSimilarity":
            base = _cosine(matrix, query)
        else:
            base = matrix.astype(np.float64) @ query.astype(np.float64)
        scores = base + 1.0
        if np.any(scores[present] < 0):
            raise ApiError(400, "script_exception", "script score function must not produce negative scores")
        return np.where(present, scores, 0.0)

    def _knn_score_script(
        self, index: FakeIndex, ids: list[str], script: dict[str, Any], params: dict[str, Any]
    ) -> npt.NDArray[np.float64]:
        if script.get("lang") != "knn" or script.get("source") != "knn_score":
            raise _violation(
                'the k-NN score script needs "lang": "knn" and "source": "knn_score"',
                "illegal_argument_exception",
            )
        for key in ("field", "query_value", "space_type"):
            if key not in params:
                raise _violation(f"Missing parameter [{key}]", "illegal_argument_exception")
        _only(
            params,
            frozenset({"field", "query_value", "space_type"}),
            "script.params",
            "illegal_argument_exception",
        )
        spec, matrix, present = self._field_matrix(index, ids, params["field"], {"knn_vector"}, "knn_score")
        query = _vector(params["query_value"], int(spec["dimension"]), "query_value")
        space = params["space_type"]
        if space == "cosinesimil":
            if not np.any(query):
                raise _violation("zero vector is not supported for cosinesimil", "illegal_argument_exception")
            scores = 1.0 + _cosine(matrix, query)
        elif space == "l2":
            scores = 1.0 / (1.0 + ((matrix.astype(np.float64) - query) ** 2).sum(axis=1))
        else:
            raise _violation(
                f"the contract fake scores cosinesimil and l2, got [{space}]", "illegal_argument_exception"
            )
        return np.where(present, scores, 0.0)

    def _knn_query(  # noqa: PLR0912 (one check per documented knn parameter)
        self, index: FakeIndex, ids: list[str], spec: dict[str, Any], lvector: Mapping[str, str]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        if len(spec) != 1:
            raise _violation("[knn] query takes exactly one vector field", "parsing_exception")
        field_name, params = next(iter(spec.items()))
        params = _object(params, f"knn.{field_name}")
        if self.dialect is Dialect.LINDORM:
            _only(params, frozenset({"vector", "k", "filter"}), f"knn.{field_name}", "parsing_exception")
            if "k" not in params:
                raise _violation("[knn] requires k", "parsing_exception")
        else:
            _only(
                params,
                frozenset(
                    {
                        "vector",
                        "k",
                        "min_score",
                        "max_distance",
                        "filter",
                        "method_parameters",
                        "rescore",
                        "boost",
                        "expand_nested_docs",
                        "_name",
                    }
                ),
                f"knn.{field_name}",
                "parsing_exception",
            )
            given = [key for key in ("k", "min_score", "max_distance") if key in params]
            if len(given) != 1:
                raise _violation(
                    "[knn] requires exactly one of k, distance or score to be set",
                    "illegal_argument_exception",
                )
        if "vector" not in params:
            raise _violation("[knn] requires query vector", "parsing_exception")
        spec_field, matrix, present = self._field_matrix(index, ids, field_name, {"knn_vector"}, "knn")
        if not _bool_like(index.settings.get("index.knn", False), "index.knn"):
            raise _violation(
                f"index [{index.name}] is not a knn index (index.knn is not true)",
                "illegal_argument_exception",
            )
        query = _vector(params["vector"], int(spec_field["dimension"]), "knn.vector")
        method = spec_field.get("method") or {}
        engine = method.get("engine", "faiss")
        space = self._space(spec_field)
        if space != "cosinesimil":
            raise _violation("the contract fake scores cosinesimil only", "illegal_argument_exception")
        if not np.any(query):
            raise _violation("zero vector is not supported for cosinesimil", "illegal_argument_exception")
        k = _int(params["k"], "knn.k", 1, MAX_RESULT_WINDOW) if "k" in params else None
        if "method_parameters" in params:
            method_parameters = _object(params["method_parameters"], "method_parameters")
            allowed = {"ef_search"} if method.get("name") == "hnsw" else {"nprobes"}
            _only(method_parameters, frozenset(allowed), "method_parameters", "illegal_argument_exception")
            for key, value in method_parameters.items():
                _int(value, f"method_parameters.{key}", 1)
        filter_mask = np.ones(len(ids), dtype=bool)
        if "filter" in params:
            if self.dialect is Dialect.OPENSEARCH and engine not in {"lucene", "faiss"}:
                raise _violation(
                    f"Engine [{engine.upper()}] does not support filters", "illegal_argument_exception"
                )
            filter_mask = self._query(index, ids, params["filter"], "knn.filter")[0]
        cosine = _cosine(matrix, query)
        distance = 1.0 - cosine
        if self.dialect is Dialect.LINDORM:
            scores = 1.0 / (1.0 + distance)
            filter_type = lvector.get("filter_type", "post_filter")
            assert k is not None
            if "filter" in params and filter_type == "post_filter":
                # Search the whole graph, then drop what the filter refuses: may be short.
                return self._top(present, scores, ids, k) & filter_mask, scores
            return self._top(present & filter_mask, scores, ids, k), scores
        scores = (2.0 - distance) / 2.0
        mask = present & filter_mask
        if "min_score" in params:
            return mask & (scores >= _number(params["min_score"], "knn.min_score")), scores
        if "max_distance" in params:
            return mask & (distance <= _number(params["max_distance"], "knn.max_distance")), scores
        assert k is not None
        return self._top(mask, scores, ids, k), scores


@dataclass(frozen=True, order=False)
class _Reversed:
    """Sorts a value descending inside an ascending tuple sort."""

    value: Any

    def __lt__(self, other: _Reversed) -> bool:
        return bool(self.value > other.value)

    def __gt__(self, other: _Reversed) -> bool:
        return bool(self.value < other.value)


async def _serve(dialect: Dialect, username: str, password: str) -> None:
    async with FakeSearchEngine(dialect, username=username, password=password) as fake:
        print(f"FAKE_SEARCH_ENGINE_URL={fake.url}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def main() -> None:
    """Runs the fake until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--dialect", choices=[d.value for d in Dialect], default="elasticsearch")
    parser.add_argument("--username", default="viewfinder")
    parser.add_argument("--password", default="contract-fake-password")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(Dialect(args.dialect), args.username, args.password))


if __name__ == "__main__":
    main()
