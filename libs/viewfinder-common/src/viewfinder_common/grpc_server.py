"""The grpc.aio server builder every service uses.

Each server gets the standard health service, reflection, the domain-error
interceptor and a graceful shutdown that first reports NOT_SERVING (so load
balancers stop sending) and then lets in-flight calls finish.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from viewfinder_common.errors import DomainError
from viewfinder_common.logging import get_logger

log = get_logger(__name__)

# Registers a servicer on a server, e.g. ``lambda s: add_XServicer_to_server(impl, s)``.
ServicerRegistration = Callable[[grpc.aio.Server], None]


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns a ``DomainError`` raised by a unary handler into its gRPC status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            try:
                return await inner(request, context)
            except DomainError as exc:
                await context.abort(exc.status, str(exc))

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class GrpcServer:
    """A grpc.aio server with health, reflection and graceful shutdown."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        service_names: Sequence[str],
        registrations: Sequence[ServicerRegistration],
        shutdown_grace_s: float = 5.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._address = f"{host}:{port}"
        self._service_names = list(service_names)
        self._grace = shutdown_grace_s
        self._server = grpc.aio.server(
            interceptors=[DomainErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        for register in registrations:
            register(self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self.port = 0

    async def start(self) -> int:
        """Binds, starts and reports SERVING; returns the bound port (useful with port 0)."""
        self.port = self._server.add_insecure_port(self._address)
        await self._server.start()
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("grpc_started", address=self._address, port=self.port, services=self._service_names)
        return self.port

    async def stop(self) -> None:
        """Reports NOT_SERVING, then stops with a grace period for in-flight calls."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._grace)
        log.info("grpc_stopped", address=self._address)

    async def wait_for_termination(self) -> None:
        """Blocks until the server stops."""
        await self._server.wait_for_termination()
