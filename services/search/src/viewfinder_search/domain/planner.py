"""Vector search that stays exact under catalogue filters.

Post-filtering an ANN result is the known failure of filtered HNSW: ask for
the top 10, drop the 9 that fail the filter, return 1. The planner avoids it:

(a) **pre-filter, exact**: when the filter leaves few files, fetch their
    ids from the catalogue and ask the vector store for an exact
    (brute-force) top-k restricted to them. The result *is* the exact
    filtered top-k. "Few" is where the exact search is cheaper than the ANN
    over-fetch the filter's pass rate would need: exact costs ~N distance
    computations over N candidates; the ANN needs ~top_k x V / N neighbours
    of a version of V files. They break even at N = sqrt(r x top_k x V),
    with r the cost of one ANN neighbour in exact distances. Measured with
    pgvector at 100k x 384-d: an id-restricted exact search costs ~5-12 us
    per candidate plus reading the ids from the catalogue; an ANN neighbour
    at the search breadth below ~100-200 us. r = 10 (``ann_cost_ratio``)
    puts the switch at ~3,200 candidates for top-10 at 100k files and ~10,000
    at 1M; it is clamped to [``exact_candidate_floor``,
    ``exact_candidate_limit``]. A filter whose ANN request would need a
    broader search than the store honours (``max_search_breadth``) takes
    this path up to ``exact_candidate_limit`` files: past it the ANN loses
    recall.
    Which side of the switch a filter is on comes first from PostgreSQL's
    row estimate (``EXPLAIN``, no rows read): reading thousands of ids only
    to learn that there are too many cost more than the vector search itself
    (measured: 5-20 ms for a 10 % tag at 100k files). Only a filter
    estimated at or under the switch has its ids read (at most the switch
    plus one, which also settles a wrong estimate). Where the vectors live
    in the catalogue's database (pgvector; ``CatalogueVectorSearch``), the
    id read and the exact search are one statement and the ids never leave
    the server; path (b) there is first one ANN walk that checks the filter
    on each row it reaches, at the breadth below, until top_k pass.
(b) **filtered ANN with widening over-fetch**: otherwise (the filter keeps
    many files, so many ANN neighbours pass it) ask the ANN index for the
    neighbours the estimated pass rate says top_k needs (times
    ``estimate_margin``, at least ``top_k x overfetch_factor``), with a
    search breadth ``breadth_factor`` times that, keep those that pass the
    catalogue filter, and ask again for what the pass rate seen so far says
    top_k needs (``widen_margin``; at least double, at most 16 times) until
    ``top_k`` pass or the store has no more rows. When the pass rate seen
    says the filter is selective after all (the estimate was wrong) and the
    pre-filter was not tried, the planner reads the ids and takes path (a)
    if they are few enough. If the ANN result comes back short while the
    version holds more rows, or the over-fetch would grow past
    ``max_overfetch``, the planner falls back to an exact scan of the
    version with the same widening, so a result is never silently short.
    Without any condition the first request is the plain top-k query.

Every hit, whichever path, is checked against the catalogue (status active,
condition) before it is returned: the vector store may still hold a row of a
file deleted a moment ago.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from viewfinder_common.vectorstore import (
    DEFAULT_SEARCH_BREADTH,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorStore,
)
from viewfinder_search.domain.sql import CatalogueFilter


class CandidateCatalogue(Protocol):
    """The catalogue queries the planner needs."""

    async def version_size(self, dataset_version_id: str) -> int:
        """Active files of a version (may be a little stale: it only steers the plan)."""

    async def estimated_matches(self, catalogue_filter: CatalogueFilter) -> int:
        """How many files the filter keeps, as estimated without reading them (it only steers the plan)."""

    async def candidate_ids(self, catalogue_filter: CatalogueFilter, limit: int) -> list[str]:
        """Ids of matching files, at most ``limit`` of them."""

    async def matching_ids(self, catalogue_filter: CatalogueFilter, file_ids: Sequence[str]) -> set[str]:
        """Which of ``file_ids`` match."""


class CatalogueVectorSearch(Protocol):
    """Path (a) in one step, for indexes whose vectors live in the catalogue's database."""

    async def serves(self, index: str) -> bool:
        """True when the index's vectors are in the catalogue's database."""

    async def exact_top_k(
        self, request: VectorRequest, catalogue_filter: CatalogueFilter, limit: int
    ) -> list[VectorHit] | None:
        """The exact top-k among the files that pass, or None when more than ``limit`` pass."""

    async def filtered_top_k(
        self, request: VectorRequest, catalogue_filter: CatalogueFilter, breadth: int
    ) -> list[VectorHit] | None:
        """The top-k passing files of an ANN walk that checks the filter as it goes,
        or None when the walk came back short."""


@dataclass(frozen=True)
class PlannerSettings:
    """Knobs of the planner; the defaults suit 100k to 1M vectors per version."""

    # Filters leaving at most this many files always take the exact pre-filter path ...
    exact_candidate_floor: int = 500
    # ... filters leaving more never do.
    exact_candidate_limit: int = 20_000
    # Cost of one ANN neighbour in id-restricted exact distances (module doc).
    ann_cost_ratio: float = 10.0
    # The first filtered ANN request asks for top_k / estimated pass rate x this ...
    estimate_margin: float = 1.5
    # ... and at least top_k x this many neighbours.
    overfetch_factor: int = 2
    # ANN search breadth (HNSW ef_search) per neighbour asked for. HNSW finds the
    # first few neighbours with a small breadth, but the top few hundred only
    # with several times that: measured with pgvector (m=16, ef_construction=64)
    # at 100k x 384-d, the 10 best of a 10 % filter among 125 neighbours had
    # recall 0.88 at ef 125, 0.94 at ef 500; 200 neighbours at ef 800 gave 0.98.
    # The cost of a pgvector HNSW query grows about linearly with ef (100k x
    # 384-d: ef 100 / 300 / 600 took 5.3 / 9.6 / 16.9 ms on the shared bench
    # machine) while the recall of a 10 % filter's top-10 among 150-300
    # neighbours was 0.94 / 0.97 / 0.98 at ef 300 / 500 / 600 (bench/search).
    # With the graph built at ef_construction 128, factor 2 kept a 10 % tag at
    # recall 0.963-0.968 but a ~5 % DSL filter at 0.949-0.952 (100k, two data
    # seeds), factor 3 at 0.978 and 0.970-0.973; at 1M both factors gave 0.998.
    breadth_factor: int = 3
    # Smallest ANN search breadth asked for: never narrower than the store's
    # plain top-k query (a 50 % filter asks for only ~30 neighbours).
    min_search_breadth: int = DEFAULT_SEARCH_BREADTH
    # Largest search breadth the vector store honours (pgvector: hnsw.ef_search
    # at most 1,000). A filter whose first ANN request would need more takes the
    # exact path up to exact_candidate_limit files, whatever the break-even:
    # past its breadth the ANN loses recall (measured at 1M x 384-d: a 1 % tag,
    # 1,500 neighbours at ef 1,000, recall@10 0.84 in 137 ms; exact over its
    # 10,000 files, recall 1.0 in 123 ms; after the ef_construction 128 build and
    # with the working set in shared_buffers: the filtered walk 38-49 ms at
    # recall 0.87-0.90 for ef 100-1,000, exact 97 ms at 1.0).
    max_search_breadth: int = 1000
    # Widening asks for what the pass rate seen so far says top_k needs, times this.
    widen_margin: float = 2.0
    # ANN requests never ask for more neighbours than this; past it, exact scan.
    max_overfetch: int = 16_384


class Strategy(enum.Enum):
    """Which path answered a vector search."""

    EXACT_PREFILTER = "exact_prefilter"
    FILTERED_ANN = "filtered_ann"
    EXACT_SCAN = "exact_scan"


@dataclass(frozen=True)
class PlannedResult:
    """The hits, best first, and how they were found."""

    hits: list[VectorHit]
    strategy: Strategy
    # Vector-store requests issued (1 when the first try sufficed).
    rounds: int


@dataclass(frozen=True)
class VectorRequest:
    """One vector search over an index, before filtering."""

    index: str
    vector_field: str
    vector: Sequence[float]
    top_k: int
    score_threshold: float | None = None


async def planned_vector_search(
    store: VectorStore,
    catalogue: CandidateCatalogue,
    request: VectorRequest,
    catalogue_filter: CatalogueFilter,
    settings: PlannerSettings,
    *,
    catalogue_vectors: CatalogueVectorSearch | None = None,
) -> PlannedResult:
    """The top-k hits that pass ``catalogue_filter``: exact under selective filters, never short.

    ``catalogue_vectors``: when given and the index's vectors are in the
    catalogue's database, path (a) runs as one statement there instead of an
    id read and an id-restricted search of ``store``, and path (b) first as
    one filtered ANN walk there (the generic path (b) takes over if it comes
    back short).
    """
    if catalogue_filter.is_whole_version:
        return await _filtered_ann(store, catalogue, request, catalogue_filter, settings, prefilter=None)
    size = await catalogue.version_size(catalogue_filter.dataset_version_id)
    limit = await exact_path_limit(catalogue, catalogue_filter, request.top_k, settings)
    estimate = await catalogue.estimated_matches(catalogue_filter)
    if (
        first_fetch(request.top_k, estimate, size, settings) * settings.breadth_factor
        > settings.max_search_breadth
    ):
        # The ANN could not search as broadly as this filter needs (field doc).
        limit = max(limit, settings.exact_candidate_limit)
    prefilter = _Prefilter(store, catalogue, catalogue_vectors, catalogue_filter, size, limit)
    if estimate <= limit:
        result = await prefilter.exact(request)
        if result is not None:
            return result
        # More than the limit match: the estimate was low.
        estimate = limit + 1
    if catalogue_vectors is not None and await catalogue_vectors.serves(request.index):
        breadth = settings.breadth_factor * first_fetch(request.top_k, estimate, size, settings)
        hits = await catalogue_vectors.filtered_top_k(
            request, catalogue_filter, max(breadth, settings.min_search_breadth)
        )
        if hits is not None:
            return PlannedResult(hits, Strategy.FILTERED_ANN, 1)
    return await _filtered_ann(
        store, catalogue, request, catalogue_filter, settings, prefilter=prefilter, estimate=estimate
    )


class _Prefilter:
    """Path (a) for one filter, tried at most once: only when at most ``limit`` files pass."""

    def __init__(  # noqa: PLR0917 (the parts of one planned search)
        self,
        store: VectorStore,
        catalogue: CandidateCatalogue,
        catalogue_vectors: CatalogueVectorSearch | None,
        catalogue_filter: CatalogueFilter,
        size: int,
        limit: int,
    ) -> None:
        self._store = store
        self._catalogue = catalogue
        self._catalogue_vectors = catalogue_vectors
        self._filter = catalogue_filter
        self.size = size
        self.limit = limit
        self.tried = False

    async def exact(self, request: VectorRequest) -> PlannedResult | None:
        """The exact filtered top-k, or None when more than ``limit`` files pass."""
        self.tried = True
        if self._catalogue_vectors is not None and await self._catalogue_vectors.serves(request.index):
            hits = await self._catalogue_vectors.exact_top_k(request, self._filter, self.limit)
            if hits is None:
                return None
            return PlannedResult(hits[: request.top_k], Strategy.EXACT_PREFILTER, 1)
        # One bounded read both decides the path and, when it is exact, supplies the ids.
        ids = await self._catalogue.candidate_ids(self._filter, self.limit + 1)
        if len(ids) > self.limit:
            return None
        return await _exact_prefilter(self._store, request, self._filter, ids)


async def exact_path_limit(
    catalogue: CandidateCatalogue, catalogue_filter: CatalogueFilter, top_k: int, settings: PlannerSettings
) -> int:
    """Most candidates for which the exact pre-filter beats the filtered ANN (module doc)."""
    if settings.exact_candidate_limit <= settings.exact_candidate_floor:
        return settings.exact_candidate_limit
    size = await catalogue.version_size(catalogue_filter.dataset_version_id)
    break_even = math.isqrt(math.ceil(settings.ann_cost_ratio * top_k * size))
    return max(settings.exact_candidate_floor, min(break_even, settings.exact_candidate_limit))


def first_fetch(top_k: int, estimate: int, size: int, settings: PlannerSettings) -> int:
    """The first filtered ANN request: what the estimated pass rate says top_k needs."""
    needed = math.ceil(top_k * size / max(estimate, 1) * settings.estimate_margin)
    return min(max(needed, top_k * settings.overfetch_factor), settings.max_overfetch)


async def _exact_prefilter(
    store: VectorStore, request: VectorRequest, catalogue_filter: CatalogueFilter, ids: list[str]
) -> PlannedResult:
    if not ids:
        return PlannedResult([], Strategy.EXACT_PREFILTER, 0)
    hits = await store.search(
        request.index,
        VectorQuery(
            vector_field=request.vector_field,
            vector=request.vector,
            top_k=request.top_k,
            filter=VectorFilter(catalogue_filter.dataset_version_id, file_ids=ids),
            score_threshold=request.score_threshold,
            exact=True,
        ),
    )
    return PlannedResult(hits[: request.top_k], Strategy.EXACT_PREFILTER, 1)


async def _filtered_ann(
    store: VectorStore,
    catalogue: CandidateCatalogue,
    request: VectorRequest,
    catalogue_filter: CatalogueFilter,
    settings: PlannerSettings,
    *,
    prefilter: _Prefilter | None,
    estimate: int = 0,
) -> PlannedResult:
    """Filtered ANN; ``prefilter`` is None for the whole version (no condition)."""
    version_filter = VectorFilter(catalogue_filter.dataset_version_id)
    # Without a condition nearly every neighbour passes (only files deleted a
    # moment ago do not): ask for top_k at the store's own breadth, exactly the
    # query a caller would send the store directly.
    if prefilter is None:
        fetch = request.top_k
    else:
        fetch = first_fetch(request.top_k, estimate, prefilter.size, settings)
    rounds = 0
    while fetch <= settings.max_overfetch:
        rounds += 1
        breadth = None if prefilter is None and rounds == 1 else settings.breadth_factor * fetch
        hits = await store.search(
            request.index,
            VectorQuery(
                vector_field=request.vector_field,
                vector=request.vector,
                top_k=fetch,
                filter=version_filter,
                score_threshold=request.score_threshold,
                search_breadth=None if breadth is None else max(breadth, settings.min_search_breadth),
            ),
        )
        passing = await _passing(catalogue, catalogue_filter, hits)
        if len(passing) >= request.top_k:
            return PlannedResult(passing[: request.top_k], Strategy.FILTERED_ANN, rounds)
        if len(hits) < fetch:
            # Short: either the version has no more rows (above the threshold)
            # — then this is the answer — or the ANN index gave up early, which
            # only an exact scan can tell apart and repair.
            break
        if (
            prefilter is not None
            and not prefilter.tried
            and (len(passing) + 1) * prefilter.size * settings.widen_margin <= prefilter.limit * len(hits)
        ):
            # The pass rate seen says, with a margin (one more passing hit, times
            # widen_margin), that the filter is selective: the estimate was high.
            exact = await prefilter.exact(request)
            if exact is not None:
                return PlannedResult(exact.hits, exact.strategy, rounds + exact.rounds)
        if fetch >= settings.max_overfetch:
            break
        wanted = _widened(fetch, len(passing), len(hits), request.top_k, settings.widen_margin)
        fetch = min(wanted, settings.max_overfetch)
    return await _exact_scan(store, catalogue, request, catalogue_filter, rounds)


def _widened(fetch: int, passing: int, fetched: int, top_k: int, margin: float) -> int:
    """The next over-fetch: what the pass rate seen so far says top_k needs (times
    ``margin``), at least double the last one (so the loop ends), at most 16 times it."""
    if passing == 0:
        return fetch * 16
    needed = math.ceil(top_k * fetched / passing * margin)
    return max(fetch * 2, min(needed, fetch * 16))


async def _exact_scan(
    store: VectorStore,
    catalogue: CandidateCatalogue,
    request: VectorRequest,
    catalogue_filter: CatalogueFilter,
    rounds: int,
) -> PlannedResult:
    """Exact search of the whole version, widened until top-k pass or the rows run out."""
    version_filter = VectorFilter(catalogue_filter.dataset_version_id)
    fetch = request.top_k
    while True:
        rounds += 1
        hits = await store.search(
            request.index,
            VectorQuery(
                vector_field=request.vector_field,
                vector=request.vector,
                top_k=fetch,
                filter=version_filter,
                score_threshold=request.score_threshold,
                exact=True,
            ),
        )
        passing = await _passing(catalogue, catalogue_filter, hits)
        if len(passing) >= request.top_k or len(hits) < fetch:
            return PlannedResult(passing[: request.top_k], Strategy.EXACT_SCAN, rounds)
        fetch *= 4


async def _passing(
    catalogue: CandidateCatalogue, catalogue_filter: CatalogueFilter, hits: list[VectorHit]
) -> list[VectorHit]:
    if not hits:
        return []
    matching = await catalogue.matching_ids(catalogue_filter, [hit.file_id for hit in hits])
    return [hit for hit in hits if hit.file_id in matching]
