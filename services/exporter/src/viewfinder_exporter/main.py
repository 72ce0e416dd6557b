"""Process entry of the exporter service: build its parts, run the shared lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import grpc

from viewfinder.v1 import export_pb2, export_pb2_grpc, search_pb2_grpc
from viewfinder_common.app import Resources, ServiceParts, run_service
from viewfinder_common.grpc_server import ServicerRegistration
from viewfinder_common.runtime import run_until_signalled
from viewfinder_common.s3 import s3_client
from viewfinder_exporter.adapters.catalogue import ExporterCatalogue
from viewfinder_exporter.adapters.jobs import ExportJobs
from viewfinder_exporter.adapters.logical import LogicalDatasets
from viewfinder_exporter.adapters.s3_objects import S3ObjectStore
from viewfinder_exporter.adapters.search_source import SearchClient
from viewfinder_exporter.config import ExporterSettings
from viewfinder_exporter.domain.sinks import ObjectStore
from viewfinder_exporter.exports import ExportStarter, TargetPolicy
from viewfinder_exporter.handlers.grpc_export import ExportServicer
from viewfinder_exporter.job_runner import ExportJobRunner, RunnerSettings


@dataclass(frozen=True)
class Exporter:
    """The exporter's parts: the gRPC servicer and the background job runner."""

    servicer: ExportServicer
    runner: ExportJobRunner


def assemble(
    settings: ExporterSettings,
    *,
    pool: asyncpg.Pool,
    objects: ObjectStore,
    search_channel: grpc.aio.Channel,
) -> Exporter:
    """Wires the exporter over open connections (the lifespan's, or a test's)."""
    jobs = ExportJobs(pool)
    catalogue = ExporterCatalogue(pool)
    search = SearchClient(
        search_pb2_grpc.SearchServiceStub(search_channel), deadline_s=settings.search_deadline_s
    )
    policy = TargetPolicy(
        allowed_connections=frozenset({settings.storage_connection}),
        allowed_buckets=tuple(settings.allowed_buckets),
    )
    runner = ExportJobRunner(
        pool=pool,
        jobs=jobs,
        catalogue=catalogue,
        search=search,
        objects=objects,
        policy=policy,
        settings=RunnerSettings(
            max_parallel_jobs=settings.max_parallel_jobs,
            lease_s=settings.job_lease_s,
            poll_interval_s=settings.job_poll_interval_s,
            part_size=settings.manifest_part_size_bytes,
            search_page_size=settings.search_page_size,
        ),
    )
    starter = ExportStarter(
        jobs=jobs, catalogue=catalogue, search=search, policy=policy, wake_worker=runner.wake
    )
    servicer = ExportServicer(
        starter=starter, jobs=jobs, logical=LogicalDatasets(pool), wake_worker=runner.wake
    )
    return Exporter(servicer, runner)


def register(servicer: ExportServicer) -> ServicerRegistration:
    """The registration of the ExportService servicer on a server."""
    return lambda server: export_pb2_grpc.add_ExportServiceServicer_to_server(servicer, server)


SERVICE_NAME = export_pb2.DESCRIPTOR.services_by_name["ExportService"].full_name


async def build(resources: Resources) -> ServiceParts:
    """The exporter's gRPC servicer and its job runner over the catalogue, SearchService and S3."""
    settings = resources.settings
    assert isinstance(settings, ExporterSettings)
    channel = grpc.aio.insecure_channel(settings.search_target)
    resources.exit_stack.push_async_callback(channel.close)
    s3 = await resources.exit_stack.enter_async_context(s3_client(settings.s3))
    exporter = assemble(settings, pool=resources.pool, objects=S3ObjectStore(s3), search_channel=channel)
    return ServiceParts(
        grpc_service_names=[SERVICE_NAME],
        grpc_registrations=[register(exporter.servicer)],
        background=[exporter.runner.run_forever],
    )


async def serve(stop: asyncio.Event) -> None:
    """Runs the service until ``stop`` is set."""
    await run_service(ExporterSettings(), build, stop)


def main() -> None:
    """``viewfinder-exporter`` console entry point."""
    run_until_signalled(serve)


if __name__ == "__main__":
    main()
