"""Process entry of the search service: build its parts, run the shared lifespan."""

from __future__ import annotations

import asyncio
import secrets
from contextlib import AsyncExitStack

import asyncpg
import grpc

from viewfinder.v1 import search_pb2, search_pb2_grpc
from viewfinder_common.app import Resources, ServiceParts, run_service
from viewfinder_common.db import create_pool
from viewfinder_common.logging import get_logger
from viewfinder_common.runtime import run_until_signalled
from viewfinder_common.s3 import s3_client
from viewfinder_common.vectorstore import VectorStore
from viewfinder_common.vectorstore.factory import create_vector_store, stored_vector_store_opener
from viewfinder_search.adapters.catalogue import SERVER_SETTINGS, PostgresCatalogue
from viewfinder_search.adapters.embedder import EmbedServiceClient
from viewfinder_search.adapters.pgvector_catalogue import PgVectorCatalogueSearch
from viewfinder_search.adapters.previews import S3PreviewSigner
from viewfinder_search.adapters.vector_stores import IndexRoutedVectorStore
from viewfinder_search.config import SearchSettings
from viewfinder_search.domain.engine import Searcher
from viewfinder_search.domain.page_token import PageTokenCodec
from viewfinder_search.domain.planner import PlannerSettings
from viewfinder_search.handlers.grpc_search import SearchServicer

log = get_logger(__name__)


def planner_settings(settings: SearchSettings) -> PlannerSettings:
    """The planner's knobs from the service settings."""
    return PlannerSettings(
        exact_candidate_floor=settings.exact_candidate_floor,
        exact_candidate_limit=settings.exact_candidate_limit,
        ann_cost_ratio=settings.ann_cost_ratio,
        estimate_margin=settings.estimate_margin,
        overfetch_factor=settings.overfetch_factor,
        breadth_factor=settings.breadth_factor,
        min_search_breadth=settings.min_search_breadth,
        max_search_breadth=settings.max_search_breadth,
        widen_margin=settings.widen_margin,
        max_overfetch=settings.max_overfetch,
    )


def page_token_codec(settings: SearchSettings) -> PageTokenCodec:
    """The page-token codec with the configured key, or a per-process random one."""
    if settings.page_token_key is not None:
        return PageTokenCodec(settings.page_token_key.get_secret_value().encode())
    log.warning("page_token_key_unset", consequence="page tokens only work on this process")
    return PageTokenCodec(secrets.token_bytes(32))


async def open_search_pool(settings: SearchSettings, exit_stack: AsyncExitStack) -> asyncpg.Pool:
    """The catalogue pool of searches: connections with search's planner settings, closed with the process."""
    pool = await create_pool(settings.db, server_settings=SERVER_SETTINGS)
    exit_stack.push_async_callback(pool.close)
    return pool


async def open_vector_store(
    settings: SearchSettings, resources: Resources, pool: asyncpg.Pool
) -> VectorStore:
    """The configured vector store (pgvector shares ``pool``), and the stores other indexes live in
    (a dataset switched to another store), closed with the process."""
    configured = await create_vector_store(settings.vectorstore, pool=pool)
    opener = stored_vector_store_opener(pool, settings.connections, settings.vectorstore)
    store = IndexRoutedVectorStore(configured, settings=settings.vectorstore, pool=pool, open_stored=opener)
    resources.exit_stack.push_async_callback(store.close)
    return store


async def build(resources: Resources) -> ServiceParts:
    """The search service's gRPC servicer over the catalogue, EmbedService and the vector store."""
    settings = resources.settings
    assert isinstance(settings, SearchSettings)
    channel = grpc.aio.insecure_channel(settings.embedder_target)
    resources.exit_stack.push_async_callback(channel.close)
    s3 = await resources.exit_stack.enter_async_context(s3_client(settings.s3))
    pool = await open_search_pool(settings, resources.exit_stack)
    store = await open_vector_store(settings, resources, pool)
    searcher = Searcher(
        catalogue=PostgresCatalogue(pool),
        embedder=EmbedServiceClient(channel, deadline_s=settings.embed_deadline_s),
        vector_store=store,
        # Indexes in pgvector share the pool: their exact pre-filter is one statement there.
        catalogue_vectors=PgVectorCatalogueSearch(pool, default_kind=settings.vectorstore.kind),
        signer=S3PreviewSigner(s3, ttl_s=settings.preview_url_ttl_s),
        page_tokens=page_token_codec(settings),
        planner=planner_settings(settings),
        facet_tag_limit=settings.facet_tag_limit,
    )
    servicer = SearchServicer(searcher)
    return ServiceParts(
        grpc_service_names=[search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name],
        grpc_registrations=[
            lambda server: search_pb2_grpc.add_SearchServiceServicer_to_server(servicer, server)
        ],
    )


async def serve(stop: asyncio.Event) -> None:
    """Runs the service until ``stop`` is set."""
    await run_service(SearchSettings(), build, stop)


def main() -> None:
    """``viewfinder-search`` console entry point."""
    run_until_signalled(serve)


if __name__ == "__main__":
    main()
