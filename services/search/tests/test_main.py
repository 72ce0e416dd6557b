"""The process wiring: ``serve`` runs the shared lifespan and answers Search over gRPC."""

from __future__ import annotations

import asyncio
import socket
from contextlib import AsyncExitStack

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from viewfinder.v1 import search_pb2, search_pb2_grpc
from viewfinder_search.adapters.catalogue import SERVER_SETTINGS
from viewfinder_search.config import SearchSettings
from viewfinder_search.main import open_search_pool, serve
from viewfinder_search.testing import SearchStack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_answers_search_with_the_configured_embedder_and_store(
    search_stack: SearchStack, catalogue_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("VIEWFINDER_DB_URL", catalogue_db_url)
    monkeypatch.setenv("VIEWFINDER_SEARCH_GRPC_PORT", str(port))
    monkeypatch.setenv("VIEWFINDER_SEARCH_EMBEDDER_TARGET", search_stack.embed_target)
    monkeypatch.setenv("VIEWFINDER_SEARCH_PAGE_TOKEN_KEY", "a-page-token-key-for-the-test")
    monkeypatch.setenv("VIEWFINDER_SEARCH_LOG_JSON", "false")
    stop = asyncio.Event()
    service = asyncio.create_task(serve(stop))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                try:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service="viewfinder.v1.SearchService"), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert not service.done(), service.exception()
                await asyncio.sleep(0.1)
            stub = search_pb2_grpc.SearchServiceStub(channel)
            response = await stub.Search(
                search_pb2.SearchRequest(
                    dataset_version_id=search_stack.catalogue.version_id,
                    query='Content:"blue sky" AND TopK=2',
                    index_name=search_stack.index,
                ),
                timeout=30,
            )
            assert search_stack.catalogue.names([r.file_id for r in response.results]) == ["noai", "dry"]
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=60)


async def test_every_connection_of_the_search_pool_carries_the_planner_settings(
    catalogue_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIEWFINDER_DB_URL", catalogue_db_url)
    async with AsyncExitStack() as stack:
        pool = await open_search_pool(SearchSettings(), stack)
        async with pool.acquire() as first, pool.acquire() as second:
            for conn in (first, second):
                for name, value in SERVER_SETTINGS.items():
                    assert await conn.fetchval(f"SELECT current_setting('{name}')") == value
    assert pool.is_closing()
