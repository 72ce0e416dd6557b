"""The services the CLI talks to: their addresses, one channel each, a deadline on every call."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc

from viewfinder.v1 import (
    dataset_pb2_grpc,
    embedding_pb2_grpc,
    export_pb2_grpc,
    labeling_pb2_grpc,
    search_pb2_grpc,
)
from viewfinder_cli.errors import ServiceCallError


class Service(enum.Enum):
    """A viewfinder service and the loopback address it listens on by default."""

    INGEST = ("ingest", "127.0.0.1:7051")
    TAGGER = ("tagger", "127.0.0.1:7052")
    EMBEDDER = ("embedder", "127.0.0.1:7053")
    SEARCH = ("search", "127.0.0.1:7054")
    EXPORTER = ("exporter", "127.0.0.1:7055")

    @property
    def label(self) -> str:
        """The service's name as used in options and messages (e.g. "ingest")."""
        return self.value[0]

    @property
    def default_address(self) -> str:
        """host:port of the service in the local stack."""
        return self.value[1]

    @property
    def address_envvar(self) -> str:
        """Environment variable that overrides the address (e.g. VIEWFINDER_CLI_INGEST_ADDR)."""
        return f"VIEWFINDER_CLI_{self.label.upper()}_ADDR"


@dataclass(frozen=True)
class CliSettings:
    """Where the services are and how long the CLI waits for them."""

    addresses: dict[Service, str]
    timeout_s: float = 30.0
    poll_interval_s: float = 1.0


StubT = TypeVar("StubT")
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class Endpoint(Generic[StubT]):
    """A typed stub of one service, whose calls always carry the deadline."""

    def __init__(self, service: Service, address: str, stub: StubT, timeout_s: float) -> None:
        self.service = service
        self.address = address
        self.stub = stub
        self.timeout_s = timeout_s

    def call(self, method: grpc.UnaryUnaryMultiCallable[RequestT, ResponseT], request: RequestT) -> ResponseT:
        """Calls ``method`` with the deadline; a failure becomes a ServiceCallError naming the service."""
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            name = type(request).__name__.removesuffix("Request")
            raise ServiceCallError(self.service.label, self.address, name, error) from None


@dataclass
class Connections:
    """Channels to the services, opened on first use and closed together."""

    settings: CliSettings
    _channels: dict[Service, grpc.Channel] = field(default_factory=dict)

    def _endpoint(self, service: Service, make_stub: Callable[[grpc.Channel], StubT]) -> Endpoint[StubT]:
        address = self.settings.addresses[service]
        channel = self._channels.get(service)
        if channel is None:
            channel = grpc.insecure_channel(address)
            self._channels[service] = channel
        return Endpoint(service, address, make_stub(channel), self.settings.timeout_s)

    def datasets(self) -> Endpoint[dataset_pb2_grpc.DatasetServiceStub]:
        """DatasetService of the ingest service."""
        return self._endpoint(Service.INGEST, dataset_pb2_grpc.DatasetServiceStub)

    def labeling(self) -> Endpoint[labeling_pb2_grpc.LabelingServiceStub]:
        """LabelingService of the tagger service."""
        return self._endpoint(Service.TAGGER, labeling_pb2_grpc.LabelingServiceStub)

    def embedding(self) -> Endpoint[embedding_pb2_grpc.EmbedServiceStub]:
        """EmbedService of the embedder service."""
        return self._endpoint(Service.EMBEDDER, embedding_pb2_grpc.EmbedServiceStub)

    def search(self) -> Endpoint[search_pb2_grpc.SearchServiceStub]:
        """SearchService of the search service."""
        return self._endpoint(Service.SEARCH, search_pb2_grpc.SearchServiceStub)

    def export(self) -> Endpoint[export_pb2_grpc.ExportServiceStub]:
        """ExportService of the exporter service."""
        return self._endpoint(Service.EXPORTER, export_pb2_grpc.ExportServiceStub)

    def close(self) -> None:
        """Closes every channel opened so far."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
