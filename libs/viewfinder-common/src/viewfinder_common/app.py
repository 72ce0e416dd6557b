"""The lifespan every service shares.

A service's ``main.py`` describes its parts (gRPC servicers, Kafka routers)
with a ``build`` function; ``run_service`` opens the connections in order,
starts the parts, waits for the stop signal and closes everything in reverse:
gRPC reports NOT_SERVING first, then consumers stop (committing what they
finished), then the pool closes. While it runs, a watchdog restarts any Kafka
consumer that has work but makes no progress (see ``ConsumerWatchdog``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from faststream.kafka import KafkaBroker, KafkaRouter

from viewfinder_common.db import create_pool
from viewfinder_common.grpc_server import GrpcServer, ServicerRegistration
from viewfinder_common.kafka import ConsumerWatchdog, build_broker
from viewfinder_common.logging import configure_logging, get_logger
from viewfinder_common.settings import ServiceSettings

log = get_logger(__name__)


@dataclass
class Resources:
    """Connections opened in the lifespan and handed to a service's parts."""

    settings: ServiceSettings
    pool: asyncpg.Pool
    broker: KafkaBroker
    # For the service's own resources (S3 client, model, vector store …).
    exit_stack: AsyncExitStack


@dataclass
class ServiceParts:
    """What a service runs: gRPC services and Kafka routers."""

    grpc_service_names: Sequence[str] = ()
    grpc_registrations: Sequence[ServicerRegistration] = ()
    routers: Sequence[KafkaRouter] = ()
    # Started after the broker and the gRPC server, cancelled at shutdown.
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)


BuildParts = Callable[[Resources], Awaitable[ServiceParts]]


async def run_service(settings: ServiceSettings, build: BuildParts, stop: asyncio.Event) -> None:
    """Runs one service process until ``stop`` is set."""
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    async with AsyncExitStack() as stack:
        pool = await create_pool(settings.db)
        stack.push_async_callback(pool.close)
        broker = build_broker(settings.kafka, client_id=f"viewfinder-{settings.service_name}")
        resources = Resources(settings=settings, pool=pool, broker=broker, exit_stack=stack)
        parts = await build(resources)
        for router in parts.routers:
            broker.include_router(router)
        await broker.start()
        stack.push_async_callback(broker.stop)
        server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            service_names=parts.grpc_service_names,
            registrations=parts.grpc_registrations,
            shutdown_grace_s=settings.shutdown_grace_s,
        )
        await server.start()
        stack.push_async_callback(server.stop)
        tasks = [asyncio.create_task(job()) for job in parts.background]
        if broker.subscribers:
            tasks.append(
                asyncio.create_task(
                    ConsumerWatchdog.for_broker(
                        broker, stall_after_s=settings.kafka.consumer_stall_after_s
                    ).run()
                )
            )
        log.info("service_started", grpc_port=server.port)
        try:
            await stop.wait()
        finally:
            log.info("service_stopping")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
