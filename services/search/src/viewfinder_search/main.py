"""Process entry of the search service: build its parts, run the shared lifespan."""

from __future__ import annotations

import asyncio
import secrets

import grpc

from viewfinder.v1 import search_pb2, search_pb2_grpc
from viewfinder_common.app import Resources, ServiceParts, run_service
from viewfinder_common.logging import get_logger
from viewfinder_common.runtime import run_until_signalled
from viewfinder_common.s3 import s3_client
from viewfinder_common.vectorstore import VectorStore
from viewfinder_common.vectorstore.factory import create_vector_store
from viewfinder_search.adapters.catalogue import PostgresCatalogue
from viewfinder_search.adapters.embedder import EmbedServiceClient
from viewfinder_search.adapters.previews import S3PreviewSigner
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
        overfetch_factor=settings.overfetch_factor,
        breadth_factor=settings.breadth_factor,
        min_search_breadth=settings.min_search_breadth,
        widen_margin=settings.widen_margin,
        max_overfetch=settings.max_overfetch,
    )


def page_token_codec(settings: SearchSettings) -> PageTokenCodec:
    """The page-token codec with the configured key, or a per-process random one."""
    if settings.page_token_key is not None:
        return PageTokenCodec(settings.page_token_key.get_secret_value().encode())
    log.warning("page_token_key_unset", consequence="page tokens only work on this process")
    return PageTokenCodec(secrets.token_bytes(32))


async def open_vector_store(settings: SearchSettings, resources: Resources) -> VectorStore:
    """The configured vector store, closed with the process."""
    store = await create_vector_store(settings.vectorstore, pool=resources.pool)
    resources.exit_stack.push_async_callback(store.close)
    return store


async def build(resources: Resources) -> ServiceParts:
    """The search service's gRPC servicer over the catalogue, EmbedService and the vector store."""
    settings = resources.settings
    assert isinstance(settings, SearchSettings)
    channel = grpc.aio.insecure_channel(settings.embedder_target)
    resources.exit_stack.push_async_callback(channel.close)
    s3 = await resources.exit_stack.enter_async_context(s3_client(settings.s3))
    searcher = Searcher(
        catalogue=PostgresCatalogue(resources.pool),
        embedder=EmbedServiceClient(channel, deadline_s=settings.embed_deadline_s),
        vector_store=await open_vector_store(settings, resources),
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
