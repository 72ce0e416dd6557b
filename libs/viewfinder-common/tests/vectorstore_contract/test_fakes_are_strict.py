"""The contract fakes reject what the vendors' APIs reject — otherwise they would prove nothing.

Raw requests (no adapter) with misspelled keys, wrong types, missing fields
and out-of-range values against ``FakeSearchEngine``; misuse of the Proxima
procedure and functions against ``hologres_shim`` on PostgreSQL. Also the
fake's arithmetic: kNN answers are real cosine rankings in each vendor's score
scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import pytest

from viewfinder_common.settings import DatabaseSettings
from viewfinder_common.testing import hologres_shim
from viewfinder_common.testing.fake_search_engine import Dialect, FakeSearchEngine

DIM = 4


class Client:
    """Raw JSON / NDJSON calls to a fake."""

    def __init__(self, fake: FakeSearchEngine, http: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.http = http

    async def call(
        self, method: str, path: str, body: Any = None, *, ndjson: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": aiohttp.encode_basic_auth(self.fake.username, self.fake.password)}
        data: str | None = None
        if ndjson is not None:
            headers["Content-Type"] = "application/x-ndjson"
            data = ndjson
        elif body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        async with self.http.request(
            method, f"{self.fake.url}{path}", data=data, headers=headers
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None


@pytest.fixture
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    async with FakeSearchEngine(Dialect(request.param)) as fake, aiohttp.ClientSession() as http:
        yield Client(fake, http)


def error_type(body: Any) -> str:
    return str(body["error"]["type"])


ES_INDEX = {
    "mappings": {
        "properties": {
            "k": {"type": "keyword"},
            "v": {"type": "dense_vector", "dims": DIM, "index": True, "similarity": "cosine"},
        }
    }
}
OS_INDEX = {
    "settings": {"index": {"knn": True}},
    "mappings": {
        "properties": {
            "k": {"type": "keyword"},
            "v": {
                "type": "knn_vector",
                "dimension": DIM,
                "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil"},
            },
        }
    },
}
LINDORM_INDEX = {
    "settings": {"index": {"knn": True}},
    "mappings": {
        "properties": {
            "k": {"type": "keyword"},
            "v": {
                "type": "knn_vector",
                "dimension": DIM,
                "data_type": "float",
                "method": {"engine": "lvector", "name": "hnsw", "space_type": "cosinesimil"},
            },
        }
    },
}
DOCS = [np.eye(DIM)[0], np.eye(DIM)[0] + np.eye(DIM)[1], np.eye(DIM)[2], -np.eye(DIM)[0]]


async def load(client: Client, body: dict[str, Any]) -> None:
    status, answer = await client.call("PUT", "/idx", body)
    assert status == 200, answer
    lines = "".join(
        json.dumps({"index": {"_index": "idx", "_id": str(i)}})
        + "\n"
        + json.dumps({"k": "a", "v": v.tolist()})
        + "\n"
        for i, v in enumerate(DOCS)
    )
    status, answer = await client.call("POST", "/_bulk?refresh=wait_for", ndjson=lines)
    assert status == 200
    assert answer["errors"] is False


@pytest.mark.parametrize("client", ["elasticsearch"], indirect=True)
@pytest.mark.parametrize(
    ("mapping", "kind"),
    [
        ({"type": "dense_vector", "dim": DIM}, "mapper_parsing_exception"),  # misspelled dims
        ({"type": "dense_vector", "dims": 5000}, "illegal_argument_exception"),  # above 4096
        ({"type": "dense_vector", "dims": DIM, "similarity": "cosinus"}, "mapper_parsing_exception"),
        (
            {"type": "dense_vector", "dims": DIM, "index_options": {"type": "hnsw", "ef_constructon": 64}},
            "mapper_parsing_exception",
        ),
        ({"type": "dense_vector", "dims": "four"}, "x_content_parse_exception"),
        ({"type": "knn_vector", "dimension": DIM}, "mapper_parsing_exception"),  # OpenSearch's type
    ],
)
async def test_elasticsearch_mappings_are_checked(client: Client, mapping: dict[str, Any], kind: str) -> None:
    status, body = await client.call("PUT", "/idx", {"mappings": {"properties": {"v": mapping}}})
    assert status == 400
    assert error_type(body) == kind
    assert client.fake.rejections


@pytest.mark.parametrize("client", ["elasticsearch"], indirect=True)
@pytest.mark.parametrize(
    ("knn", "kind"),
    [
        (
            {"field": "v", "query_vector": [1, 0, 0, 0], "k": 2, "num_candidate": 10},
            "x_content_parse_exception",
        ),
        (
            {"field": "v", "query_vector": [1, 0, 0, 0], "k": 5, "num_candidates": 3},
            "illegal_argument_exception",
        ),
        (
            {"field": "v", "query_vector": [1, 0, 0], "k": 2, "num_candidates": 10},
            "illegal_argument_exception",
        ),
        (
            {"field": "v", "query_vector": [1, 0, 0, 0], "k": 2, "num_candidates": 20_000},
            "illegal_argument_exception",
        ),
        ({"query_vector": [1, 0, 0, 0], "k": 2}, "x_content_parse_exception"),
        ({"field": "k", "query_vector": [1, 0, 0, 0], "k": 2}, "illegal_argument_exception"),
    ],
)
async def test_elasticsearch_knn_sections_are_checked(client: Client, knn: dict[str, Any], kind: str) -> None:
    await load(client, ES_INDEX)
    status, body = await client.call("POST", "/idx/_search", {"knn": knn})
    assert status == 400, body
    assert error_type(body) == kind


@pytest.mark.parametrize("client", ["elasticsearch"], indirect=True)
async def test_elasticsearch_search_body_and_bulk_format_are_checked(client: Client) -> None:
    await load(client, ES_INDEX)
    status, body = await client.call("POST", "/idx/_search", {"qeury": {"match_all": {}}})
    assert (status, error_type(body)) == (400, "parsing_exception")
    status, body = await client.call("POST", "/idx/_search", {"query": {"match_everything": {}}})
    assert (status, error_type(body)) == (400, "parsing_exception")
    status, body = await client.call("POST", "/idx/_search", {"size": 10_001})
    assert (status, error_type(body)) == (400, "illegal_argument_exception")
    no_newline = json.dumps({"index": {"_index": "idx", "_id": "9"}}) + "\n" + json.dumps({"k": "b"})
    status, body = await client.call("POST", "/_bulk", ndjson=no_newline)
    assert (status, error_type(body)) == (400, "illegal_argument_exception")
    status, body = await client.call("POST", "/_bulk?refresh=soon", ndjson="")
    assert status == 400
    # A document that does not fit the mapping is an item error, not a request error.
    wrong_dims = (
        json.dumps({"index": {"_index": "idx", "_id": "9"}}) + "\n" + json.dumps({"v": [1, 2]}) + "\n"
    )
    status, body = await client.call("POST", "/_bulk", ndjson=wrong_dims)
    assert status == 200
    assert body["errors"] is True
    assert body["items"][0]["index"]["error"]["type"] == "document_parsing_exception"


@pytest.mark.parametrize("client", ["elasticsearch"], indirect=True)
async def test_elasticsearch_answers_with_real_cosine_scores(client: Client) -> None:
    await load(client, ES_INDEX)
    query = [1.0, 0.2, 0.0, 0.0]
    status, body = await client.call(
        "POST",
        "/idx/_search",
        {"knn": {"field": "v", "query_vector": query, "k": 3, "num_candidates": 10}, "size": 3},
    )
    assert status == 200
    expected = sorted(
        (
            (i, float(np.dot(v, query) / (np.linalg.norm(v) * np.linalg.norm(query))))
            for i, v in enumerate(DOCS)
        ),
        key=lambda pair: -pair[1],
    )[:3]
    assert [hit["_id"] for hit in body["hits"]["hits"]] == [str(i) for i, _ in expected]
    for hit, (_, cos) in zip(body["hits"]["hits"], expected, strict=True):
        assert math.isclose(hit["_score"], (1 + cos) / 2, abs_tol=1e-6)
    status, body = await client.call(
        "POST",
        "/idx/_search",
        {
            "query": {
                "script_score": {
                    "query": {"match_all": {}},
                    "script": {"source": "cosineSimilarity(params.q, 'v') + 1.0", "params": {"q": query}},
                }
            }
        },
    )
    assert status == 200
    assert math.isclose(body["hits"]["hits"][0]["_score"], 1 + expected[0][1], abs_tol=1e-6)
    status, body = await client.call(
        "POST",
        "/idx/_search",
        {"query": {"script_score": {"query": {"match_all": {}}, "script": {"source": "doc['v'].size()"}}}},
    )
    assert (status, error_type(body)) == (400, "script_exception")


@pytest.mark.parametrize("client", ["opensearch"], indirect=True)
@pytest.mark.parametrize(
    ("field", "kind"),
    [
        (
            {
                "type": "knn_vector",
                "dimension": DIM,
                "method": {
                    "name": "hnsw",
                    "engine": "lucene",
                    "space_type": "cosinesimil",
                    "parameters": {"ef_search": 100},
                },
            },
            "mapper_parsing_exception",
        ),
        (
            {
                "type": "knn_vector",
                "dimension": DIM,
                "method": {"name": "hnsw", "engine": "lucene", "space_type": "linf"},
            },
            "mapper_parsing_exception",
        ),
        (
            {"type": "knn_vector", "dimension": DIM, "method": {"name": "ivf", "engine": "lucene"}},
            "mapper_parsing_exception",
        ),
        ({"type": "knn_vector", "dims": DIM}, "mapper_parsing_exception"),
        ({"type": "dense_vector", "dims": DIM}, "mapper_parsing_exception"),
    ],
)
async def test_opensearch_mappings_are_checked(client: Client, field: dict[str, Any], kind: str) -> None:
    status, body = await client.call(
        "PUT", "/idx", {"settings": {"index": {"knn": True}}, "mappings": {"properties": {"v": field}}}
    )
    assert (status, error_type(body)) == (400, kind)


@pytest.mark.parametrize("client", ["opensearch"], indirect=True)
async def test_opensearch_knn_queries_and_scripts_are_checked(client: Client) -> None:
    await load(client, OS_INDEX)
    both = {"query": {"knn": {"v": {"vector": [1, 0, 0, 0], "k": 2, "min_score": 0.5}}}}
    status, body = await client.call("POST", "/idx/_search", both)
    assert (status, error_type(body)) == (400, "illegal_argument_exception")
    misspelled = {"query": {"knn": {"v": {"vectors": [1, 0, 0, 0], "k": 2}}}}
    assert (await client.call("POST", "/idx/_search", misspelled))[0] == 400
    lindorm_ext = {
        "query": {"knn": {"v": {"vector": [1, 0, 0, 0], "k": 2}}},
        "ext": {"lvector": {"ef_search": "10"}},
    }
    assert (await client.call("POST", "/idx/_search", lindorm_ext))[0] == 400
    script = {"source": "knn_score", "lang": "knn", "params": {"field": "v", "query_value": [1, 0, 0, 0]}}
    status, body = await client.call(
        "POST", "/idx/_search", {"query": {"script_score": {"query": {"match_all": {}}, "script": script}}}
    )
    assert (status, error_type(body)) == (400, "illegal_argument_exception")  # space_type is required
    # The answers are cosine arithmetic: (2 - d) / 2 for ANN, 1 + cos for the score script.
    status, body = await client.call(
        "POST", "/idx/_search", {"query": {"knn": {"v": {"vector": [1, 0, 0, 0], "k": 2}}}}
    )
    assert [hit["_id"] for hit in body["hits"]["hits"]] == ["0", "1"]
    assert math.isclose(body["hits"]["hits"][1]["_score"], (1 + math.sqrt(0.5)) / 2, abs_tol=1e-6)
    script["params"]["space_type"] = "cosinesimil"  # type: ignore[index]
    status, body = await client.call(
        "POST", "/idx/_search", {"query": {"script_score": {"query": {"match_all": {}}, "script": script}}}
    )
    assert status == 200
    assert math.isclose(body["hits"]["hits"][1]["_score"], 1 + math.sqrt(0.5), abs_tol=1e-6)


@pytest.mark.parametrize("client", ["lindorm"], indirect=True)
async def test_lindorm_mappings_and_ext_parameters_are_checked(client: Client) -> None:
    foreign_engine = json.loads(json.dumps(LINDORM_INDEX))
    foreign_engine["mappings"]["properties"]["v"]["method"]["engine"] = "faiss"
    status, body = await client.call("PUT", "/bad", foreign_engine)
    assert (status, error_type(body)) == (400, "mapper_parsing_exception")
    await load(client, LINDORM_INDEX)
    knn = {"query": {"knn": {"v": {"vector": [1, 0, 0, 0], "k": 2}}}}
    for ext in (
        {"lvector": {"ef_search": 100}},  # the vendor's values are strings
        {"lvector": {"filter_type": "prefilter"}},
        {"lvector": {"efsearch": "100"}},
        {"lvector": {"min_score": "high"}},
    ):
        status, body = await client.call("POST", "/idx/_search", {**knn, "ext": ext})
        assert (status, error_type(body)) == (400, "illegal_argument_exception"), ext
    status, body = await client.call(
        "POST", "/idx/_search", {**knn, "ext": {"lvector": {"ef_search": "100"}}}
    )
    assert status == 200
    # 1 / (1 + d), d = 1 - cos
    assert math.isclose(body["hits"]["hits"][1]["_score"], 1 / (2 - math.sqrt(0.5)), abs_tol=1e-6)
    script = {
        "source": "knn_score",
        "lang": "knn",
        "params": {"field": "v", "query_value": [1, 0, 0, 0], "space_type": "cosinesimil"},
    }
    status, body = await client.call(
        "POST", "/idx/_search", {"query": {"script_score": {"query": {"match_all": {}}, "script": script}}}
    )
    assert status == 400  # not documented for Lindorm


@pytest.mark.parametrize("client", ["elasticsearch", "opensearch", "lindorm"], indirect=True)
async def test_requests_without_credentials_are_refused(client: Client) -> None:
    async with client.http.get(f"{client.fake.url}/") as response:
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "security_exception"
    assert client.fake.rejections == []  # an auth failure is not a contract violation


# ── the Hologres shim ─────────────────────────────────────────────────


@pytest.fixture
async def shim_conn() -> AsyncIterator[asyncpg.Connection]:
    settings = DatabaseSettings()
    base, _, _ = settings.url.rpartition("/")
    name = f"shim_{np.random.default_rng().integers(1 << 60):x}"
    admin = await asyncpg.connect(settings.url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(f"{base}/{name}")
    try:
        await hologres_shim.install(conn)
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


VECTOR_TABLE = (
    "CREATE TABLE t (id text PRIMARY KEY, f float4[] CHECK (array_ndims(f) = 1 AND array_length(f, 1) = 4))"
)


@pytest.mark.stack
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("proxima_vector", "{}", "unsupported table property"),
        ("proxima_vectors", "not json", "not valid JSON"),
        (
            "proxima_vectors",
            '{"f": {"algorithm": "HNSW", "distance_method": "SquaredEuclidean"}}',
            "must be Graph",
        ),
        ("proxima_vectors", '{"f": {"algorithm": "Graph", "distance_method": "Cosine"}}', "distance_method"),
        (
            "proxima_vectors",
            '{"f": {"algorithm": "Graph", "distance_method": "InnerProduct", "builder_params": {"min_flush_proxima_rows": 10}}}',
            "unknown builder_params",
        ),
        (
            "proxima_vectors",
            '{"f": {"algorithm": "Graph", "distance_method": "InnerProduct", "builder_params": {"min_flush_proxima_row_count": "1000"}}}',
            "positive integer",
        ),
        (
            "proxima_vectors",
            '{"g": {"algorithm": "Graph", "distance_method": "InnerProduct"}}',
            "does not exist",
        ),
        ("clustering_key", "missing_column", "does not exist"),
    ],
)
async def test_set_table_property_checks_its_arguments(
    shim_conn: asyncpg.Connection, key: str, value: str, message: str
) -> None:
    async with shim_conn.transaction():
        await shim_conn.execute(VECTOR_TABLE)
        with pytest.raises(asyncpg.PostgresError, match=message):
            await shim_conn.execute("CALL set_table_property('t', $1, $2)", key, value)


@pytest.mark.stack
async def test_creation_only_properties_need_the_creating_transaction(shim_conn: asyncpg.Connection) -> None:
    await shim_conn.execute(VECTOR_TABLE)
    with pytest.raises(asyncpg.PostgresError, match="transaction that creates"):
        await shim_conn.execute("CALL set_table_property('t', 'clustering_key', 'id')")
    # proxima_vectors may be set later (Hologres 2.0.11+ builds it for existing data).
    await shim_conn.execute(
        'CALL set_table_property(\'t\', \'proxima_vectors\', \'{"f": {"algorithm": "Graph", "distance_method": "SquaredEuclidean"}}\')'
    )
    value = await shim_conn.fetchval(
        "SELECT property_value FROM hologres.hg_table_properties WHERE table_name = 't' AND property_key = 'proxima_vectors'"
    )
    assert json.loads(value)["f"]["distance_method"] == "SquaredEuclidean"


@pytest.mark.stack
async def test_proxima_needs_a_fixed_length_float4_column(shim_conn: asyncpg.Connection) -> None:
    await shim_conn.execute("CREATE TABLE loose (id text PRIMARY KEY, f float4[], d float8[])")
    for column in ("f", "d"):
        with pytest.raises(asyncpg.PostgresError, match=r"CHECK|FLOAT4"):
            await shim_conn.execute(
                f'CALL set_table_property(\'loose\', \'proxima_vectors\', \'{{"{column}": {{"algorithm": "Graph", "distance_method": "SquaredEuclidean"}}}}\')'
            )


@pytest.mark.stack
async def test_distance_functions_compute_and_check_sizes(shim_conn: asyncpg.Connection) -> None:
    a, b = [1.0, 2.0, 3.0], [1.0, 0.0, -1.0]
    assert (
        await shim_conn.fetchval("SELECT pm_squared_euclidean_distance($1::float4[], $2::float4[])", a, b)
        == 20.0
    )
    assert (
        await shim_conn.fetchval("SELECT pm_approx_inner_product_distance($1::float4[], $2::float4[])", a, b)
        == -2.0
    )
    assert math.isclose(
        await shim_conn.fetchval("SELECT pm_euclidean_distance($1::float4[], $2::float4[])", a, b),
        math.sqrt(20),
        rel_tol=1e-6,
    )
    with pytest.raises(
        asyncpg.PostgresError, match="The size of two arrays must be the same in DistanceFunction"
    ):
        await shim_conn.fetchval(
            "SELECT pm_approx_squared_euclidean_distance($1::float4[], $2::float4[])", a, [1.0]
        )
