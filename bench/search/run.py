"""Search latency and recall against a raw vector-store query in the same run.

Data: a Gaussian mixture (``--clusters`` centres, default 2,000) of
``--vectors`` 384-d vectors (default 100,000; ``--vectors 1000000`` for the
big run) — never i.i.d. random vectors, on which every ANN index looks broken
(DESIGN §9). Each file carries tags ``sel1`` / ``sel10`` / ``sel50`` with
probability 1 %, 10 %, 50 %, a width and a format, so filters of known
selectivity exist.

For each scenario it prints p50/p99 latency, recall@10 against a brute-force
top-10 over exactly the files that pass the filter, and the p99 ratio to the
raw baseline: ``VectorStore.search`` on the version, no catalogue involved
(goal: ratio ≤ 1.5, recall ≥ 0.95).

    .venv/bin/python bench/search/run.py                      # 100k, ~3 min to load
    .venv/bin/python bench/search/run.py --vectors 1000000    # big run
    .venv/bin/python bench/search/run.py --keep               # keep the database ...
    .venv/bin/python bench/search/run.py --database NAME      # ... and reuse it

Needs the local stack's PostgreSQL (``make up``).
"""

from __future__ import annotations

import argparse
import asyncio
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
from viewfinder_common.vectorstore import IndexSchema, VectorField, VectorFilter, VectorQuery, VectorRow
from viewfinder_common.vectorstore.pgvector import PgVectorStore
from viewfinder_search.adapters.catalogue import PostgresCatalogue
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


async def load(pool: asyncpg.Pool, store: PgVectorStore, fixture: Fixture) -> None:
    epoch = datetime(2025, 1, 1, tzinfo=UTC)
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
        await conn.execute("ANALYZE files; ANALYZE file_tags")
    await store.ensure_index(IndexSchema(INDEX, [VectorField(FIELD, DIM)]))
    started = time.perf_counter()
    batch = 5000
    for start in range(0, len(fixture.ids), batch):
        rows = [
            VectorRow(fixture.ids[i], fixture.version_id, "e", {FIELD: fixture.vectors[i]})
            for i in range(start, min(len(fixture.ids), start + batch))
        ]
        await store.upsert(INDEX, rows)
        done = start + len(rows)
        rate = done / (time.perf_counter() - started)
        print(f"  vectors {done:>8}/{len(fixture.ids)}  {rate:,.0f}/s", flush=True)


def exact_top_ids(fixture: Fixture, mask: np.ndarray | None, query: np.ndarray) -> list[str]:
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(fixture.ids))
    scores = fixture.vectors[rows] @ query
    best = rows[np.argsort(-scores)[:TOP_K]]
    return [fixture.ids[i] for i in best]


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
    on a shared machine falls on all scenarios alike and the ratios stay fair."""
    results = [Measured(name, [], 0.0, {}) for name, _, _ in scenarios]
    recalls: list[list[float]] = [[] for _ in scenarios]
    for position, query in enumerate(queries):
        for (_, run, truth), measured, recall in zip(scenarios, results, recalls, strict=True):
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
    if not exists:
        conn = await asyncpg.connect(url)
        await migrate(conn)
        await conn.close()
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
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
            await load(pool, store, fixture)
            print(f"loaded in {time.perf_counter() - started:.0f} s")
        else:
            fixture.version_id = str(await pool.fetchval("SELECT id FROM dataset_versions"))
        await report(args, pool, store, fixture, queries)
    finally:
        await pool.close()
        if not args.keep and not args.database:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        elif args.keep:
            print(f"kept database {name} (reuse with --database {name})")
        await admin.close()


async def report(
    args: argparse.Namespace, pool: asyncpg.Pool, store: PgVectorStore, fixture: Fixture, queries: np.ndarray
) -> None:
    catalogue = PostgresCatalogue(pool)
    planner = PlannerSettings(
        exact_candidate_floor=args.exact_floor,
        exact_candidate_limit=args.exact_limit,
        ann_cost_ratio=args.ann_cost_ratio,
    )
    version = fixture.version_id
    sample = queries[: args.queries + args.warmup]

    async def raw(query: np.ndarray) -> tuple[list[str], Strategy | None]:
        hits = await store.search(INDEX, VectorQuery(FIELD, query.tolist(), TOP_K, VectorFilter(version)))
        return [hit.file_id for hit in hits], None

    def planned(condition: Condition) -> Runner:
        async def run(query: np.ndarray) -> tuple[list[str], Strategy | None]:
            result = await planned_vector_search(
                store,
                catalogue,
                VectorRequest(INDEX, FIELD, query.tolist(), TOP_K),
                CatalogueFilter(version, condition),
                planner,
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
    )
    dsl = 'Tags.all="sel10" AND Width >= 640 AND FileType="JPEG" AND Content:"bench" AND TopK=10'
    dsl_mask = fixture.tags["sel10"] & (fixture.widths >= 640) & fixture.jpeg

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
        ("DSL: tag 10% + width + format (planner)", planned(parse_query(dsl).condition), dsl_mask),
        ("pure vector (SearchService, DSL + results)", service('Content:"bench" AND TopK=10'), None),
        ("DSL tag 10% + width + format (SearchService)", service(dsl), dsl_mask),
    ]

    def truth_for(mask: np.ndarray | None) -> Callable[[np.ndarray], list[str]]:
        return lambda query: exact_top_ids(fixture, mask, query)

    results = await measure_interleaved(
        [(label, run, truth_for(mask)) for label, run, mask in scenarios], sample, args.warmup
    )

    baseline = results[0]
    print()
    print(
        f"{args.vectors:,} vectors, {len(sample) - args.warmup} queries each, top-{TOP_K}, "
        f"exact candidates {args.exact_floor}..{args.exact_limit}, ann cost ratio {args.ann_cost_ratio}, "
        "scenarios interleaved per query"
    )
    header = f"{'scenario':48} {'p50 ms':>8} {'p99 ms':>8} {'p99/raw':>8} {'recall@10':>9}  paths"
    print(header)
    print("-" * len(header))
    for measured in results:
        ratio = measured.p(0.99) / baseline.p(0.99)
        paths = ", ".join(f"{k}:{v}" for k, v in sorted(measured.strategies.items()))
        print(
            f"{measured.name:48} {measured.p(0.5):8.2f} {measured.p(0.99):8.2f} {ratio:8.2f} "
            f"{measured.recall:9.3f}  {paths}"
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
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--database", help="reuse (and keep) this database if it holds the same data")
    parser.add_argument("--keep", action="store_true", help="keep the database for another run")
    asyncio.run(run_bench(parser.parse_args()))


if __name__ == "__main__":
    main()
