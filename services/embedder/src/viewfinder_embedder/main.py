"""Process entry of the embedder service: build its parts, run the shared lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial

from viewfinder.v1 import embedding_pb2, embedding_pb2_grpc
from viewfinder_common.app import Resources, ServiceParts, run_service
from viewfinder_common.runtime import run_until_signalled
from viewfinder_common.s3 import s3_client
from viewfinder_common.vectorstore.factory import stored_vector_store_opener
from viewfinder_common.vectorstore.registry import VectorStoreRegistry
from viewfinder_embedder.adapters.catalogue import PgIndexCatalogue
from viewfinder_embedder.adapters.decode_pool import ProcessPoolDecoder
from viewfinder_embedder.adapters.jobs import PgIndexJobStore
from viewfinder_embedder.adapters.kafka import KafkaEventSink
from viewfinder_embedder.adapters.objects import S3ObjectReader
from viewfinder_embedder.adapters.registries import ModelRegistry, stored_model_loader
from viewfinder_embedder.config import EmbedderSettings
from viewfinder_embedder.domain.file_embedder import FileEmbedder
from viewfinder_embedder.domain.index_jobs import IndexJobRunner
from viewfinder_embedder.domain.indexes import IndexDirectory
from viewfinder_embedder.domain.job_requests import IndexJobService
from viewfinder_embedder.domain.model import EmbeddingModel
from viewfinder_embedder.domain.pipeline import DiscoveredPipeline
from viewfinder_embedder.domain.queries import QueryEmbedder
from viewfinder_embedder.handlers.embed_service import EmbedServicer
from viewfinder_embedder.handlers.file_discovered import file_discovered_router


async def build(
    resources: Resources, *, preloaded: Mapping[str, EmbeddingModel] | None = None
) -> ServiceParts:
    """The embedder's gRPC servicer, file-discovered router and index-job worker.

    ``preloaded`` models (by connection name) are used instead of loading
    them: tests and benchmarks load the model once for many service runs.
    """
    settings = resources.settings
    assert isinstance(settings, EmbedderSettings)
    stack = resources.exit_stack

    models = ModelRegistry(
        settings.model_connections,
        settings.offline_model,
        preloaded=preloaded,
        stored=stored_model_loader(resources.pool, settings.connections),
    )
    stack.push_async_callback(models.close)
    # Load the default model now: a broken install fails the start, not the first file.
    await models.model(settings.default_model_connection)
    stores = VectorStoreRegistry(
        settings.vector_store,
        resources.pool,
        stored=stored_vector_store_opener(resources.pool, settings.connections, settings.vector_store),
    )
    stack.push_async_callback(stores.close)
    decoder = ProcessPoolDecoder(
        workers=settings.decode_workers, max_pixels=settings.max_image_pixels, fit=settings.fit
    )
    stack.callback(decoder.close)
    await decoder.warm_up()
    s3 = await stack.enter_async_context(s3_client(settings.s3))
    reader = S3ObjectReader(s3, max_bytes=settings.max_object_bytes)

    catalogue = PgIndexCatalogue(resources.pool)
    directory = IndexDirectory(
        catalogue,
        models,
        stores,
        default_model_connection=settings.default_model_connection,
        default_store_connection=settings.vector_store.kind,
    )
    embedder = FileEmbedder(reader, decoder, batch_size=settings.offline_model.batch_size)
    sink = KafkaEventSink(
        resources.broker,
        service=settings.service_name,
        embedded_topic=settings.kafka.topic_file_embedded,
        source_topic=settings.kafka.topic_file_discovered,
    )
    pipeline = DiscoveredPipeline(directory, embedder, sink, concurrency=settings.fetch_concurrency)
    router = file_discovered_router(
        pipeline,
        topic=settings.kafka.topic_file_discovered,
        group_id=settings.consumer_group,
        max_records=settings.consume_batch_max_records,
        batch_timeout_ms=settings.consume_batch_timeout_ms,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
        retry_backoff_s=settings.retry_backoff_s,
    )

    jobs = PgIndexJobStore(resources.pool)
    runner = IndexJobRunner(
        jobs,
        directory,
        embedder,
        sink,
        page_size=settings.job_page_size,
        default_concurrency=settings.job_default_concurrency,
        poll_interval_s=settings.job_poll_interval_s,
        stale_after_s=settings.job_stale_after_s,
    )
    queries = QueryEmbedder(directory, reader, decoder, max_text_chars=settings.max_query_text_chars)
    servicer = EmbedServicer(queries, directory, IndexJobService(jobs, runner, directory, jobs))
    return ServiceParts(
        grpc_service_names=[embedding_pb2.DESCRIPTOR.services_by_name["EmbedService"].full_name],
        grpc_registrations=[
            lambda server: embedding_pb2_grpc.add_EmbedServiceServicer_to_server(servicer, server)
        ],
        routers=[router],
        background=[runner.run_forever],
    )


async def serve(
    stop: asyncio.Event,
    settings: EmbedderSettings | None = None,
    *,
    preloaded: Mapping[str, EmbeddingModel] | None = None,
) -> None:
    """Runs the service until ``stop`` is set (settings from the environment by default)."""
    await run_service(settings or EmbedderSettings(), partial(build, preloaded=preloaded), stop)


def main() -> None:
    """``viewfinder-embedder`` console entry point."""
    run_until_signalled(serve)


if __name__ == "__main__":
    main()
