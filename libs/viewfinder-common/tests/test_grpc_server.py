"""The shared gRPC server: health, reflection, domain-error mapping, graceful stop."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from viewfinder_common.errors import InvalidArgument, NotFound
from viewfinder_common.grpc_server import GrpcServer

SERVICE = "viewfinder.test.Echo"


def _register_echo(server: grpc.aio.Server) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        if request == b"missing":
            raise NotFound("dataset 'cars' does not exist")
        if request == b"bad":
            raise InvalidArgument("line 1, column 7: expected a value after '='")
        return request

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))


@pytest.fixture
async def server() -> Any:
    srv = GrpcServer(
        host="127.0.0.1",
        port=0,
        service_names=[SERVICE],
        registrations=[_register_echo],
        shutdown_grace_s=0.5,
    )
    await srv.start()
    yield srv
    await srv.stop()


async def test_health_reflection_and_error_mapping(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = set()
        async for response in responses:
            names |= {s.name for s in response.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names

        echo = channel.unary_unary(f"/{SERVICE}/Echo")
        assert await echo(b"hi", timeout=5) == b"hi"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await echo(b"missing", timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "cars" in (missing.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await echo(b"bad", timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "column 7" in (bad.value.details() or "")


async def test_stop_reports_not_serving_first() -> None:
    srv = GrpcServer(
        host="127.0.0.1",
        port=0,
        service_names=[SERVICE],
        registrations=[_register_echo],
        shutdown_grace_s=0.5,
    )
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await srv.stop()
        statuses = []
        try:
            while (update := await watch.read()) is not grpc.aio.EOF:
                statuses.append(update.status)
        except grpc.aio.AioRpcError:
            pass
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
