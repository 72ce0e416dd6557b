"""Process entry of the tagger service: build its parts, run the shared lifespan.

Parts: the LabelingService (gRPC), the file-discovered and file-embedded
subscribers (automatic labeling, consumer group ``viewfinder-tagger``) and the
label job runner (a background task). They share one S3 client, one set of
model connections (so one adaptive limiter per connection), the vector stores
the zero-shot tagger reads stored image vectors from (each index's own), and
the service's broker.
"""

from __future__ import annotations

import asyncio
import functools

import grpc

from viewfinder.v1 import labeling_pb2_grpc
from viewfinder_common.app import Resources, ServiceParts, run_service
from viewfinder_common.runtime import run_until_signalled
from viewfinder_common.s3 import s3_client
from viewfinder_common.vectorstore.factory import stored_vector_store_opener
from viewfinder_common.vectorstore.registry import VectorStoreRegistry
from viewfinder_tagger.adapters.catalogue import Catalogue
from viewfinder_tagger.adapters.events import TaggerEvents
from viewfinder_tagger.adapters.objects import ObjectReader
from viewfinder_tagger.adapters.stored_vectors import StoredVectorScorer
from viewfinder_tagger.auto_labeling import AutoLabeler
from viewfinder_tagger.config import TaggerSettings
from viewfinder_tagger.handlers.file_events import build_file_discovered_router, build_file_embedded_router
from viewfinder_tagger.handlers.labeling_service import SERVICE_NAME, LabelingServicer
from viewfinder_tagger.job_runner import LabelJobRunner, RunnerSettings
from viewfinder_tagger.labeling import Labeler
from viewfinder_tagger.model_registry import ModelRegistry, build_model, stored_connection_loader


async def build(resources: Resources) -> ServiceParts:
    """The tagger service's gRPC servicers, Kafka routers and background job runner."""
    settings = resources.settings
    assert isinstance(settings, TaggerSettings)
    s3 = await resources.exit_stack.enter_async_context(s3_client(settings.s3))
    # The stores indexes live in, opened on first use: the configured kinds and stored connections.
    vector_stores = VectorStoreRegistry(
        settings.vectorstore,
        resources.pool,
        stored=stored_vector_store_opener(resources.pool, settings.connection_store, settings.vectorstore),
    )
    resources.exit_stack.push_async_callback(vector_stores.close)
    stored_vectors = StoredVectorScorer(resources.pool, vector_stores)
    models = ModelRegistry(
        settings.connections,
        default=settings.default_connection,
        factory=functools.partial(build_model, stored_vectors=stored_vectors),
        stored=stored_connection_loader(resources.pool, settings.connection_store),
        offline_template=settings.offline_template_connection(),
        refresh_s=settings.stored_connection_refresh_s,
    )
    resources.exit_stack.push_async_callback(models.close)
    catalogue = Catalogue(resources.pool)
    events = TaggerEvents(
        resources.broker,
        service=settings.service_name,
        file_tagged_topic=settings.kafka.topic_file_tagged,
        file_discovered_topic=settings.kafka.topic_file_discovered,
        file_embedded_topic=settings.kafka.topic_file_embedded,
    )
    labeler = Labeler(catalogue, ObjectReader(s3, presign_expires_s=settings.presign_expires_s), events)
    runner = LabelJobRunner(
        catalogue,
        labeler,
        models,
        events,
        RunnerSettings(
            poll_interval_s=settings.job_poll_interval_s,
            lease_s=settings.job_lease_s,
            flush_interval_s=settings.job_flush_interval_s,
            max_parallel_jobs=settings.max_parallel_jobs,
            recent_errors_kept=settings.recent_errors_kept,
            shutdown_grace_s=settings.shutdown_grace_s,
        ),
    )
    servicer = LabelingServicer(catalogue, models, runner)

    def register(server: grpc.aio.Server) -> None:
        labeling_pb2_grpc.add_LabelingServiceServicer_to_server(servicer, server)

    routers = []
    if settings.auto_labeling:
        auto_labeler = AutoLabeler(
            catalogue, labeler, models, events, max_concurrency=settings.auto_max_concurrency
        )
        routers.append(build_file_discovered_router(settings, auto_labeler))
        routers.append(build_file_embedded_router(settings, auto_labeler))
    return ServiceParts(
        grpc_service_names=[SERVICE_NAME],
        grpc_registrations=[register],
        routers=routers,
        background=[runner.run_forever],
    )


async def serve(stop: asyncio.Event, settings: TaggerSettings | None = None) -> None:
    """Runs the service until ``stop`` is set."""
    await run_service(settings or TaggerSettings(), build, stop)


def main() -> None:
    """``viewfinder-tagger`` console entry point."""
    run_until_signalled(serve)


if __name__ == "__main__":
    main()
