"""The planner: which path it takes, that it widens, and that filtered top-k is exact.

The property test runs random filter trees over a few thousand clustered
vectors in real pgvector (through the adapter) and compares the planner's
answer with a brute-force top-k over the files an independent Python oracle
says pass the filter.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from viewfinder_common.vectorstore import (
    IndexSchema,
    VectorField,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
)
from viewfinder_common.vectorstore.pgvector import PgVectorStore
from viewfinder_common.vectorstore.rows import exact_top_k
from viewfinder_search.adapters.catalogue import PostgresCatalogue
from viewfinder_search.adapters.pgvector_catalogue import PgVectorCatalogueSearch
from viewfinder_search.domain.conditions import (
    MATCH_ALL,
    AllOf,
    AnyOf,
    Compare,
    Comparison,
    Condition,
    HasTag,
    Not,
    OrderedAttribute,
    TagSourceScope,
    TextAttribute,
    TextMatch,
    TextMatchMode,
)
from viewfinder_search.domain.planner import (
    PlannerSettings,
    Strategy,
    VectorRequest,
    exact_path_limit,
    planned_vector_search,
)
from viewfinder_search.domain.sql import CatalogueFilter

# ── unit tests with an in-memory store and catalogue ──────────────────────


class MemoryStore:
    """A vector store whose ANN search is exact but may be told to come back short."""

    def __init__(self, vectors: dict[str, np.ndarray], version: str, ann_cap: int | None = None) -> None:
        self.ids = list(vectors)
        self.matrix = np.stack([vectors[i] for i in self.ids]).astype(np.float32)
        self.version = version
        self.ann_cap = ann_cap
        self.queries: list[VectorQuery] = []

    async def search(self, index: str, query: VectorQuery) -> list[VectorHit]:
        self.queries.append(query)
        assert query.filter.dataset_version_id == self.version
        allowed = set(query.filter.file_ids) if query.filter.file_ids is not None else None
        rows = [i for i, file_id in enumerate(self.ids) if allowed is None or file_id in allowed]
        hits = exact_top_k(
            np.asarray(query.vector, dtype=np.float32),
            [self.ids[i] for i in rows],
            self.matrix[rows],
            query.top_k,
            query.score_threshold,
        )
        if not query.exact and self.ann_cap is not None:
            return hits[: self.ann_cap]  # a graph walk that gave up early
        return hits


class MemoryCatalogue:
    """Candidate files are a fixed set of ids; the row estimate is exact unless one is given."""

    def __init__(self, passing: set[str], estimate: int | None = None) -> None:
        self.passing = passing
        self.estimate = len(passing) if estimate is None else estimate
        self.candidate_reads: list[int] = []

    async def version_size(self, dataset_version_id: str) -> int:
        return 400

    async def estimated_matches(self, catalogue_filter: CatalogueFilter) -> int:
        return self.estimate

    async def candidate_ids(self, catalogue_filter: CatalogueFilter, limit: int) -> list[str]:
        self.candidate_reads.append(limit)
        return sorted(self.passing)[:limit]

    async def matching_ids(self, catalogue_filter: CatalogueFilter, file_ids: Sequence[str]) -> set[str]:
        return {file_id for file_id in file_ids if file_id in self.passing}


VERSION = str(uuid.UUID(int=1))
SOME_FILTER = CatalogueFilter(VERSION, TextMatch(TextAttribute.NAME, TextMatchMode.CONTAINS, "x"))


def memory_fixture(count: int = 400, seed: int = 3) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = {str(uuid.UUID(int=i + 10)): rng.normal(size=8).astype(np.float32) for i in range(count)}
    return vectors, rng.normal(size=8).astype(np.float32)


def brute_force(vectors: dict[str, np.ndarray], passing: set[str], query: np.ndarray, k: int) -> list[str]:
    ids = sorted(passing)
    hits = exact_top_k(query, ids, np.stack([vectors[i] for i in ids]), k, None)
    return [hit.file_id for hit in hits]


async def test_selective_filter_takes_the_exact_prefilter_path() -> None:
    vectors, query = memory_fixture()
    passing = set(list(vectors)[:30])
    store = MemoryStore(vectors, VERSION)
    result = await planned_vector_search(
        store,  # type: ignore[arg-type]  # only search() is used
        MemoryCatalogue(passing),
        VectorRequest("idx", "f", query.tolist(), top_k=10),
        SOME_FILTER,
        PlannerSettings(exact_candidate_floor=100, exact_candidate_limit=100),
    )
    assert result.strategy is Strategy.EXACT_PREFILTER
    assert [hit.file_id for hit in result.hits] == brute_force(vectors, passing, query, 10)
    (sent,) = store.queries
    assert sent.exact
    assert sent.filter.file_ids is not None
    assert set(sent.filter.file_ids) == passing


async def test_broad_filter_widens_the_ann_request_until_top_k_pass() -> None:
    vectors, query = memory_fixture()
    passing = set(list(vectors)[::10])  # 10 % of the files
    store = MemoryStore(vectors, VERSION)
    result = await planned_vector_search(
        store,  # type: ignore[arg-type]
        # PostgreSQL's estimate says every file passes: the first request is the floor.
        MemoryCatalogue(passing, estimate=400),
        VectorRequest("idx", "f", query.tolist(), top_k=10),
        SOME_FILTER,
        PlannerSettings(
            exact_candidate_floor=5, exact_candidate_limit=5, overfetch_factor=2, min_search_breadth=8
        ),
    )
    assert result.strategy is Strategy.FILTERED_ANN
    assert [hit.file_id for hit in result.hits] == brute_force(vectors, passing, query, 10)
    fetched = [q.top_k for q in store.queries]
    assert fetched[0] == 20
    assert len(fetched) > 1
    # Each round at least doubles, and at most multiplies by 16.
    assert all(2 * a <= b <= 16 * a for a, b in itertools.pairwise(fetched))
    assert all(q.search_breadth is not None and q.search_breadth >= q.top_k for q in store.queries)
    assert not any(q.exact for q in store.queries)


async def test_broad_filter_sizes_the_first_request_from_the_estimate_and_reads_no_ids() -> None:
    vectors, query = memory_fixture()
    passing = set(list(vectors)[::2])  # 50 % of the files
    store = MemoryStore(vectors, VERSION)
    catalogue = MemoryCatalogue(passing)
    result = await planned_vector_search(
        store,  # type: ignore[arg-type]
        catalogue,
        VectorRequest("idx", "f", query.tolist(), top_k=10),
        SOME_FILTER,
        PlannerSettings(exact_candidate_floor=5, exact_candidate_limit=5, estimate_margin=1.5),
    )
    assert result.strategy is Strategy.FILTERED_ANN
    assert [hit.file_id for hit in result.hits] == brute_force(vectors, passing, query, 10)
    assert catalogue.candidate_reads == []
    # top_k / pass rate 0.5 x margin 1.5.
    assert store.queries[0].top_k == 30


async def test_filter_estimated_broad_but_selective_ends_on_the_exact_path() -> None:
    vectors, query = memory_fixture()
    passing = set(list(vectors)[:30])
    store = MemoryStore(vectors, VERSION)
    catalogue = MemoryCatalogue(passing, estimate=300)
    result = await planned_vector_search(
        store,  # type: ignore[arg-type]
        catalogue,
        VectorRequest("idx", "f", query.tolist(), top_k=10),
        SOME_FILTER,
        PlannerSettings(exact_candidate_floor=100, exact_candidate_limit=100),
    )
    assert result.strategy is Strategy.EXACT_PREFILTER
    assert [hit.file_id for hit in result.hits] == brute_force(vectors, passing, query, 10)
    # The first ANN round showed a low pass rate; the ids were read once, bounded.
    assert catalogue.candidate_reads == [101]
    assert not store.queries[0].exact
    assert store.queries[-1].exact
    assert set(store.queries[-1].filter.file_ids or ()) == passing


async def test_filter_estimated_selective_but_broad_takes_the_ann_path() -> None:
    vectors, query = memory_fixture()
    passing = set(list(vectors)[::2])
    store = MemoryStore(vectors, VERSION)
    catalogue = MemoryCatalogue(passing, estimate=3)
    result = await planned_vector_search(
        store,  # type: ignore[arg-type]
        catalogue,
        VectorRequest("idx", "f", query.tolist(), top_k=10),
        SOME_FILTER,
        PlannerSettings(exact_candidate_floor=50, exact_candidate_limit=50),
    )
    assert result.strategy is Strategy.FILTERED_ANN
    assert [hit.file_id for hit in result.hits] == brute_force(vectors, passing, query, 10)
    # The bounded read settled it: more than the limit match.
    assert catalogue.candidate_reads == [51]
    assert not any(q.exact for q in store.queries)


@pytest.mark.parametrize(
    ("max_breadth", "expected"), [(100, Strategy.EXACT_PREFILTER), (1000, Strategy.FILTERED_ANN)]
)
async def test_filter_needing_more_breadth_than_the_store_has_takes_the_exact_path(
    max_breadth: int, expected: Strategy
) -> None:
    vectors, query = memory_fixture()
    passing = set(list(vectors)[:30])
    # The break-even alone says ANN above 6 candidates; the first ANN request
    # would need 10 / (30 / 400) x 1.5 = 200 neighbours at breadth 600.
    settings = PlannerSettings(
        exact_candidate_floor=5,
        exact_candidate_limit=100,
        ann_cost_ratio=0.01,
        estimate_margin=1.5,
        breadth_factor=3,
        max_search_breadth=max_breadth,
    )
    result = await planned_vector_search(
        MemoryStore(vectors, VERSION),  # type: ignore[arg-type]
        MemoryCatalogue(passing),
        VectorRequest("idx", "f", query.tolist(), top_k=10),
        SOME_FILTER,
        settings,
    )
    assert result.strategy is expected
    assert [hit.file_id for hit in result.hits] == brute_force(vectors, passing, query, 10)


async def test_short_ann_answer_falls_back_to_an_exact_scan() -> None:
    vectors, query = memory_fixture()
    passing = set(list(vectors)[::7])
    store = MemoryStore(vectors, VERSION, ann_cap=15)
    result = await planned_vector_search(
        store,  # type: ignore[arg-type]
        MemoryCatalogue(passing),
        VectorRequest("idx", "f", query.tolist(), top_k=10),
        SOME_FILTER,
        PlannerSettings(exact_candidate_floor=5, exact_candidate_limit=5),
    )
    assert result.strategy is Strategy.EXACT_SCAN
    assert [hit.file_id for hit in result.hits] == brute_force(vectors, passing, query, 10)
    assert store.queries[-1].exact


async def test_filter_matching_fewer_than_top_k_returns_all_of_them() -> None:
    vectors, query = memory_fixture()
    passing = set(list(vectors)[:4])
    for limit in (0, 100):
        result = await planned_vector_search(
            MemoryStore(vectors, VERSION),  # type: ignore[arg-type]
            MemoryCatalogue(passing),
            VectorRequest("idx", "f", query.tolist(), top_k=10),
            SOME_FILTER,
            PlannerSettings(exact_candidate_floor=limit, exact_candidate_limit=limit),
        )
        assert [hit.file_id for hit in result.hits] == brute_force(vectors, passing, query, 10)


@pytest.mark.parametrize(
    ("top_k", "size", "expected"),
    [
        (10, 100_000, 3162),
        (10, 1_000_000, 10_000),
        (100, 100_000, 10_000),
        (1, 1_000, 500),
        (1000, 10_000_000, 20_000),
    ],
)
async def test_exact_path_limit_is_the_break_even_within_bounds(top_k: int, size: int, expected: int) -> None:
    class Sized(MemoryCatalogue):
        async def version_size(self, dataset_version_id: str) -> int:
            return size

    assert await exact_path_limit(Sized(set()), SOME_FILTER, top_k, PlannerSettings()) == expected


async def test_the_whole_version_skips_counting_and_uses_the_ann_index() -> None:
    vectors, query = memory_fixture()
    store = MemoryStore(vectors, VERSION)
    result = await planned_vector_search(
        store,  # type: ignore[arg-type]
        MemoryCatalogue(set(vectors)),
        VectorRequest("idx", "f", query.tolist(), top_k=10),
        CatalogueFilter(VERSION, MATCH_ALL),
        PlannerSettings(),
    )
    assert result.strategy is Strategy.FILTERED_ANN
    assert result.rounds == 1
    assert [hit.file_id for hit in result.hits] == brute_force(vectors, set(vectors), query, 10)


# ── property test over real pgvector ─────────────────────────────────────

DIM = 32
CLUSTERS = 40
FILES_PER_VERSION = 3000
TAG_RATES = {"common": 0.5, "medium": 0.1, "rare": 0.01}
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    id: str
    version: str
    key: str
    size: int
    width: int
    modified: datetime
    status: str
    tags: frozenset[tuple[str, str]]  # (source, name)
    vector: np.ndarray


def make_rows(rng: random.Random, version_ids: Sequence[str]) -> list[Row]:
    nprng = np.random.default_rng(rng.randrange(2**32))
    centres = nprng.normal(size=(CLUSTERS, DIM))
    rows = []
    for version in version_ids:
        for i in range(FILES_PER_VERSION if version == version_ids[0] else 500):
            cluster = int(nprng.integers(CLUSTERS))
            vector = centres[cluster] + 0.35 * nprng.normal(size=DIM)
            tags = {
                (rng.choice(("ai", "user")), name) for name, rate in TAG_RATES.items() if rng.random() < rate
            }
            # A tag tied to the neighbourhood: filters on it are correlated with the query.
            tags.add(("ai", f"cluster{cluster % 8}"))
            rows.append(
                Row(
                    id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    version=version,
                    key=f"c{cluster % 5}/img{i:05d}.jpg",
                    size=rng.randrange(1, 1_000_000),
                    width=rng.choice((320, 640, 1024, 1920)),
                    modified=EPOCH + timedelta(hours=rng.randrange(24 * 365)),
                    status="deleted" if rng.random() < 0.02 else "active",
                    tags=frozenset(tags),
                    vector=vector.astype(np.float32),
                )
            )
    return rows


def random_condition(rng: random.Random, depth: int = 0) -> Condition:
    """A random filter tree over the fixture's attributes."""
    kind = rng.random()
    if depth < 2 and kind < 0.3:
        parts = tuple(random_condition(rng, depth + 1) for _ in range(rng.randint(2, 3)))
        return AllOf(parts) if rng.random() < 0.6 else AnyOf(parts)
    if depth < 2 and kind < 0.4:
        return Not(random_condition(rng, depth + 1))
    leaf = rng.randrange(5)
    if leaf == 0:
        name = rng.choice([*TAG_RATES, *(f"cluster{c}" for c in range(8))])
        return HasTag(rng.choice(list(TagSourceScope)), name=name)
    if leaf == 1:
        return Compare(OrderedAttribute.SIZE, rng.choice(list(Comparison)), rng.randrange(1_000_000))
    if leaf == 2:
        return Compare(
            OrderedAttribute.WIDTH, rng.choice((Comparison.GE, Comparison.LT)), rng.choice((640, 1024))
        )
    if leaf == 3:
        moment = EPOCH + timedelta(days=rng.randrange(365))
        return Compare(OrderedAttribute.MODIFIED, rng.choice((Comparison.GE, Comparison.LT)), moment)
    return TextMatch(TextAttribute.DIRECTORY, TextMatchMode.EXACT, f"c{rng.randrange(5)}")


def holds(condition: Condition, row: Row) -> bool:
    """The oracle: what the condition means, evaluated in Python."""
    if isinstance(condition, AllOf):
        return all(holds(c, row) for c in condition.conditions)
    if isinstance(condition, AnyOf):
        return any(holds(c, row) for c in condition.conditions)
    if isinstance(condition, Not):
        return not holds(condition.condition, row)
    if isinstance(condition, HasTag):
        sources = {"ai", "user"} if condition.scope is TagSourceScope.ALL else {condition.scope.value}
        return any(source in sources and name == condition.name for source, name in row.tags)
    if isinstance(condition, Compare):
        value = {
            OrderedAttribute.SIZE: row.size,
            OrderedAttribute.WIDTH: row.width,
            OrderedAttribute.MODIFIED: row.modified,
        }[condition.attribute]
        ops = {
            Comparison.EQ: value == condition.value,
            Comparison.GT: value > condition.value,  # type: ignore[operator]
            Comparison.GE: value >= condition.value,  # type: ignore[operator]
            Comparison.LT: value < condition.value,  # type: ignore[operator]
            Comparison.LE: value <= condition.value,  # type: ignore[operator]
        }
        return ops[condition.comparison]
    if isinstance(condition, TextMatch):
        return row.key.rsplit("/", 1)[0] == condition.value
    raise AssertionError(condition)


async def load(
    conn: asyncpg.Connection, rows: list[Row], version_ids: Sequence[str], dataset_id: str
) -> None:
    await conn.executemany(
        "INSERT INTO files (id, dataset_id, version_id, bucket, key, uri, size, last_modified, width, status)"
        " VALUES ($1, $2, $3, 'b', $4, 's3://b/' || $4, $5, $6, $7, $8)",
        [(r.id, dataset_id, r.version, r.key, r.size, r.modified, r.width, r.status) for r in rows],
    )
    await conn.executemany(
        "INSERT INTO file_tags (file_id, tag, source) VALUES ($1, $2, $3)",
        [(r.id, name, source) for r in rows for source, name in r.tags],
    )


class CountingCatalogueSearch(PgVectorCatalogueSearch):
    """Counts the searches answered in one statement, by path."""

    exact_calls = 0
    # Walks that found top_k (the others fell back to the generic path).
    ann_answers = 0

    async def exact_top_k(
        self, request: VectorRequest, catalogue_filter: CatalogueFilter, limit: int
    ) -> list[VectorHit] | None:
        self.exact_calls += 1
        return await super().exact_top_k(request, catalogue_filter, limit)

    async def filtered_top_k(
        self, request: VectorRequest, catalogue_filter: CatalogueFilter, breadth: int
    ) -> list[VectorHit] | None:
        hits = await super().filtered_top_k(request, catalogue_filter, breadth)
        self.ann_answers += hits is not None
        return hits


@pytest.mark.parametrize(
    ("label", "settings", "in_one_statement"),
    [
        ("default planner", PlannerSettings(), False),
        ("mixed paths", PlannerSettings(exact_candidate_floor=50), False),
        ("mixed paths, in one statement", PlannerSettings(exact_candidate_floor=50), True),
        ("filtered ANN only", PlannerSettings(exact_candidate_floor=0, exact_candidate_limit=0), False),
        (
            "filtered ANN only, in one statement",
            PlannerSettings(exact_candidate_floor=0, exact_candidate_limit=0),
            True,
        ),
    ],
)
async def test_filtered_top_k_equals_brute_force(
    catalogue_pool: asyncpg.Pool,
    unique_name: str,
    label: str,
    settings: PlannerSettings,
    in_one_statement: bool,
) -> None:
    rng = random.Random(20250228)
    async with catalogue_pool.acquire() as conn:
        dataset_id = await conn.fetchval(
            "INSERT INTO datasets (name, bucket) VALUES ('prop', 'b') RETURNING id"
        )
        version_ids = [
            str(
                await conn.fetchval(
                    "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, $2) RETURNING id",
                    dataset_id,
                    n,
                )
            )
            for n in (1, 2)
        ]
        rows = make_rows(rng, version_ids)
        await load(conn, rows, version_ids, str(dataset_id))
    store = PgVectorStore(catalogue_pool)
    index = f"prop_{unique_name}"
    await store.ensure_index(IndexSchema(index, [VectorField("v", DIM)]))
    await store.upsert(index, [VectorRow(r.id, r.version, "e", {"v": r.vector.tolist()}) for r in rows])
    catalogue = PostgresCatalogue(catalogue_pool)

    one_statement = CountingCatalogueSearch(catalogue_pool, default_kind="pgvector")
    version = version_ids[0]
    in_version = [r for r in rows if r.version == version and r.status == "active"]
    strategies: set[Strategy] = set()
    recalls = []
    for trial in range(40):
        condition = MATCH_ALL if trial == 0 else random_condition(rng)
        passing = [r for r in in_version if holds(condition, r)]
        catalogue_filter = CatalogueFilter(version, condition)
        # The SQL agrees with the oracle on which files pass.
        assert set(await catalogue.candidate_ids(catalogue_filter, 10**6)) == {r.id for r in passing}, (
            condition
        )
        anchor = rng.choice(in_version).vector
        query = anchor + 0.2 * np.random.default_rng(trial).normal(size=DIM).astype(np.float32)
        top_k = rng.choice((1, 10, 50))
        threshold = rng.choice((None, None, 0.5))
        expected = exact_top_k(
            query,
            [r.id for r in passing],
            np.stack([r.vector for r in passing]) if passing else np.zeros((0, DIM), np.float32),
            top_k,
            threshold,
        )
        result = await planned_vector_search(
            store,
            catalogue,
            VectorRequest(index, "v", query.tolist(), top_k=top_k, score_threshold=threshold),
            catalogue_filter,
            settings,
            catalogue_vectors=one_statement if in_one_statement else None,
        )
        strategies.add(result.strategy)
        if result.strategy is Strategy.EXACT_PREFILTER:
            assert len(passing) <= settings.exact_candidate_limit
        got = [hit.file_id for hit in result.hits]
        want = [hit.file_id for hit in expected]
        assert len(got) == len(want), (label, trial, condition)
        recalls.append(len(set(got) & set(want)) / len(want) if want else float(not got))
        assert got == want, (label, trial, condition, result.strategy)
        for hit, reference in zip(result.hits, expected, strict=True):
            assert hit.score == pytest.approx(reference.score, abs=1e-5)
    assert sum(recalls) / len(recalls) == 1.0
    if in_one_statement and settings.exact_candidate_limit == 0:
        assert one_statement.ann_answers > 0
    elif in_one_statement:
        assert one_statement.exact_calls > 0
    if settings.exact_candidate_limit == 0:
        assert Strategy.FILTERED_ANN in strategies
    elif settings.exact_candidate_floor == 50:
        assert {Strategy.EXACT_PREFILTER, Strategy.FILTERED_ANN} <= strategies


async def test_vector_filter_by_file_ids_restricts_the_exact_search(
    catalogue_pool: asyncpg.Pool, unique_name: str
) -> None:
    """The adapter behaviour the prefilter path relies on: exact search within the given ids only."""
    store = PgVectorStore(catalogue_pool)
    index = f"ids_{unique_name}"
    await store.ensure_index(IndexSchema(index, [VectorField("v", 2)]))
    ids = [str(uuid.UUID(int=i + 1)) for i in range(5)]
    await store.upsert(index, [VectorRow(i, VERSION, "e", {"v": [1.0, n / 10]}) for n, i in enumerate(ids)])
    hits = await store.search(
        index,
        VectorQuery("v", [1.0, 0.0], top_k=3, filter=VectorFilter(VERSION, file_ids=ids[3:]), exact=True),
    )
    assert [hit.file_id for hit in hits] == ids[3:]


async def test_one_statement_paths_serve_pgvector_indexes_only_and_are_never_short(
    catalogue_pool: asyncpg.Pool, unique_name: str
) -> None:
    async with catalogue_pool.acquire() as conn:
        dataset = await conn.fetchval("INSERT INTO datasets (name, bucket) VALUES ('one', 'b') RETURNING id")
        version = str(
            await conn.fetchval(
                "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset
            )
        )
        ids = [
            str(
                await conn.fetchval(
                    "INSERT INTO files (dataset_id, version_id, bucket, key, uri) "
                    "VALUES ($1, $2, 'b', $3, 's3://b/' || $3) RETURNING id",
                    dataset,
                    version,
                    f"d/{n}.jpg",
                )
            )
            for n in range(5)
        ]
        for name, connection in (("in_milvus", "milvus"), ("in_pgvector", "pgvector")):
            await conn.execute(
                "INSERT INTO embedding_indexes (name, dataset_id, model_connection, model_id, model_version, "
                "vector_store_connection, vector_fields) VALUES ($1, $2, 'm', 'm', '1', $3, '[]')",
                name,
                dataset,
                connection,
            )
    pgvector_default = PgVectorCatalogueSearch(catalogue_pool, default_kind="pgvector")
    milvus_default = PgVectorCatalogueSearch(catalogue_pool, default_kind="milvus")
    assert await pgvector_default.serves("in_pgvector")
    assert await milvus_default.serves("in_pgvector")
    assert not await pgvector_default.serves("in_milvus")
    assert await pgvector_default.serves("unregistered")
    assert not await milvus_default.serves("unregistered")

    store = PgVectorStore(catalogue_pool)
    index = f"one_{unique_name}"
    await store.ensure_index(IndexSchema(index, [VectorField("v", 2)]))
    await store.upsert(index, [VectorRow(i, version, "e", {"v": [1.0, n / 10]}) for n, i in enumerate(ids)])
    # The last file has no vector: it is a candidate but never a hit.
    await store.delete(index, ids[4:])
    request = VectorRequest(index, "v", [1.0, 0.0], top_k=3)
    in_d = CatalogueFilter(version, TextMatch(TextAttribute.DIRECTORY, TextMatchMode.EXACT, "d"))
    hits = await pgvector_default.exact_top_k(request, in_d, 5)
    assert hits is not None
    assert [hit.file_id for hit in hits] == ids[:3]
    assert hits[0].score == pytest.approx(1.0)
    assert await pgvector_default.exact_top_k(request, in_d, 4) is None
    threshold = VectorRequest(index, "v", [1.0, 0.0], top_k=3, score_threshold=0.99)
    assert [hit.file_id for hit in await pgvector_default.exact_top_k(threshold, in_d, 5) or []] == ids[:2]
    nothing = CatalogueFilter(version, TextMatch(TextAttribute.DIRECTORY, TextMatchMode.EXACT, "e"))
    assert await pgvector_default.exact_top_k(request, nothing, 5) == []

    # The filtered ANN walk: top_k passing rows, or None when it comes back short.
    walked = await pgvector_default.filtered_top_k(request, in_d, breadth=40)
    assert [hit.file_id for hit in walked or []] == ids[:3]
    not_first = CatalogueFilter(version, Not(TextMatch(TextAttribute.NAME, TextMatchMode.EXACT, "0.jpg")))
    walked = await pgvector_default.filtered_top_k(request, not_first, breadth=40)
    assert [hit.file_id for hit in walked or []] == ids[1:4]
    four_rows = VectorRequest(index, "v", [1.0, 0.0], top_k=5)
    assert await pgvector_default.filtered_top_k(four_rows, in_d, breadth=40) is None
    assert await pgvector_default.filtered_top_k(request, nothing, breadth=40) is None


async def test_row_estimates_follow_the_statistics_and_are_cached_per_filter(
    catalogue_pool: asyncpg.Pool,
) -> None:
    async with catalogue_pool.acquire() as conn:
        dataset = await conn.fetchval("INSERT INTO datasets (name, bucket) VALUES ('est', 'b') RETURNING id")
        version = str(
            await conn.fetchval(
                "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset
            )
        )
        await conn.execute(
            "INSERT INTO files (dataset_id, version_id, bucket, key, uri, width) "
            "SELECT $1, $2, 'b', 'k' || n, 's3://b/k' || n, CASE WHEN n % 10 = 0 THEN 1920 ELSE 320 END "
            "FROM generate_series(1, 5000) AS n",
            dataset,
            version,
        )
        await conn.execute("ANALYZE files")
    wide = CatalogueFilter(version, Compare(OrderedAttribute.WIDTH, Comparison.GE, 1024))
    narrow = CatalogueFilter(version, Compare(OrderedAttribute.WIDTH, Comparison.LT, 1024))
    cached = PostgresCatalogue(catalogue_pool, estimate_ttl_s=3600)
    # PostgreSQL's estimate with these values: about 500 and 4,500 files.
    assert 300 <= await cached.estimated_matches(wide) <= 700
    assert 4000 <= await cached.estimated_matches(narrow) <= 5000
    async with catalogue_pool.acquire() as conn:
        await conn.execute("UPDATE files SET width = 1920")
        await conn.execute("ANALYZE files")
    assert 300 <= await cached.estimated_matches(wide) <= 700
    assert await PostgresCatalogue(catalogue_pool, estimate_ttl_s=0).estimated_matches(wide) >= 4500
