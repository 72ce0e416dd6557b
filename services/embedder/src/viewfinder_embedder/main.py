"""Process entry of the embedder service: build its parts, run the shared lifespan."""

from __future__ import annotations

import asyncio

from viewfinder_common.app import Resources, ServiceParts, run_service
from viewfinder_common.runtime import run_until_signalled
from viewfinder_embedder.config import EmbedderSettings


async def build(resources: Resources) -> ServiceParts:
    """The embedder service's gRPC servicers and Kafka routers."""
    return ServiceParts()


async def serve(stop: asyncio.Event) -> None:
    """Runs the service until ``stop`` is set."""
    await run_service(EmbedderSettings(), build, stop)


def main() -> None:
    """``viewfinder-embedder`` console entry point."""
    run_until_signalled(serve)


if __name__ == "__main__":
    main()
