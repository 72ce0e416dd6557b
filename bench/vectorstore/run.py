"""Raw vector-store query latency through the adapters, against the bare client in the same run.

For each adapter (pgvector in a scratch database of the local stack's
PostgreSQL, the Milvus Lite server) it loads N vectors of a Gaussian mixture
(one cluster per ~100 vectors: a realistic neighbourhood structure, unlike
i.i.d. random vectors), then times the same queries five ways:

* ``raw``           the bare client: one SQL statement / one pymilvus search,
                    same ef (the baseline)
* ``ann``           ``VectorStore.search`` (validation, filter, ef setting, fallback check)
* ``ann ids 1%``    ANN restricted to 1% of the version's file ids
* ``exact ids 1%``  exact over those ids (the search planner's selective path)
* ``exact all``     brute force over the whole version (a few samples)

and prints p50/p99 per way, the ratio of each to ``raw`` and recall@k of
``ann`` against the numpy ground truth. Sizes are modest by default so that
``make bench`` stays within minutes; ``--n 100000`` for the big run. The ways
take turns query by query, so noise from other load hits them alike.

    .venv/bin/python bench/vectorstore/run.py [--n 20000] [--dim 384] [--queries 100]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
from pymilvus import AsyncMilvusClient

from viewfinder_common.settings import DatabaseSettings, MilvusSettings
from viewfinder_common.vectorstore import (
    DEFAULT_SEARCH_BREADTH,
    IndexSchema,
    VectorField,
    VectorFilter,
    VectorQuery,
    VectorRow,
    VectorStore,
)
from viewfinder_common.vectorstore.milvus import MilvusVectorStore, filter_expression
from viewfinder_common.vectorstore.pgvector import HNSW_EF_CONSTRUCTION, HNSW_M, PgVectorStore


@dataclass(frozen=True)
class Data:
    vectors: np.ndarray
    ids: list[str]
    version: str
    queries: np.ndarray
    truth: list[list[str]]  # exact top-k ids per query
    id_subsets: list[list[str]]  # 1% of the file ids per query


def gaussian_mixture(n: int, dim: int, queries: int, top_k: int, seed: int = 7) -> Data:
    rng = np.random.default_rng(seed)
    clusters = max(1, n // 100)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, size=n)
    vectors = (centers[labels] + 0.35 * rng.standard_normal((n, dim))).astype(np.float32)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    picks = rng.integers(0, n, size=queries)
    query_vectors = (vectors[picks] + 0.1 * rng.standard_normal((queries, dim))).astype(np.float32)
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = []
    for q in query_vectors:
        scores = normed @ (q / np.linalg.norm(q))
        truth.append([ids[i] for i in np.argsort(-scores)[:top_k]])
    subset_size = max(top_k, n // 100)
    id_subsets = [[ids[i] for i in rng.choice(n, size=subset_size, replace=False)] for _ in range(queries)]
    return Data(vectors, ids, str(uuid.uuid4()), query_vectors, truth, id_subsets)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def timed(
    ways: dict[str, list[Callable[[], Awaitable[Any]]]],
) -> dict[str, tuple[list[float], list[Any]]]:
    """Latency in ms of each call; the ways take turns query by query, so that each sees
    the same server state (caches, background work, the other developers' load)."""
    measured: dict[str, tuple[list[float], list[Any]]] = {way: ([], []) for way in ways}
    for calls in ways.values():
        for call in calls[:5]:  # warm-up: plans, connections, caches
            await call()
    for i in range(max(len(calls) for calls in ways.values())):
        for way, calls in ways.items():
            if i < len(calls):
                start = time.perf_counter()
                result = await calls[i]()
                measured[way][0].append((time.perf_counter() - start) * 1000)
                measured[way][1].append(result)
    return measured


async def load(store: VectorStore, index: str, data: Data, settle: Callable[[], Awaitable[None]]) -> float:
    """Upserts every vector; returns vectors/s including what makes them searchable."""
    await store.ensure_index(IndexSchema(index, [VectorField("visual", data.vectors.shape[1])]))
    start = time.perf_counter()
    batch = 1000
    for begin in range(0, len(data.ids), batch):
        rows = [
            VectorRow(data.ids[i], data.version, "etag", {"visual": data.vectors[i]})
            for i in range(begin, min(begin + batch, len(data.ids)))
        ]
        await store.upsert(index, rows)
    await settle()
    return len(data.ids) / (time.perf_counter() - start)


async def measure(
    name: str,
    store: VectorStore,
    index: str,
    data: Data,
    top_k: int,
    raw_query: Callable[[np.ndarray], Awaitable[Any]],
) -> None:
    def query(i: int, **kwargs: Any) -> VectorQuery:
        file_ids = kwargs.pop("file_ids", None)
        return VectorQuery("visual", data.queries[i], top_k, VectorFilter(data.version, file_ids), **kwargs)

    count = len(data.queries)
    # Brute force over the whole version transfers every vector from Milvus (seconds at
    # 20k): a few samples only. The planner's exact path is "exact ids 1%".
    exact_all_count = min(count, 3)
    search = functools.partial(store.search, index)
    ids_1pct = data.id_subsets
    measured = await timed(
        {
            "raw": [functools.partial(raw_query, data.queries[i]) for i in range(count)],
            "ann": [functools.partial(search, query(i)) for i in range(count)],
            "ann ids 1%": [functools.partial(search, query(i, file_ids=ids_1pct[i])) for i in range(count)],
            "exact ids 1%": [
                functools.partial(search, query(i, file_ids=ids_1pct[i], exact=True)) for i in range(count)
            ],
            "exact all": [functools.partial(search, query(i, exact=True)) for i in range(exact_all_count)],
        }
    )
    raw = measured["raw"][0]
    ann_hits, exact_hits = measured["ann"][1], measured["exact all"][1]

    recall = statistics.mean(
        len({h.file_id for h in hits} & set(truth)) / top_k
        for hits, truth in zip(ann_hits, data.truth, strict=True)
    )
    exact_recall = statistics.mean(
        len({h.file_id for h in hits} & set(truth)) / top_k
        for hits, truth in zip(exact_hits, data.truth[:exact_all_count], strict=True)
    )
    base50, base99 = percentile(raw, 50), percentile(raw, 99)
    print(f"\n{name}: {len(data.ids)} x {data.vectors.shape[1]}-d, top-{top_k}, {count} queries")
    print(f"  {'way':<14}{'n':>5}{'p50 ms':>10}{'p99 ms':>10}{'p50/raw':>10}{'p99/raw':>10}")
    for way, (samples, _) in measured.items():
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        print(
            f"  {way:<14}{len(samples):>5}{p50:>10.2f}{p99:>10.2f}{p50 / base50:>10.2f}{p99 / base99:>10.2f}"
        )
    print(f"  recall@{top_k}: ann {recall:.3f}, exact {exact_recall:.3f}")


async def bench_pgvector(data: Data, top_k: int) -> None:
    settings = DatabaseSettings()
    admin = await asyncpg.connect(settings.url)
    database = f"bench_vs_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = settings.url.rsplit("/", 1)[0] + "/" + database
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        assert pool is not None
        async with pool.acquire() as conn:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        store = PgVectorStore(pool, upsert_batch_size=500)

        async def analyze() -> None:
            async with pool.acquire() as conn:
                await conn.execute("ANALYZE vf_index_bench")  # what autovacuum does after a bulk load

        rate = await load(store, "bench", data, analyze)
        print(
            f"pgvector load (HNSW m={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}): {rate:,.0f} vectors/s"
        )

        # The baseline: one hand-written statement on its own connection, same ef_search.
        raw_conn = await asyncpg.connect(url)
        await raw_conn.execute(f"SET hnsw.ef_search = {DEFAULT_SEARCH_BREADTH}")

        async def raw_query(vector: np.ndarray) -> Any:
            return await raw_conn.fetch(
                "SELECT file_id, visual <=> $1::real[]::vector AS distance FROM vf_index_bench"
                " WHERE dataset_version_id = $2 ORDER BY distance LIMIT $3",
                vector.tolist(),
                data.version,
                top_k,
            )

        await measure("pgvector", store, "bench", data, top_k, raw_query)
        await raw_conn.close()
        await store.close()
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def bench_milvus(data: Data, top_k: int) -> None:
    settings = MilvusSettings()
    store = MilvusVectorStore(settings, upsert_batch_size=1000)
    client = AsyncMilvusClient(uri=settings.uri, dedicated=True)
    index = f"bench_{uuid.uuid4().hex[:8]}"
    collection = f"vf_index_{index}"
    try:

        async def flush() -> None:
            await client.flush(collection)  # seal the in-memory segment into an HNSW-indexed one

        rate = await load(store, index, data, flush)
        print(f"\nmilvus lite load (HNSW M=16, efConstruction=64, flush included): {rate:,.0f} vectors/s")

        async def raw_query(vector: np.ndarray) -> Any:
            return await client.search(
                collection,
                data=[vector.tolist()],
                anns_field="visual",
                filter=filter_expression(data.version),
                limit=top_k,
                search_params={"metric_type": "COSINE", "params": {"ef": DEFAULT_SEARCH_BREADTH}},
                output_fields=["file_id"],
            )

        await measure("milvus lite", store, index, data, top_k, raw_query)
    finally:
        if await client.has_collection(collection):
            await client.drop_collection(collection)
        await client.close()
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="vectors (default 20000)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--adapters", default="pgvector,milvus", help="comma-separated: pgvector, milvus")
    args = parser.parse_args()
    data = gaussian_mixture(args.n, args.dim, args.queries, args.top_k)
    adapters = set(args.adapters.split(","))
    if "pgvector" in adapters:
        await bench_pgvector(data, args.top_k)
    if "milvus" in adapters:
        await bench_milvus(data, args.top_k)


if __name__ == "__main__":
    asyncio.run(main())
