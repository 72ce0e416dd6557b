"""Container health check: asks the service's own grpc.health.v1 whether it is SERVING.

``python /opt/viewfinder/healthcheck.py <service>`` reads the port from the
service's Settings (so ``VIEWFINDER_<SERVICE>_GRPC_PORT`` is honoured) and exits
0 when the server answers SERVING within the timeout, 1 otherwise. Docker and
Compose use it (the image's HEALTHCHECK); Kubernetes uses its native grpc probes.
"""

from __future__ import annotations

import importlib
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from viewfinder_common.settings import ServiceSettings

TIMEOUT_S = 3.0


def service_port(service: str) -> int:
    """The gRPC port the service's Settings resolve to in this environment."""
    module = importlib.import_module(f"viewfinder_{service}.config")
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, ServiceSettings) and obj.__module__ == module.__name__:
            return int(obj().grpc_port)
    raise LookupError(f"{module.__name__} defines no ServiceSettings subclass")


def check(port: int) -> bool:
    """True when the server on 127.0.0.1:port reports SERVING."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            sys.stderr.write(f"unhealthy: {exc.code().name}\n")
            return False
    serving: bool = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        sys.stderr.write(f"unhealthy: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}\n")
    return serving


def main(argv: list[str]) -> int:
    """Entry point: argv[1] is the service name (ingest, tagger, ...)."""
    if len(argv) != 2:
        sys.stderr.write("usage: healthcheck.py <service>\n")
        return 2
    return 0 if check(service_port(argv[1])) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
