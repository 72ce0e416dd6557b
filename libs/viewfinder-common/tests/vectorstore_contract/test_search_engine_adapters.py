"""What the Elasticsearch, OpenSearch and Lindorm adapters send, and how they handle the answers.

The shared contract suite checks behaviour; these tests pin the vendor-specific
parts: the documented request shapes each adapter sends (read back from the
contract fake's request log), the score conversions, the exact fallback when
an ANN answer comes back short, retries, credentials and schema validation of
indices someone else created.
"""

from __future__ import annotations

import math
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from pydantic import SecretStr

from viewfinder_common.errors import FailedPrecondition, Unavailable
from viewfinder_common.http_retry import RetryPolicy
from viewfinder_common.testing.fake_search_engine import Dialect, FakeSearchEngine
from viewfinder_common.vectorstore import (
    IndexSchema,
    InvalidVectorInput,
    SchemaMismatch,
    VectorField,
    VectorFilter,
    VectorQuery,
    VectorRow,
    VectorStore,
)
from viewfinder_common.vectorstore import elasticsearch as es_module
from viewfinder_common.vectorstore.elasticsearch import ElasticsearchSettings, ElasticsearchVectorStore
from viewfinder_common.vectorstore.opensearch import (
    LindormSettings,
    LindormVectorStore,
    OpenSearchSettings,
    OpenSearchVectorStore,
)

DIM = 8
FAKE_KINDS = ["elasticsearch", "opensearch", "lindorm"]
FAST_RETRIES = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


def new_id() -> str:
    return str(uuid.uuid4())


def rows_of(vectors: Any, version: str) -> list[VectorRow]:
    return [VectorRow(new_id(), version, "etag", {"visual": [float(x) for x in v]}) for v in vectors]


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def dialect_of(kind: str) -> Dialect:
    return Dialect(kind)


def make_store(kind: str, fake: FakeSearchEngine, **options: Any) -> VectorStore:
    """An adapter of ``kind`` pointed at ``fake`` with its credentials."""
    password = SecretStr(fake.password)
    if kind == "elasticsearch":
        return ElasticsearchVectorStore(
            ElasticsearchSettings(uri=fake.url, username=fake.username, password=password)
        )
    if kind == "opensearch":
        return OpenSearchVectorStore(
            OpenSearchSettings(uri=fake.url, username=fake.username, password=password, **options)
        )
    return LindormVectorStore(
        LindormSettings(uri=fake.url, username=fake.username, password=password, **options)
    )


def auth_header(fake: FakeSearchEngine) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(fake.username, fake.password)}


def searches(fake: FakeSearchEngine) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests if r.path.endswith("/_search")]


@pytest.fixture(params=FAKE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def fake(kind: str) -> AsyncIterator[FakeSearchEngine]:
    async with FakeSearchEngine(dialect_of(kind)) as server:
        yield server
        assert server.rejections == [], "the adapter sent requests the vendor's API rejects"


@pytest.fixture
async def store(kind: str, fake: FakeSearchEngine) -> AsyncIterator[VectorStore]:
    store = make_store(kind, fake)
    yield store
    await store.close()


async def test_ensure_index_sends_the_documented_mapping(
    kind: str, fake: FakeSearchEngine, store: VectorStore
) -> None:
    await store.ensure_index(IndexSchema("docs", [VectorField("visual", DIM)]))
    (create,) = [r for r in fake.requests if r.method == "PUT"]
    assert create.path == "/vf_index_docs"
    properties = create.body["mappings"]["properties"]
    assert create.body["mappings"]["dynamic"] == "strict"
    assert properties["file_id"] == {"type": "keyword"}
    assert properties["dataset_version_id"] == {"type": "keyword"}
    visual = properties["visual"]
    if kind == "elasticsearch":
        assert visual == {
            "type": "dense_vector",
            "dims": DIM,
            "element_type": "float",
            "index": True,
            "similarity": "cosine",
            # Not the int8 default: scores stay exact cosines.
            "index_options": {"type": "hnsw", "m": 16, "ef_construction": 64},
        }
    elif kind == "opensearch":
        assert create.body["settings"] == {"index": {"knn": True}}
        assert visual["type"] == "knn_vector"
        assert visual["dimension"] == DIM
        assert visual["method"] == {
            "name": "hnsw",
            "space_type": "cosinesimil",
            "engine": "lucene",
            "parameters": {"m": 16, "ef_construction": 64},
        }
    else:
        assert create.body["settings"] == {"index": {"knn": True}}
        assert visual == {
            "type": "knn_vector",
            "dimension": DIM,
            "data_type": "float",
            "method": {
                "engine": "lvector",
                "name": "hnsw",
                "space_type": "cosinesimil",
                "parameters": {"m": 24, "ef_construction": 200},
            },
        }


async def test_ann_search_sends_the_vendors_knn_request(
    kind: str, fake: FakeSearchEngine, store: VectorStore
) -> None:
    await store.ensure_index(IndexSchema("ann", [VectorField("visual", DIM)]))
    version = new_id()
    rows = rows_of(np.random.default_rng(1).standard_normal((40, DIM)), version)
    await store.upsert("ann", rows)
    picked = [rows[i].file_id for i in range(0, 40, 3)]
    query = VectorQuery(
        "visual", rows[0].vectors["visual"], 5, VectorFilter(version, picked), search_breadth=64
    )
    hits = await store.search("ann", query)
    assert hits[0].file_id == rows[0].file_id
    body = searches(fake)[-1]
    where = {"bool": {"filter": [{"term": {"dataset_version_id": version}}, {"terms": {"file_id": picked}}]}}
    assert body["size"] == 5
    if kind == "elasticsearch":
        assert body["knn"] == {
            "field": "visual",
            "query_vector": pytest.approx(rows[0].vectors["visual"]),
            "k": 5,
            "num_candidates": 64,
            "filter": where,
        }
    elif kind == "opensearch":
        # Lucene ignores ef_search and searches k candidates: the breadth goes into k.
        assert body["query"] == {
            "knn": {"visual": {"vector": pytest.approx(rows[0].vectors["visual"]), "filter": where, "k": 64}}
        }
    else:
        assert body["query"] == {
            "knn": {"visual": {"vector": pytest.approx(rows[0].vectors["visual"]), "k": 5, "filter": where}}
        }
        assert body["ext"] == {"lvector": {"filter_type": "pre_filter", "ef_search": "64"}}


async def test_opensearch_faiss_engine_passes_the_breadth_as_ef_search() -> None:
    async with FakeSearchEngine(dialect_of("opensearch")) as fake:
        store = make_store("opensearch", fake, engine="faiss")
        await store.ensure_index(IndexSchema("faiss", [VectorField("visual", DIM)]))
        version = new_id()
        rows = rows_of(np.random.default_rng(2).standard_normal((20, DIM)), version)
        await store.upsert("faiss", rows)
        await store.search(
            "faiss",
            VectorQuery("visual", rows[4].vectors["visual"], 3, VectorFilter(version), search_breadth=50),
        )
        await store.close()
        create = next(r for r in fake.requests if r.method == "PUT")
        assert create.body["mappings"]["properties"]["visual"]["method"]["engine"] == "faiss"
        knn = searches(fake)[-1]["query"]["knn"]["visual"]
        assert knn["k"] == 3
        assert knn["method_parameters"] == {"ef_search": 50}
        assert fake.rejections == []


async def test_scores_are_cosine_similarities(kind: str, store: VectorStore) -> None:
    """Each vendor scores differently ((1+cos)/2, (2-d)/2, 1/(1+d), 1+cos); the adapters
    all return the cosine itself, on both paths."""
    await store.ensure_index(IndexSchema("scores", [VectorField("visual", DIM)]))
    version = new_id()
    vectors = np.random.default_rng(3).standard_normal((12, DIM))
    rows = rows_of(vectors, version)
    await store.upsert("scores", rows)
    target = np.random.default_rng(4).standard_normal(DIM)
    for exact in (False, True):
        hits = await store.search(
            "scores", VectorQuery("visual", target.tolist(), 12, VectorFilter(version), exact=exact)
        )
        assert len(hits) == 12
        by_id = {r.file_id: cosine(target, vectors[i]) for i, r in enumerate(rows)}
        for hit in hits:
            assert math.isclose(hit.score, by_id[hit.file_id], abs_tol=1e-5), (exact, hit)


async def test_a_short_ann_answer_is_replaced_by_the_exact_one(
    kind: str, fake: FakeSearchEngine, store: VectorStore
) -> None:
    await store.ensure_index(IndexSchema("short", [VectorField("visual", DIM)]))
    version = new_id()
    vectors = np.random.default_rng(5).standard_normal((60, DIM))
    rows = rows_of(vectors, version)
    await store.upsert("short", rows)
    target = vectors[7]
    truth = sorted(range(60), key=lambda i: -cosine(target, vectors[i]))[:10]
    fake.short_ann_answers = True  # the "index" now drops half of every kNN answer
    # A breadth of top_k: OpenSearch's lucene engine would otherwise ask for more than top_k.
    hits = await store.search(
        "short", VectorQuery("visual", target.tolist(), 10, VectorFilter(version), search_breadth=10)
    )
    assert [h.file_id for h in hits] == [rows[i].file_id for i in truth]
    last = searches(fake)[-1]
    if kind == "lindorm":
        # No documented exact script: the candidates' vectors were read and ranked here.
        assert last["_source"] == ["visual"]
        assert last["sort"] == [{"file_id": {"order": "asc"}}]
    else:
        assert "script_score" in last["query"]


async def test_lindorm_post_filter_answers_are_completed() -> None:
    """With filter_type=post_filter Lindorm searches the whole graph and filters after, so a
    selective filter returns fewer than k hits: the adapter answers exactly instead."""
    async with FakeSearchEngine(dialect_of("lindorm")) as fake:
        store = make_store("lindorm", fake, filter_type="post_filter")
        await store.ensure_index(IndexSchema("post", [VectorField("visual", DIM)]))
        near, far = new_id(), new_id()
        target = np.eye(DIM)[0]
        crowd = rows_of(
            np.tile(target, (30, 1)) + 0.01 * np.random.default_rng(6).standard_normal((30, DIM)), near
        )
        wanted = rows_of(np.eye(DIM)[1:6] + 0.2 * target, far)
        await store.upsert("post", crowd + wanted)
        hits = await store.search("post", VectorQuery("visual", target.tolist(), 5, VectorFilter(far)))
        await store.close()
        assert {h.file_id for h in hits} == {r.file_id for r in wanted}
        ann = searches(fake)[0]
        assert ann["ext"]["lvector"]["filter_type"] == "post_filter"
        assert fake.rejections == []


@pytest.mark.parametrize(
    ("kind_name", "foreign_field", "complaint"),
    [
        (
            "elasticsearch",
            {"type": "dense_vector", "dims": DIM, "index": True, "similarity": "l2_norm"},
            "l2_norm",
        ),
        (
            "opensearch",
            {
                "type": "knn_vector",
                "dimension": DIM,
                "method": {"name": "hnsw", "engine": "lucene", "space_type": "l2"},
            },
            "space_type l2",
        ),
        (
            "lindorm",
            {
                "type": "knn_vector",
                "dimension": DIM,
                "method": {"engine": "lvector", "name": "hnsw", "space_type": "innerproduct"},
            },
            "innerproduct",
        ),
    ],
)
async def test_an_index_created_elsewhere_with_another_metric_is_a_schema_mismatch(
    kind_name: str, foreign_field: dict[str, Any], complaint: str
) -> None:
    async with FakeSearchEngine(dialect_of(kind_name)) as fake:
        body: dict[str, Any] = {
            "mappings": {
                "properties": {
                    "file_id": {"type": "keyword"},
                    "dataset_version_id": {"type": "keyword"},
                    "etag": {"type": "keyword"},
                    "visual": foreign_field,
                }
            }
        }
        if kind_name != "elasticsearch":
            body["settings"] = {"index": {"knn": True}}
        async with aiohttp.ClientSession(headers=auth_header(fake)) as http:
            response = await http.put(f"{fake.url}/vf_index_foreign", json=body)
            assert response.status == 200, await response.text()
        store = make_store(kind_name, fake)
        with pytest.raises(SchemaMismatch, match=complaint):
            await store.ensure_index(IndexSchema("foreign", [VectorField("visual", DIM)]))
        await store.close()


async def test_opensearch_index_without_knn_setting_is_a_schema_mismatch() -> None:
    async with FakeSearchEngine(dialect_of("opensearch")) as fake:
        body = {
            "mappings": {
                "properties": {
                    "file_id": {"type": "keyword"},
                    "dataset_version_id": {"type": "keyword"},
                    "etag": {"type": "keyword"},
                    # Score-script-only field: allowed without index.knn, useless for kNN queries.
                    "visual": {"type": "knn_vector", "dimension": DIM, "space_type": "cosinesimil"},
                }
            }
        }
        async with aiohttp.ClientSession(headers=auth_header(fake)) as http:
            assert (await http.put(f"{fake.url}/vf_index_noknn", json=body)).status == 200
        store = make_store("opensearch", fake)
        with pytest.raises(SchemaMismatch, match=r"index\.knn"):
            await store.ensure_index(IndexSchema("noknn", [VectorField("visual", DIM)]))
        await store.close()


async def test_rows_the_index_mapping_refuses_are_a_schema_mismatch(
    kind: str, fake: FakeSearchEngine
) -> None:
    """A strict mapping without ``etag`` (made by someone else) refuses every document: the bulk
    item errors surface as SchemaMismatch, not as silent partial writes."""
    vector_field: dict[str, Any] = (
        {"type": "dense_vector", "dims": DIM, "similarity": "cosine"}
        if kind == "elasticsearch"
        else {
            "type": "knn_vector",
            "dimension": DIM,
            "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil"},
        }
    )
    if kind == "lindorm":
        vector_field["method"] = {"engine": "lvector", "name": "flat", "space_type": "cosinesimil"}
    body: dict[str, Any] = {
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "file_id": {"type": "keyword"},
                "dataset_version_id": {"type": "keyword"},
                "visual": vector_field,
            },
        }
    }
    if kind != "elasticsearch":
        body["settings"] = {"index": {"knn": True}}
    async with aiohttp.ClientSession(headers=auth_header(fake)) as http:
        assert (await http.put(f"{fake.url}/vf_index_strict", json=body)).status == 200
    store = make_store(kind, fake)
    with pytest.raises(SchemaMismatch, match="strict_dynamic_mapping_exception"):
        await store.upsert("strict", rows_of(np.ones((2, DIM)), new_id()))
    await store.close()


async def test_rejected_bulk_requests_are_retried(
    kind: str, fake: FakeSearchEngine, store: VectorStore
) -> None:
    await store.ensure_index(IndexSchema("retry", [VectorField("visual", DIM)]))
    fake.fail_next = [(429, "es_rejected_execution_exception"), (503, "unavailable_shards_exception")]
    fake.retry_after_s = 0.01
    await store.upsert("retry", rows_of(np.ones((3, DIM)), new_id()))
    assert await store.count("retry") == 3


async def test_a_cluster_that_keeps_failing_is_unavailable(kind: str, fake: FakeSearchEngine) -> None:
    store = _store_with_policy(kind, fake, FAST_RETRIES)
    await store.ensure_index(IndexSchema("down", [VectorField("visual", DIM)]))
    fake.fail_next = [(503, "unavailable_shards_exception")] * 5
    with pytest.raises(Unavailable):
        await store.count("down")
    await store.close()


def _store_with_policy(
    kind: str, fake: FakeSearchEngine, policy: RetryPolicy, password: str | None = None
) -> VectorStore:
    secret = SecretStr(password if password is not None else fake.password)
    if kind == "elasticsearch":
        return ElasticsearchVectorStore(
            ElasticsearchSettings(uri=fake.url, username=fake.username, password=secret), retry_policy=policy
        )
    if kind == "opensearch":
        return OpenSearchVectorStore(
            OpenSearchSettings(uri=fake.url, username=fake.username, password=secret), retry_policy=policy
        )
    return LindormVectorStore(
        LindormSettings(uri=fake.url, username=fake.username, password=secret), retry_policy=policy
    )


async def test_wrong_credentials_fail_precisely_without_the_secret(kind: str, fake: FakeSearchEngine) -> None:
    wrong = "not-the-password-s3cr3t"
    store = _store_with_policy(kind, fake, FAST_RETRIES, password=wrong)
    with pytest.raises(FailedPrecondition, match="rejected the credentials") as caught:
        await store.ensure_index(IndexSchema("auth", [VectorField("visual", DIM)]))
    await store.close()
    assert wrong not in str(caught.value)
    assert fake.password not in str(caught.value)


async def test_credentials_in_the_uri_are_used_but_never_shown(kind: str, fake: FakeSearchEngine) -> None:
    uri = fake.url.replace("http://", f"http://{fake.username}:{fake.password}@")
    store: VectorStore
    if kind == "elasticsearch":
        store = ElasticsearchVectorStore(ElasticsearchSettings(uri=uri))
    elif kind == "opensearch":
        store = OpenSearchVectorStore(OpenSearchSettings(uri=uri))
    else:
        store = LindormVectorStore(LindormSettings(uri=uri))
    await store.ensure_index(IndexSchema("uri_auth", [VectorField("visual", DIM)]))
    fake.fail_next = [(503, "unavailable_shards_exception")] * 10
    with pytest.raises(Unavailable) as caught:
        await store.count("uri_auth")
    await store.close()
    assert fake.password not in str(caught.value)


async def test_elasticsearch_api_key_authentication() -> None:
    async with FakeSearchEngine(dialect_of("elasticsearch"), api_key="aWQ6a2V5") as fake:
        store = ElasticsearchVectorStore(ElasticsearchSettings(uri=fake.url, api_key=SecretStr("aWQ6a2V5")))
        assert await store.server_version() == "8.17.0"
        await store.ensure_index(IndexSchema("apikey", [VectorField("visual", DIM)]))
        await store.close()


async def test_an_unreachable_server_is_unavailable(kind: str) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    store: VectorStore
    if kind == "elasticsearch":
        store = ElasticsearchVectorStore(ElasticsearchSettings(uri=uri), retry_policy=FAST_RETRIES)
    elif kind == "opensearch":
        store = OpenSearchVectorStore(OpenSearchSettings(uri=uri), retry_policy=FAST_RETRIES)
    else:
        store = LindormVectorStore(LindormSettings(uri=uri), retry_policy=FAST_RETRIES)
    with pytest.raises(Unavailable):
        await store.ensure_index(IndexSchema("nowhere", [VectorField("visual", DIM)]))
    await store.close()


async def test_server_version_is_reported(kind: str, fake: FakeSearchEngine, store: VectorStore) -> None:
    assert await store.server_version() == fake.version  # type: ignore[attr-defined]


async def test_long_file_id_lists_are_searched_in_chunks_and_merged(
    kind: str, fake: FakeSearchEngine, store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(es_module, "MAX_TERMS", 4)  # index.max_terms_count, shrunk
    await store.ensure_index(IndexSchema("chunks", [VectorField("visual", DIM)]))
    version = new_id()
    vectors = np.random.default_rng(8).standard_normal((30, DIM))
    rows = rows_of(vectors, version)
    await store.upsert("chunks", rows)
    allowed = list(range(0, 30, 3))  # 10 ids: 3 chunks
    target = vectors[0]
    truth = sorted(allowed, key=lambda i: -cosine(target, vectors[i]))[:3]
    before = len(searches(fake))
    for exact in (False, True):
        hits = await store.search(
            "chunks",
            VectorQuery(
                "visual",
                target.tolist(),
                3,
                VectorFilter(version, [rows[i].file_id for i in allowed]),
                exact=exact,
            ),
        )
        assert [h.file_id for h in hits] == [rows[i].file_id for i in truth]
    # Each path sent one request per chunk of ids.
    assert len(searches(fake)) - before >= 6
    assert await store.count("chunks", VectorFilter(version, [rows[i].file_id for i in allowed])) == 10


async def test_top_k_beyond_the_result_window_is_invalid(store: VectorStore) -> None:
    await store.ensure_index(IndexSchema("window", [VectorField("visual", DIM)]))
    with pytest.raises(InvalidVectorInput, match="result window"):
        await store.search("window", VectorQuery("visual", [1.0] * DIM, 10_001, VectorFilter(new_id())))


async def test_vectors_above_dense_vector_limits_are_refused_before_any_request() -> None:
    async with FakeSearchEngine(dialect_of("elasticsearch")) as fake:
        store = make_store("elasticsearch", fake)
        with pytest.raises(SchemaMismatch, match="4096"):
            await store.ensure_index(IndexSchema("huge", [VectorField("visual", 4097)]))
        await store.close()
        assert not [r for r in fake.requests if r.method == "PUT"]
