"""The VectorStore contract, run against every adapter (pgvector and the Milvus Lite server).

Each test takes ``backend`` (parametrised in conftest), so a behaviour that
one adapter gets wrong fails under that adapter's name.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from typing import Any

import numpy as np
import pytest

from viewfinder_common.vectorstore import (
    IndexNotFound,
    IndexSchema,
    InvalidVectorInput,
    SchemaMismatch,
    VectorField,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
)

pytestmark = pytest.mark.stack

DIM = 16


def new_id() -> str:
    return str(uuid.uuid4())


def one_field(name: str, dim: int = DIM) -> IndexSchema:
    return IndexSchema(name, [VectorField("visual", dim)])


def rows_of(
    vectors: Any, version: str, etag: str = "etag-1", ids: list[str] | None = None
) -> list[VectorRow]:
    ids = ids if ids is not None else [new_id() for _ in range(len(vectors))]
    return [
        VectorRow(
            file_id=file_id, dataset_version_id=version, etag=etag, vectors={"visual": list(map(float, v))}
        )
        for file_id, v in zip(ids, vectors, strict=True)
    ]


def query(vector: Any, version: str, top_k: int = 10, **kwargs: Any) -> VectorQuery:
    file_ids = kwargs.pop("file_ids", None)
    return VectorQuery(
        vector_field=kwargs.pop("field", "visual"),
        vector=[float(x) for x in vector],
        top_k=top_k,
        filter=VectorFilter(dataset_version_id=version, file_ids=file_ids),
        **kwargs,
    )


def assert_true_top_k(
    hits: list[VectorHit], truth: dict[str, float], top_k: int, tolerance: float = 1e-4
) -> None:
    """``hits`` is the top-k of ``truth`` (file id → exact score), up to float ties at the boundary."""
    expected = sorted(truth.values(), reverse=True)[:top_k]
    assert len(hits) == len(expected), (len(hits), len(expected))
    assert len({h.file_id for h in hits}) == len(hits), "duplicate file ids in the result"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True), "hits are not ordered by score"
    if not expected:
        return
    boundary = expected[-1]
    for hit, expected_score in zip(hits, expected, strict=True):
        assert hit.file_id in truth, f"{hit.file_id} is outside the filter"
        assert math.isclose(hit.score, truth[hit.file_id], abs_tol=tolerance), (hit, truth[hit.file_id])
        assert truth[hit.file_id] >= boundary - tolerance, f"{hit.file_id} is not among the true top {top_k}"
        assert math.isclose(hit.score, expected_score, abs_tol=tolerance)


# ── index lifecycle ─────────────────────────────────────────────────


async def test_ensure_index_is_idempotent_and_starts_empty(backend: Any, index_name: str) -> None:
    schema = IndexSchema(index_name, [VectorField("visual", DIM), VectorField("semantic", 8)])
    await backend.store.ensure_index(schema)
    await backend.store.ensure_index(schema)
    other = await backend.other_store()
    await other.ensure_index(schema)  # a second replica validates what the first created
    assert await backend.store.count(index_name) == 0


async def test_ensure_index_rejects_an_existing_index_with_other_dimensions(
    backend: Any, index_name: str
) -> None:
    await backend.store.ensure_index(one_field(index_name, DIM))
    other = await backend.other_store()
    with pytest.raises(SchemaMismatch) as caught:
        await other.ensure_index(one_field(index_name, DIM + 1))
    message = str(caught.value)
    assert "'visual'" in message
    assert str(DIM) in message
    assert str(DIM + 1) in message


async def test_ensure_index_rejects_an_existing_index_without_a_field(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(one_field(index_name))
    other = await backend.other_store()
    with pytest.raises(SchemaMismatch, match=r"'semantic' is missing"):
        await other.ensure_index(
            IndexSchema(index_name, [VectorField("visual", DIM), VectorField("semantic", 8)])
        )


@pytest.mark.parametrize(
    "schema",
    [
        IndexSchema("Bad-Name", [VectorField("visual", 4)]),
        IndexSchema('x"; DROP TABLE files; --', [VectorField("visual", 4)]),
        IndexSchema("ok_name", [VectorField("file_id", 4)]),
        IndexSchema("ok_name", [VectorField("visual", 4), VectorField("visual", 4)]),
        IndexSchema("ok_name", [VectorField("visual", 0)]),
        IndexSchema("ok_name", []),
    ],
)
async def test_ensure_index_rejects_unsafe_or_malformed_schemas(backend: Any, schema: IndexSchema) -> None:
    with pytest.raises(InvalidVectorInput):
        await backend.store.ensure_index(schema)


async def test_operations_on_a_missing_index_raise_index_not_found(backend: Any, index_name: str) -> None:
    version = new_id()
    with pytest.raises(IndexNotFound):
        await backend.store.count(index_name)
    with pytest.raises(IndexNotFound):
        await backend.store.upsert(index_name, rows_of(np.ones((1, DIM)), version))
    with pytest.raises(IndexNotFound):
        await backend.store.search(index_name, query(np.ones(DIM), version))
    with pytest.raises(IndexNotFound):
        await backend.store.delete(index_name, [new_id()])


async def test_an_index_created_elsewhere_is_usable_without_ensure_index(
    backend: Any, index_name: str
) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version = new_id()
    rows = rows_of(np.eye(DIM), version)
    other = await backend.other_store()  # knows nothing about the index yet: reads its schema
    await other.upsert(index_name, rows)
    hits = await other.search(index_name, query(np.eye(DIM)[3], version, top_k=1))
    assert [h.file_id for h in hits] == [rows[3].file_id]


# ── writes ──────────────────────────────────────────────────────────


async def test_upsert_twice_keeps_exactly_one_row_per_file(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version = new_id()
    rng = np.random.default_rng(7)
    first = rows_of(rng.standard_normal((30, DIM)), version)
    await backend.store.upsert(index_name, first)
    await backend.store.upsert(index_name, first)  # a redelivered event changes nothing
    assert await backend.store.count(index_name) == 30

    # The same files with new content: replaced in place, not added.
    moved = rng.standard_normal((30, DIM))
    second = rows_of(moved, version, etag="etag-2", ids=[r.file_id for r in first])
    await backend.store.upsert(index_name, second)
    assert await backend.store.count(index_name) == 30
    for i in (0, 17, 29):
        hits = await backend.store.search(index_name, query(moved[i], version, top_k=1, exact=True))
        assert hits[0].file_id == first[i].file_id
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)


async def test_upsert_of_one_file_twice_in_a_batch_keeps_the_last(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version = new_id()
    file_id = new_id()
    old, new = np.eye(DIM)[0], np.eye(DIM)[1]
    await backend.store.upsert(
        index_name, [*rows_of([old], version, ids=[file_id]), *rows_of([new], version, ids=[file_id.upper()])]
    )
    assert await backend.store.count(index_name) == 1
    hits = await backend.store.search(index_name, query(new, version, top_k=1))
    assert [h.file_id for h in hits] == [file_id]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


async def test_upsert_in_many_batches_writes_every_row(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version = new_id()
    rows = rows_of(np.random.default_rng(3).standard_normal((450, DIM)), version)  # batch size is 200
    await backend.store.upsert(index_name, rows)
    assert await backend.store.count(index_name) == 450


async def test_delete_removes_rows_and_ignores_missing_ids(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version = new_id()
    rows = rows_of(np.eye(DIM), version)
    await backend.store.upsert(index_name, rows)
    gone = [rows[2].file_id, rows[5].file_id]
    await backend.store.delete(index_name, [*gone, new_id()])
    await backend.store.delete(index_name, [])
    assert await backend.store.count(index_name) == DIM - 2
    hits = await backend.store.search(index_name, query(np.eye(DIM)[2], version, top_k=DIM))
    assert not set(gone) & {h.file_id for h in hits}
    assert len(hits) == DIM - 2


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: dataclasses.replace(r, vectors={"visual": [1.0] * (DIM - 1)}), "dimensions"),
        (lambda r: dataclasses.replace(r, vectors={"visual": [float("nan")] * DIM}), "NaN"),
        (lambda r: dataclasses.replace(r, vectors={"visual": [0.0] * DIM}), "zero vector"),
        (lambda r: dataclasses.replace(r, vectors={}), "needs vector fields"),
        (
            lambda r: dataclasses.replace(r, vectors={"visual": [1.0] * DIM, "other": [1.0]}),
            "needs vector fields",
        ),
        (lambda r: dataclasses.replace(r, file_id='1" or file_id != "'), "not a UUID"),
        (lambda r: dataclasses.replace(r, dataset_version_id="v1'; DROP TABLE files; --"), "not a UUID"),
    ],
)
async def test_upsert_rejects_bad_rows_and_writes_nothing(
    backend: Any, index_name: str, mutate: Any, reason: str
) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version = new_id()
    good = rows_of(np.eye(DIM)[:3], version)
    with pytest.raises(InvalidVectorInput, match=reason):
        await backend.store.upsert(index_name, [*good, mutate(good[0])])
    assert await backend.store.count(index_name) == 0


# ── search ──────────────────────────────────────────────────────────


async def test_search_returns_the_nearest_neighbours_of_a_clustered_fixture(
    backend: Any, index_name: str, make_clustered: Any, cosine_reference: Any
) -> None:
    data = make_clustered(600, DIM, clusters=12, seed=11)
    await backend.store.ensure_index(one_field(index_name))
    version = new_id()
    rows = rows_of(data.vectors, version)
    await backend.store.upsert(index_name, rows)
    await backend.settle(index_name)
    all_rows = np.arange(len(rows))
    for cluster in (0, 5, 11):
        center = data.centers[cluster]
        truth = {rows[i].file_id: s for i, s in cosine_reference(center, data.vectors, all_rows).items()}
        for exact in (False, True):
            hits = await backend.store.search(index_name, query(center, version, top_k=10, exact=exact))
            assert_true_top_k(hits, truth, 10)
            # The neighbours of a cluster centre are members of that cluster.
            members = {rows[i].file_id for i in np.flatnonzero(data.labels == cluster)}
            assert {h.file_id for h in hits} <= members


async def test_search_stays_inside_the_dataset_version(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version_a, version_b = new_id(), new_id()
    target = np.eye(DIM)[0]
    rows_a = rows_of(np.tile(target, (5, 1)) + 0.01 * np.eye(DIM)[1:6], version_a)
    rows_b = rows_of(np.eye(DIM)[1:4] + 0.5 * target, version_b)
    await backend.store.upsert(index_name, rows_a + rows_b)
    for exact in (False, True):
        hits = await backend.store.search(index_name, query(target, version_b, top_k=10, exact=exact))
        assert {h.file_id for h in hits} == {r.file_id for r in rows_b}
        assert await backend.store.search(index_name, query(target, new_id(), exact=exact)) == []


async def test_search_restricted_to_file_ids(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version, other_version = new_id(), new_id()
    rows = rows_of(np.random.default_rng(5).standard_normal((200, DIM)), version)
    elsewhere = rows_of(np.eye(DIM)[:1], other_version)
    await backend.store.upsert(index_name, rows + elsewhere)
    allowed = [rows[i].file_id for i in (3, 50, 120, 199)]
    for exact in (False, True):
        hits = await backend.store.search(
            index_name,
            query(np.eye(DIM)[0], version, top_k=10, exact=exact, file_ids=[*allowed, elsewhere[0].file_id]),
        )
        # Every allowed file, none of the other version's (even though it is the closest).
        assert sorted(h.file_id for h in hits) == sorted(allowed)
        assert (
            await backend.store.search(index_name, query(np.eye(DIM)[0], version, exact=exact, file_ids=[]))
            == []
        )


async def test_search_applies_threshold_and_top_k(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version = new_id()
    target = np.eye(DIM)[0]
    # Cosine similarity to the target: cos(angle) for angles 0°, 10°, …, 170°.
    angles = np.radians(np.arange(0, 180, 10))
    vectors = np.zeros((len(angles), DIM))
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    rows = rows_of(vectors, version)
    await backend.store.upsert(index_name, rows)
    for exact in (False, True):
        hits = await backend.store.search(
            index_name, query(target, version, top_k=50, score_threshold=0.5, exact=exact)
        )
        # cos(60°) = 0.5 sits on the threshold; float rounding may put it on either side.
        assert [h.file_id for h in hits][:6] == [r.file_id for r in rows[:6]]
        assert all(h.score >= 0.5 for h in hits)
        assert len(hits) in (6, 7)
        hits = await backend.store.search(index_name, query(target, version, top_k=3, exact=exact))
        assert [h.file_id for h in hits] == [r.file_id for r in rows[:3]]
        assert [round(h.score, 4) for h in hits] == [round(math.cos(a), 4) for a in angles[:3]]
        assert (
            await backend.store.search(index_name, query(target, version, score_threshold=1.01, exact=exact))
            == []
        )


async def test_named_fields_are_searched_independently(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(
        IndexSchema(index_name, [VectorField("visual", DIM), VectorField("semantic", 4)])
    )
    version = new_id()
    rng = np.random.default_rng(9)
    visual = rng.standard_normal((40, DIM))
    semantic = rng.standard_normal((40, 4))
    rows = [
        VectorRow(new_id(), version, "e", {"visual": visual[i].tolist(), "semantic": semantic[i].tolist()})
        for i in range(40)
    ]
    await backend.store.upsert(index_name, rows)
    for exact in (False, True):
        by_visual = await backend.store.search(index_name, query(visual[7], version, top_k=1, exact=exact))
        by_semantic = await backend.store.search(
            index_name, query(semantic[31], version, top_k=1, field="semantic", exact=exact)
        )
        assert by_visual[0].file_id == rows[7].file_id
        assert by_semantic[0].file_id == rows[31].file_id
    with pytest.raises(InvalidVectorInput, match="no vector field 'caption'"):
        await backend.store.search(index_name, query(semantic[0], version, field="caption"))
    with pytest.raises(InvalidVectorInput, match="dimensions"):
        await backend.store.search(index_name, query(visual[0], version, field="semantic"))


@pytest.mark.parametrize(
    "bad",
    [
        {"top_k": 0},
        {"vector": [0.0] * DIM},
        {"vector": [float("inf")] + [1.0] * (DIM - 1)},
        {"score_threshold": float("nan")},
        {"search_breadth": 0},
        {"filter": VectorFilter("not-a-uuid")},
        {"filter": VectorFilter(str(uuid.uuid4()), ['") or true or ("'])},
    ],
)
async def test_search_rejects_bad_queries(backend: Any, index_name: str, bad: dict[str, Any]) -> None:
    await backend.store.ensure_index(one_field(index_name))
    good = query(np.ones(DIM), new_id())
    with pytest.raises(InvalidVectorInput):
        await backend.store.search(index_name, dataclasses.replace(good, **bad))


async def test_count_with_and_without_filter(backend: Any, index_name: str) -> None:
    await backend.store.ensure_index(one_field(index_name))
    version_a, version_b = new_id(), new_id()
    rows_a = rows_of(np.random.default_rng(1).standard_normal((25, DIM)), version_a)
    rows_b = rows_of(np.random.default_rng(2).standard_normal((8, DIM)), version_b)
    await backend.store.upsert(index_name, rows_a + rows_b)
    assert await backend.store.count(index_name) == 33
    assert await backend.store.count(index_name, VectorFilter(version_a)) == 25
    assert await backend.store.count(index_name, VectorFilter(version_b)) == 8
    assert await backend.store.count(index_name, VectorFilter(new_id())) == 0
    picked = [rows_a[0].file_id, rows_a[1].file_id, rows_b[0].file_id, new_id()]
    assert await backend.store.count(index_name, VectorFilter(version_a, picked)) == 2
    assert await backend.store.count(index_name, VectorFilter(version_a, [])) == 0


# ── exact == brute force, ANN never short ───────────────────────────


async def test_exact_search_equals_brute_force_under_random_filters(
    backend: Any, index_name: str, make_clustered: Any, cosine_reference: Any
) -> None:
    """Property-style (seeded): a few thousand clustered vectors in two versions, random
    filters, top-k and thresholds. Exact search must be the brute-force top-k (recall 1.0);
    ANN must never come back short and must find nearly all true neighbours."""
    data = make_clustered(3000, 32, clusters=40, seed=2026)
    schema = IndexSchema(index_name, [VectorField("visual", 32)])
    await backend.store.ensure_index(schema)
    versions = [new_id(), new_id()]
    rng = np.random.default_rng(4242)
    version_of = rng.choice(2, size=len(data.vectors), p=[0.8, 0.2])
    ids = [new_id() for _ in range(len(data.vectors))]
    await backend.store.upsert(
        index_name,
        [
            VectorRow(ids[i], versions[version_of[i]], "e", {"visual": data.vectors[i].tolist()})
            for i in range(len(ids))
        ],
    )
    assert await backend.store.count(index_name) == len(ids)
    await backend.settle(index_name)

    ann_found = ann_expected = 0
    for trial in range(40):
        version_index = int(rng.integers(0, 2))
        in_version = np.flatnonzero(version_of == version_index)
        file_rows: np.ndarray | None = None
        kind = trial % 4
        if kind in (1, 2):
            # A random id subset, selective (1-10 files) or broad (up to 400), with
            # ids of the other version mixed in: those must never be returned.
            size = int(rng.integers(1, 11)) if kind == 1 else int(rng.integers(50, 400))
            file_rows = rng.choice(len(ids), size=size, replace=False)
        candidates = in_version if file_rows is None else np.intersect1d(in_version, file_rows)
        top_k = int(rng.choice([1, 5, 10, 37]))
        threshold = float(rng.uniform(0.2, 0.8)) if kind == 3 else None
        if trial % 2:
            target = data.centers[int(rng.integers(0, len(data.centers)))]
        else:
            target = data.vectors[int(rng.integers(0, len(ids)))]
        target = target + 0.1 * rng.standard_normal(32)
        truth = {ids[i]: s for i, s in cosine_reference(target, data.vectors, candidates).items()}
        if threshold is not None:
            truth = {file_id: s for file_id, s in truth.items() if s >= threshold}
        file_ids = None if file_rows is None else [ids[i] for i in file_rows]
        q = query(target, versions[version_index], top_k=top_k, file_ids=file_ids, score_threshold=threshold)

        exact_hits = await backend.store.search(index_name, dataclasses.replace(q, exact=True))
        assert_true_top_k(exact_hits, truth, top_k)

        ann_hits = await backend.store.search(index_name, q)
        expected = sorted(truth, key=lambda f: -truth[f])[:top_k]
        if threshold is None:
            assert len(ann_hits) == len(expected), f"trial {trial}: ANN came back short"
        assert {h.file_id for h in ann_hits} <= set(truth), f"trial {trial}: ANN broke the filter"
        ann_found += len({h.file_id for h in ann_hits} & set(expected))
        ann_expected += len(expected)
    assert ann_found / ann_expected >= 0.9, f"ANN recall {ann_found / ann_expected:.3f}"


@pytest.mark.parametrize("share", [0.01, 0.5])
async def test_ann_under_a_version_filter_is_not_short(backend: Any, index_name: str, share: float) -> None:
    """A post-filtered HNSW walk with a small breadth returns about ``share * breadth`` rows;
    the adapters must return the full top-k anyway (1%: few candidates; 50%: the planner
    walks the graph and must keep walking)."""
    rng = np.random.default_rng(77)
    await backend.store.ensure_index(one_field(index_name))
    big, small = new_id(), new_id()
    vectors = rng.standard_normal((2000, DIM))
    cut = int(2000 * (1 - share))
    rows = rows_of(vectors[:cut], big) + rows_of(vectors[cut:], small)
    await backend.store.upsert(index_name, rows)
    await backend.settle(index_name)
    small_ids = {r.file_id for r in rows[cut:]}
    for top_k in (10, 50):
        for probe in (0, 1500, 1999):
            hits = await backend.store.search(
                index_name, query(vectors[probe], small, top_k=top_k, search_breadth=top_k)
            )
            assert len(hits) == min(top_k, len(small_ids))
            assert {h.file_id for h in hits} <= small_ids
