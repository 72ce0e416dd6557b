"""Test doubles of the five services for the CLI's tests: in-process grpc.aio
servers whose methods record each request and answer with scripted replies.

They stand in for OUR services so that the tests can check the exact request
messages the CLI builds; the real services are exercised by the end-to-end tests.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor, message
from typer.testing import Result

from viewfinder.v1 import (
    dataset_pb2,
    dataset_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    export_pb2,
    export_pb2_grpc,
    labeling_pb2,
    labeling_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[message.Message]]


@dataclass(frozen=True)
class Failure:
    """A scripted error reply."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, bytes | str], ...] = ()


@dataclass
class ScriptedService:
    """One gRPC service: every call is recorded; replies are served in order, the last one repeats."""

    descriptor: descriptor.ServiceDescriptor
    calls: list[tuple[str, message.Message]] = field(default_factory=list)
    _replies: dict[str, collections.deque[message.Message | Failure | Handler]] = field(default_factory=dict)

    def on(self, method: str, *replies: message.Message | Failure | Handler) -> None:
        """Scripts the replies of ``method``: responses, Failures or async handlers."""
        assert method in self.descriptor.methods_by_name, f"{self.descriptor.name} has no {method}"
        self._replies[method] = collections.deque(replies)

    def requests(self, method: str) -> list[Any]:
        """The requests ``method`` received, in order."""
        return [request for name, request in self.calls if name == method]

    def methods_called(self) -> list[str]:
        """Names of the methods called, in order."""
        return [name for name, _ in self.calls]

    async def _answer(self, method: str, request: message.Message, context: Any) -> message.Message:
        self.calls.append((method, request))
        queue = self._replies.get(method)
        if not queue:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"test double: no reply scripted for {method}")
            raise AssertionError("abort raises")
        reply = queue.popleft() if len(queue) > 1 else queue[0]
        if isinstance(reply, Failure):
            await context.abort(reply.code, reply.details, trailing_metadata=reply.trailing_metadata)
            raise AssertionError("abort raises")
        if isinstance(reply, message.Message):
            return reply
        return await reply(request, context)

    def servicer(self, base: type[Any]) -> Any:
        """An instance of the generated servicer base whose every method answers from this script."""
        namespace: dict[str, Any] = {}
        for method in self.descriptor.methods:
            namespace[method.name] = self._method(method.name)
        return type(f"Scripted{self.descriptor.name}", (base,), namespace)()

    def _method(self, name: str) -> Any:
        async def handle(_servicer: Any, request: message.Message, context: Any) -> message.Message:
            return await self._answer(name, request, context)

        return handle


@dataclass
class FakeServices:
    """The five services on one in-process server."""

    address: str
    ingest: ScriptedService
    tagger: ScriptedService
    embedder: ScriptedService
    search: ScriptedService
    exporter: ScriptedService

    def address_options(self) -> list[str]:
        """Root options pointing every service at the fakes."""
        return [
            f"--{name}-addr={self.address}" for name in ("ingest", "tagger", "embedder", "search", "exporter")
        ]


@contextlib.asynccontextmanager
async def serve_fakes() -> AsyncIterator[FakeServices]:
    """The scripted services, served together on an ephemeral loopback port."""
    scripted = {
        "ingest": ScriptedService(dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"]),
        "tagger": ScriptedService(labeling_pb2.DESCRIPTOR.services_by_name["LabelingService"]),
        "embedder": ScriptedService(embedding_pb2.DESCRIPTOR.services_by_name["EmbedService"]),
        "search": ScriptedService(search_pb2.DESCRIPTOR.services_by_name["SearchService"]),
        "exporter": ScriptedService(export_pb2.DESCRIPTOR.services_by_name["ExportService"]),
    }
    server = grpc.aio.server()
    dataset_pb2_grpc.add_DatasetServiceServicer_to_server(
        scripted["ingest"].servicer(dataset_pb2_grpc.DatasetServiceServicer), server
    )
    labeling_pb2_grpc.add_LabelingServiceServicer_to_server(
        scripted["tagger"].servicer(labeling_pb2_grpc.LabelingServiceServicer), server
    )
    embedding_pb2_grpc.add_EmbedServiceServicer_to_server(
        scripted["embedder"].servicer(embedding_pb2_grpc.EmbedServiceServicer), server
    )
    search_pb2_grpc.add_SearchServiceServicer_to_server(
        scripted["search"].servicer(search_pb2_grpc.SearchServiceServicer), server
    )
    export_pb2_grpc.add_ExportServiceServicer_to_server(
        scripted["exporter"].servicer(export_pb2_grpc.ExportServiceServicer), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield FakeServices(address=f"127.0.0.1:{port}", **scripted)
    finally:
        await server.stop(grace=None)


DATASET_ID = "5b0e3c1e-0000-4000-8000-000000000001"
VERSION_IDS = ("5b0e3c1e-0000-4000-8000-0000000000a1", "5b0e3c1e-0000-4000-8000-0000000000a2")


def script_dataset(
    fakes: FakeServices, name: str = "cars"
) -> tuple[dataset_pb2.Dataset, list[dataset_pb2.DatasetVersion]]:
    """Scripts ingest to know one dataset with two versions (v2 the latest) and returns them."""
    dataset = dataset_pb2.Dataset(
        id=DATASET_ID, name=name, bucket="images", prefix="cars/", latest_version=2, description="road scenes"
    )
    versions = [
        dataset_pb2.DatasetVersion(
            id=VERSION_IDS[1], dataset_id=DATASET_ID, number=2, name="v2", active_file_count=7, file_count=8
        ),
        dataset_pb2.DatasetVersion(
            id=VERSION_IDS[0], dataset_id=DATASET_ID, number=1, name="v1", active_file_count=5, file_count=5
        ),
    ]
    fakes.ingest.on("GetDataset", dataset_pb2.GetDatasetResponse(dataset=dataset))
    fakes.ingest.on("ListDatasetVersions", dataset_pb2.ListDatasetVersionsResponse(versions=versions))
    return dataset, versions


class InvokeCli(Protocol):
    """Runs `viewfinder` with root options and arguments; returns click's Result."""

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, root: list[str] | None = None
    ) -> Awaitable[Result]: ...
