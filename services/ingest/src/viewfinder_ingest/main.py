"""Process entry of the ingest service: build its parts, run the shared lifespan.

Parts: the DatasetService gRPC servicer, the storage-events batch subscriber,
the notification webhook (a background task) and the sync runner, whose jobs
are stopped (and recorded as interrupted, resumable) before the broker and
the pool close.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from faststream.kafka import KafkaBroker, KafkaRouter

from viewfinder.v1 import dataset_pb2, dataset_pb2_grpc
from viewfinder_common.app import Resources, ServiceParts, run_service
from viewfinder_common.connections import service as connection_service
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.runtime import run_until_signalled
from viewfinder_common.s3 import s3_client
from viewfinder_ingest.adapters.catalogue import Catalogue
from viewfinder_ingest.adapters.embedder import EmbedderIndexes
from viewfinder_ingest.adapters.kafka import KafkaDeadLetterSink, KafkaEventPublisher
from viewfinder_ingest.adapters.storage import S3ObjectStore
from viewfinder_ingest.config import IngestSettings
from viewfinder_ingest.domain.inspection import InspectionLimits
from viewfinder_ingest.domain.inspector import ObjectInspector
from viewfinder_ingest.domain.notification_processor import NotificationProcessor
from viewfinder_ingest.domain.sync_runner import SyncOptions, SyncRunner
from viewfinder_ingest.handlers.grpc_dataset import DatasetServicer
from viewfinder_ingest.handlers.storage_events import storage_events_router
from viewfinder_ingest.handlers.webhook import WebhookServer, webhook_app

SERVICE_NAME = dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name


@dataclass
class IngestComponents:
    """The wired parts of one ingest process (tests and benchmarks build them too)."""

    catalogue: Catalogue
    store: S3ObjectStore
    inspector: ObjectInspector
    runner: SyncRunner
    processor: NotificationProcessor
    servicer: DatasetServicer
    router: KafkaRouter
    webhook: WebhookServer
    # To the embedder (settings.embedder_target); whoever assembles closes it.
    embedder_channel: grpc.aio.Channel | None = None


def assemble(
    settings: IngestSettings, pool: asyncpg.Pool, broker: KafkaBroker, s3: Any, executor: ThreadPoolExecutor
) -> IngestComponents:
    """Wires the service's parts over open connections (the embedder channel connects on first use)."""
    catalogue = Catalogue(pool, job_stale_after_s=settings.job_stale_after_s)
    store = S3ObjectStore(s3)
    inspector = ObjectInspector(
        store,
        executor,
        limits=InspectionLimits(
            max_image_pixels=settings.max_image_pixels, verify_max_pixels=settings.verify_max_pixels
        ),
        header_bytes=settings.header_bytes,
        max_header_bytes=settings.max_header_bytes,
        concurrency=settings.inspect_concurrency,
    )
    publisher = KafkaEventPublisher(broker, settings.kafka.topic_file_discovered)
    runner = SyncRunner(
        catalogue,
        store,
        inspector,
        publisher,
        SyncOptions(
            listing_concurrency=settings.listing_concurrency,
            page_size=settings.listing_page_size,
            heartbeat_s=settings.job_heartbeat_s,
        ),
    )
    dead_letters = KafkaDeadLetterSink(
        broker, service=settings.service_name, source_topic=settings.kafka.topic_storage_events
    )
    processor = NotificationProcessor(catalogue, store, inspector, publisher, dead_letters)
    embedder_channel = grpc.aio.insecure_channel(settings.embedder_target)
    servicer = DatasetServicer(
        catalogue,
        store,
        runner,
        version_file_limit=settings.default_version_file_limit,
        stored_connections=ConnectionStore(pool),
        indexes=EmbedderIndexes(
            embedder_channel, target=settings.embedder_target, deadline_s=settings.embedder_deadline_s
        ),
    )
    router = storage_events_router(
        processor,
        settings.kafka,
        group_id=settings.storage_events_group,
        max_records=settings.storage_events_batch,
    )
    token = settings.webhook_token.get_secret_value() if settings.webhook_token else None
    webhook = WebhookServer(
        webhook_app(
            processor, path=settings.webhook_path, token=token, max_body_bytes=settings.webhook_max_body_bytes
        ),
        host=settings.webhook_host,
        port=settings.webhook_port,
    )
    return IngestComponents(
        catalogue, store, inspector, runner, processor, servicer, router, webhook, embedder_channel
    )


async def build(resources: Resources) -> ServiceParts:
    """The ingest service's gRPC servicer, Kafka router and background tasks."""
    settings = resources.settings
    assert isinstance(settings, IngestSettings)
    s3 = await resources.exit_stack.enter_async_context(s3_client(settings.s3))
    executor = ThreadPoolExecutor(settings.inspect_threads, thread_name_prefix="ingest-inspect")
    resources.exit_stack.callback(executor.shutdown, wait=True, cancel_futures=True)
    parts = assemble(settings, resources.pool, resources.broker, s3, executor)
    assert parts.embedder_channel is not None
    resources.exit_stack.push_async_callback(parts.embedder_channel.close)

    async def run_jobs_until_stopped() -> None:
        # Cancelled before the broker and pool close, so running jobs record
        # themselves as interrupted while they still can.
        try:
            await asyncio.Event().wait()
        finally:
            await parts.runner.close()

    background = [run_jobs_until_stopped]
    if settings.webhook_enabled:
        background.append(parts.webhook.serve_forever)
    return ServiceParts(
        grpc_service_names=[SERVICE_NAME, connection_service.SERVICE_NAME],
        grpc_registrations=[
            lambda server: dataset_pb2_grpc.add_DatasetServiceServicer_to_server(parts.servicer, server),
            connection_service.connection_service_registration(resources.pool, settings.connections),
        ],
        routers=[parts.router] if settings.storage_events_enabled else [],
        background=background,
    )


async def serve(stop: asyncio.Event) -> None:
    """Runs the service until ``stop`` is set."""
    await run_service(IngestSettings(), build, stop)


def main() -> None:
    """``viewfinder-ingest`` console entry point."""
    run_until_signalled(serve)


if __name__ == "__main__":
    main()
