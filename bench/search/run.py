"""Search latency and recall against a raw vector-store query in the same run.

Data: a Gaussian mixture (``--clusters`` centres, default 2,000) of
``--vectors`` 384-d vectors (default 100,000; ``--vectors 1000000`` for the
big run) — never i.i.d. random vectors, on which every ANN index looks broken
(DESIGN §9). Each file carries tags ``sel1`` / ``sel10`` / ``sel50`` with
probability 1 %, 10 %, 50 %, a width and a format, so filters of known
selectivity exist.

For each scenario it prints p50/p99 latency, recall@10 against a brute-force
top-10 over exactly the files that pass the filter, and the p50 and p99 ratios to the
raw baseline: ``VectorStore.search`` on the version, no catalogue involved
(goal: ratio ≤ 1.5, recall ≥ 0.95). Every scenario, the baseline included,
runs over one pool with the search service's connection settings
(``SERVER_SETTINGS``), so baseline and scenarios differ only in what search
adds. The "pgvector alone" rows are the same tag filters written straight
into one pgvector query (iterative scan, the store's default breadth): what
the store gives without the planner, for comparison, recall included.
Before measuring, every table and index is read into shared_buffers
(``pg_prewarm``), as on a serving database; the local stack sizes
shared_buffers at a quarter of the machine's memory (``VF_PG_SHARED_BUFFERS``).

Loading writes the rows first and builds the HNSW graph once at the end
(measured on the 2-core dev machine at ef_construction 128: 100k in 40-75 s,
1M in 9.5 min, 6.7 of them for the graph).

    .venv/bin/python bench/search/run.py                      # 100k
    .venv/bin/python bench/search/run.py --vectors 1000000    # big run
    .venv/bin/python bench/search/run.py --keep               # keep the database ...
    .venv/bin/python bench/search/run.py --database NAME      # ... and reuse it
    .venv/bin/python bench/search/run.py --vectors 1000000 --database NAME --load-only

Needs the local stack's PostgreSQL (``make up``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from viewfinder.v1 import search_pb2
from viewfinder_common.db import migrate
from viewfinder_common.settings import DatabaseSettings
from viewfinder_common.vectorstore import (
    DEFAULT_SEARCH_BREADTH,
    IndexSchema,
    VectorField,
    VectorFilter,
    VectorQuery,
    VectorRow,
)
from viewfinder_common.vectorstore.pgvector import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    PgVectorStore,
    fetch_with_hnsw_settings,
)
from viewfinder_common.vectorstore.postgres_sql import quote_ident, table_name
from viewfinder_search.adapters.catalogue import SERVER_SETTINGS, PostgresCatalogue
from viewfinder_search.adapters.pgvector_catalogue import PgVectorCatalogueSearch
from viewfinder_search.domain.conditions import MATCH_ALL, Condition, HasTag, TagSourceScope
from viewfinder_search.domain.dsl import parse_query
from viewfinder_search.domain.engine import EmbeddedQuery, Searcher
from viewfinder_search.domain.page_token import PageTokenCodec
from viewfinder_search.domain.planner import PlannerSettings, Strategy, VectorRequest, planned_vector_search
from viewfinder_search.domain.request import search_spec
from viewfinder_search.domain.semantic import SemanticQuery
from viewfinder_search.domain.sql import CatalogueFilter

DIM = 384
FIELD = "semantic"
INDEX = "bench_search"
SELECTIVITY = {"sel1": 0.01, "sel10": 0.10, "sel50": 0.50}
WIDTHS = (320, 640, 1024, 1920)
TOP_K = 10
# Last-modified time of file 0; file i was modified i seconds later.
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass
class Fixture:
    version_id: str
    ids: list[str]
    vectors: np.ndarray  # unit rows
    tags: dict[str, np.ndarray]  # tag -> bool mask
    widths: np.ndarray
    jpeg: np.ndarray  # bool mask


def make_fixture(count: int, clusters: int, seed: int) -> tuple[Fixture, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM)).astype(np.float32)
    assignment = rng.integers(clusters, size=count)
    vectors = np.empty((count, DIM), dtype=np.float32)
    for start in range(0, count, 50_000):
        stop = min(count, start + 50_000)
        block = centres[assignment[start:stop]] + 0.6 * rng.normal(size=(stop - start, DIM)).astype(
            np.float32
        )
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    tags = {name: rng.random(count) < rate for name, rate in SELECTIVITY.items()}
    widths = rng.choice(np.array(WIDTHS), size=count)
    jpeg = rng.random(count) < 0.7
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(count)]
    fixture = Fixture("", ids, vectors, tags, widths, jpeg)
    # Queries come from the same mixture but are not in the data.
    query_centres = centres[rng.integers(clusters, size=1000)]
    queries = query_centres + 0.6 * rng.normal(size=query_centres.shape).astype(np.float32)
    return fixture, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


async def load(pool: asyncpg.Pool, store: PgVectorStore, fixture: Fixture, ef_construction: int) -> None:
    epoch = EPOCH
    async with pool.acquire() as conn:
        dataset_id = await conn.fetchval(
            "INSERT INTO datasets (name, bucket) VALUES ('bench', 'bench') RETURNING id"
        )
        version_id = await conn.fetchval(
            "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset_id
        )
        fixture.version_id = str(version_id)
        records = [
            (
                uuid.UUID(file_id),
                dataset_id,
                version_id,
                "bench",
                f"img/{i:07d}.jpg",
                f"s3://bench/img/{i:07d}.jpg",
                1000 + i,
                epoch + timedelta(seconds=i),
                "JPEG" if fixture.jpeg[i] else "PNG",
                int(fixture.widths[i]),
                480,
            )
            for i, file_id in enumerate(fixture.ids)
        ]
        await conn.copy_records_to_table(
            "files",
            records=records,
            columns=[
                "id",
                "dataset_id",
                "version_id",
                "bucket",
                "key",
                "uri",
                "size",
                "last_modified",
                "format",
                "width",
                "height",
            ],
        )
        tag_records = [
            (uuid.UUID(fixture.ids[i]), name, "ai", "", 0.9)
            for name, mask in fixture.tags.items()
            for i in np.flatnonzero(mask)
        ]
        await conn.copy_records_to_table(
            "file_tags", records=tag_records, columns=["file_id", "tag", "source", "value", "confidence"]
        )
        # VACUUM too: index-only scans need the visibility map (autovacuum sets it later).
        await conn.execute("VACUUM ANALYZE files")
        await conn.execute("VACUUM ANALYZE file_tags")
    await store.ensure_index(IndexSchema(INDEX, [VectorField(FIELD, DIM)]))
    table = quote_ident(table_name(INDEX))
    async with pool.acquire() as conn:
        # Rows first, graph after: one bulk HNSW build is many times faster than
        # inserting a million rows into the graph one by one.
        hnsw = await conn.fetchval(
            "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam WHERE i.indrelid = $1::regclass AND am.amname = 'hnsw'",
            table,
        )
        await conn.execute(f"DROP INDEX {hnsw}")
    started = time.perf_counter()
    batch = 5000
    for start in range(0, len(fixture.ids), batch):
        rows = [
            VectorRow(fixture.ids[i], fixture.version_id, "e", {FIELD: fixture.vectors[i]})
            for i in range(start, min(len(fixture.ids), start + batch))
        ]
        await store.upsert(INDEX, rows)
        done = start + len(rows)
        if done % 100_000 == 0 or done == len(fixture.ids):
            rate = done / (time.perf_counter() - started)
            print(f"  vectors {done:>8}/{len(fixture.ids)}  {rate:,.0f}/s", flush=True)
    started = time.perf_counter()
    async with pool.acquire() as conn:
        # The graph of 1M x 384-d needs ~2 GB to be built in memory; the
        # settings are this session's only.
        await conn.execute("SET maintenance_work_mem = '3GB'; SET max_parallel_maintenance_workers = 2")
        await conn.execute(
            f"CREATE INDEX ON {table} USING hnsw ({quote_ident(FIELD)} vector_cosine_ops) "
            f"WITH (m = {HNSW_M}, ef_construction = {ef_construction})"
        )
        await conn.execute(f"ANALYZE {table}")
        await conn.execute("RESET maintenance_work_mem; RESET max_parallel_maintenance_workers")
    print(
        f"  HNSW index (m {HNSW_M}, ef_construction {ef_construction}) built in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )


async def prewarm(pool: asyncpg.Pool) -> None:
    """Reads every table and index of the bench into shared_buffers, as a
    serving database holds its working set; without it the first few hundred
    queries measure the page cache instead of search."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        blocks = await conn.fetchval(
            "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')"
        )
        buffers = await conn.fetchval("SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers'")
    print(
        f"prewarmed {blocks * 8 / 1024:,.0f} MB in {time.perf_counter() - started:.0f} s "
        f"(shared_buffers {buffers * 8 / 1024:,.0f} MB)",
        flush=True,
    )


class ExactTopIds:
    """Brute-force top-10 ids among the files of a mask; the scores of one query are computed once."""

    def __init__(self, fixture: Fixture) -> None:
        self._fixture = fixture
        self._query: np.ndarray | None = None
        self._scores = np.empty(0, dtype=np.float32)

    def __call__(self, mask: np.ndarray | None, query: np.ndarray) -> list[str]:
        if self._query is None or not np.array_equal(self._query, query):
            self._query = query
            self._scores = self._fixture.vectors @ query
        scores = self._scores if mask is None else np.where(mask, self._scores, -np.inf)
        best = np.argpartition(-scores, TOP_K)[:TOP_K]
        best = best[np.argsort(-scores[best])]
        return [self._fixture.ids[i] for i in best]


@dataclass
class Measured:
    name: str
    latencies_ms: list[float]
    recall: float
    strategies: dict[str, int]

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Runner = Callable[[np.ndarray], Awaitable[tuple[list[str], Strategy | None]]]


async def measure_interleaved(
    scenarios: Sequence[tuple[str, Runner, Callable[[np.ndarray], list[str]]]],
    queries: np.ndarray,
    warmup: int,
) -> list[Measured]:
    """Runs every scenario on each query in turn, so load from other processes
    on a shared machine falls on all scenarios alike and the ratios stay fair.
    The order is shuffled (seeded) from query to query: the first scenario to
    see a query reads its neighbourhood from colder caches than the ones
    after it, and one that follows a scenario doing similar work finds its
    pages warm."""
    results = [Measured(name, [], 0.0, {}) for name, _, _ in scenarios]
    recalls: list[list[float]] = [[] for _ in scenarios]
    for position, query in enumerate(queries):
        order = list(range(len(scenarios)))
        random.Random(position).shuffle(order)
        for turn in order:
            (_, run, truth), measured, recall = scenarios[turn], results[turn], recalls[turn]
            started = time.perf_counter()
            got, strategy = await run(query)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if position < warmup:
                continue
            measured.latencies_ms.append(elapsed_ms)
            key = strategy.value if strategy else "raw"
            measured.strategies[key] = measured.strategies.get(key, 0) + 1
            want = truth(query)
            recall.append(len(set(got) & set(want)) / max(1, len(want)))
    for measured, recall in zip(results, recalls, strict=True):
        measured.recall = statistics.fmean(recall)
    return results


class FixedEmbedder:
    """EmbedService stand-in: the bench measures search, not the model."""

    def __init__(self) -> None:
        self.vector: Sequence[float] = ()

    async def embed(self, dataset_id: str, index_name: str, query: SemanticQuery) -> EmbeddedQuery:
        return EmbeddedQuery(INDEX, FIELD, self.vector)


async def run_bench(args: argparse.Namespace) -> None:
    settings = DatabaseSettings()
    base, _, _ = settings.url.rpartition("/")
    name = args.database or f"bench_search_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(settings.url)
    exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    if not exists:
        await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    # Also on a kept database: it gets the migrations added since it was loaded.
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    # The search service's own connection settings (planner costs), as in production.
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4, server_settings=SERVER_SETTINGS)
    assert pool is not None
    try:
        print(f"database {name}: {args.vectors:,} vectors, {args.clusters:,} clusters, {DIM}-d")
        fixture, queries = make_fixture(args.vectors, args.clusters, args.seed)
        store = PgVectorStore(pool)
        loaded = await pool.fetchval("SELECT count(*) FROM files")
        if loaded != args.vectors:
            if loaded:
                raise SystemExit(f"database {name} holds {loaded} files, not {args.vectors}; use another")
            started = time.perf_counter()
            await load(pool, store, fixture, args.ef_construction)
            print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)
        else:
            fixture.version_id = str(await pool.fetchval("SELECT id FROM dataset_versions"))
        if not args.load_only:
            await prewarm(pool)
            await report(args, pool, store, fixture, queries)
    finally:
        await pool.close()
        if not args.keep and not args.load_only and not args.database:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        elif args.keep or args.load_only:
            print(f"kept database {name} (reuse with --database {name})")
        await admin.close()


async def report(
    args: argparse.Namespace, pool: asyncpg.Pool, store: PgVectorStore, fixture: Fixture, queries: np.ndarray
) -> None:
    catalogue = PostgresCatalogue(pool)
    # As the service wires it: pgvector shares the pool, path (a) is one statement.
    catalogue_vectors = PgVectorCatalogueSearch(pool, default_kind="pgvector")
    planner = PlannerSettings(
        exact_candidate_floor=args.exact_floor,
        exact_candidate_limit=args.exact_limit,
        ann_cost_ratio=args.ann_cost_ratio,
        estimate_margin=args.estimate_margin,
        overfetch_factor=args.overfetch_factor,
        breadth_factor=args.breadth_factor,
    )
    version = fixture.version_id
    sample = queries[: args.queries + args.warmup]

    async def raw(query: np.ndarray) -> tuple[list[str], Strategy | None]:
        hits = await store.search(INDEX, VectorQuery(FIELD, query.tolist(), TOP_K, VectorFilter(version)))
        return [hit.file_id for hit in hits], None

    table = quote_ident(table_name(INDEX))
    column = quote_ident(FIELD)
    # What a user gets from pgvector alone for a tag filter: the filter in the
    # HNSW query, pgvector 0.8's iterative scan, the store's default breadth.
    # Fast, but nothing checks that the result is the filtered top-k.
    raw_filtered_sql = (
        f"SELECT v.file_id FROM {table} v WHERE v.dataset_version_id = $2 "
        "AND EXISTS (SELECT 1 FROM file_tags t WHERE t.file_id = v.file_id AND t.tag = $3) "
        f"ORDER BY v.{column} <=> $1::real[]::vector LIMIT {TOP_K}"
    )

    def raw_filtered(tag: str) -> Runner:
        async def run(query: np.ndarray) -> tuple[list[str], Strategy | None]:
            async with pool.acquire() as conn:
                rows = await fetch_with_hnsw_settings(
                    conn,
                    raw_filtered_sql,
                    [query.tolist(), uuid.UUID(version), tag],
                    ef_search=DEFAULT_SEARCH_BREADTH,
                    iterative_scan=True,
                )
            return [str(row["file_id"]) for row in rows], None

        return run

    def planned(condition: Condition) -> Runner:
        async def run(query: np.ndarray) -> tuple[list[str], Strategy | None]:
            result = await planned_vector_search(
                store,
                catalogue,
                VectorRequest(INDEX, FIELD, query.tolist(), TOP_K),
                CatalogueFilter(version, condition),
                planner,
                catalogue_vectors=catalogue_vectors,
            )
            return [hit.file_id for hit in result.hits], result.strategy

        return run

    embedder = FixedEmbedder()
    searcher = Searcher(
        catalogue=catalogue,
        embedder=embedder,
        vector_store=store,
        signer=None,
        page_tokens=PageTokenCodec(b"bench-page-token-key"),
        planner=planner,
        catalogue_vectors=catalogue_vectors,
    )
    dsl = 'Tags.all="sel10" AND Width >= 640 AND FileType="JPEG" AND Content:"bench" AND TopK=10'
    dsl_mask = fixture.tags["sel10"] & (fixture.widths >= 640) & fixture.jpeg
    # The issue's example, over this fixture: a time range (file i was modified
    # at epoch + i s) keeping about half the files, a directory token match
    # (every key is img/NNNNNNN.jpg), a name exclusion, a boolean tag
    # expression (no user tags: always true) and HAS Tags.ai; about 28 % pass.
    half = fixture.vectors.shape[0] // 2
    upper = (EPOCH + timedelta(seconds=half)).isoformat().replace("+00:00", "Z")
    issue_dsl = (
        f'(FileUpdateTime > "2025-01-01T00:05:00Z" AND FileUpdateTime < "{upper}") '
        'AND FileDir:"img" AND NOT FileName="0000400.jpg" '
        'AND ((Tags.all="sel10" AND Tags.all="sel50") OR NOT Tags.user="sel1") AND HAS Tags.ai'
    )
    position = np.arange(fixture.vectors.shape[0])
    issue_mask = (
        (position > 300)
        & (position < half)
        & (position != 400)
        & (fixture.tags["sel1"] | fixture.tags["sel10"] | fixture.tags["sel50"])
    )

    def service(query_text: str) -> Runner:
        async def run(query: np.ndarray) -> tuple[list[str], Strategy | None]:
            embedder.vector = query.tolist()
            # Parsing and checking the request is part of what is measured.
            spec = search_spec(
                search_pb2.SearchRequest(dataset_version_id=version, query=query_text, page_size=TOP_K)
            )
            outcome = await searcher.search(spec)
            return [item.file.id for item in outcome.items], outcome.strategy

        return run

    scenarios: list[tuple[str, Runner, np.ndarray | None]] = [
        ("raw vector store (baseline)", raw, None),
        ("pure vector (planner)", planned(MATCH_ALL), None),
        *(
            (
                f"tag filter {rate:.0%} (planner)",
                planned(HasTag(TagSourceScope.ALL, name=tag)),
                fixture.tags[tag],
            )
            for tag, rate in SELECTIVITY.items()
        ),
        *(
            (f"tag filter {rate:.0%} (pgvector alone, unchecked)", raw_filtered(tag), fixture.tags[tag])
            for tag, rate in SELECTIVITY.items()
            if rate < 0.5
        ),
        ("DSL: tag 10% + width + format (planner)", planned(parse_query(dsl).condition), dsl_mask),
        ("DSL: the issue's example shape (planner)", planned(parse_query(issue_dsl).condition), issue_mask),
        ("pure vector (SearchService, DSL + results)", service('Content:"bench" AND TopK=10'), None),
        ("DSL tag 10% + width + format (SearchService)", service(dsl), dsl_mask),
    ]

    exact_top_ids = ExactTopIds(fixture)

    def truth_for(mask: np.ndarray | None) -> Callable[[np.ndarray], list[str]]:
        return lambda query: exact_top_ids(mask, query)

    results = await measure_interleaved(
        [(label, run, truth_for(mask)) for label, run, mask in scenarios], sample, args.warmup
    )

    baseline = results[0]
    print()
    print(
        f"{args.vectors:,} vectors, {len(sample) - args.warmup} queries each, top-{TOP_K}, "
        f"exact candidates {args.exact_floor}..{args.exact_limit}, ann cost ratio {args.ann_cost_ratio}, "
        f"estimate margin {args.estimate_margin}, overfetch factor {args.overfetch_factor}, "
        f"breadth factor {args.breadth_factor}, scenarios interleaved per query"
    )
    header = (
        f"{'scenario':48} {'p50 ms':>8} {'p99 ms':>8} {'p50/raw':>8} {'p99/raw':>8} {'recall@10':>9}  paths"
    )
    print(header)
    print("-" * len(header))
    for measured in results:
        median_ratio = measured.p(0.5) / baseline.p(0.5)
        ratio = measured.p(0.99) / baseline.p(0.99)
        paths = ", ".join(f"{k}:{v}" for k, v in sorted(measured.strategies.items()))
        print(
            f"{measured.name:48} {measured.p(0.5):8.2f} {measured.p(0.99):8.2f} {median_ratio:8.2f} "
            f"{ratio:8.2f} {measured.recall:9.3f}  {paths}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--exact-floor", type=int, default=PlannerSettings().exact_candidate_floor)
    parser.add_argument("--exact-limit", type=int, default=PlannerSettings().exact_candidate_limit)
    parser.add_argument("--ann-cost-ratio", type=float, default=PlannerSettings().ann_cost_ratio)
    parser.add_argument("--estimate-margin", type=float, default=PlannerSettings().estimate_margin)
    parser.add_argument("--overfetch-factor", type=int, default=PlannerSettings().overfetch_factor)
    parser.add_argument("--breadth-factor", type=int, default=PlannerSettings().breadth_factor)
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=HNSW_EF_CONSTRUCTION,
        help="HNSW build breadth of a new load (default: the pgvector adapter's)",
    )
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--database", help="reuse (and keep) this database if it holds the same data")
    parser.add_argument("--keep", action="store_true", help="keep the database for another run")
    parser.add_argument(
        "--load-only", action="store_true", help="load (and keep) the database, measure nothing"
    )
    asyncio.run(run_bench(parser.parse_args()))


if __name__ == "__main__":
    main()
