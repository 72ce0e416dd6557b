"""The EmbedService client: a dataset without an index is a precondition, not a bad request."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from viewfinder.v1 import embedding_pb2, embedding_pb2_grpc
from viewfinder_common.errors import FailedPrecondition
from viewfinder_search.adapters.embedder import EmbedServiceClient
from viewfinder_search.domain.semantic import TextQuery


class _EmbedderWithoutIndex(embedding_pb2_grpc.EmbedServiceServicer):
    """Answers like the embedder for a dataset nothing has been indexed in yet."""

    async def EmbedText(self, request: embedding_pb2.EmbedTextRequest, context: Any) -> Any:  # noqa: N802
        return embedding_pb2.EmbedTextResponse(
            vectors=[embedding_pb2.NamedVector(field="semantic", values=[1.0, 0.0])], index_name=""
        )


async def test_a_dataset_without_an_index_is_a_failed_precondition() -> None:
    server = grpc.aio.server()
    embedding_pb2_grpc.add_EmbedServiceServicer_to_server(_EmbedderWithoutIndex(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = EmbedServiceClient(channel, deadline_s=5)
            with pytest.raises(FailedPrecondition, match="has no index yet"):
                await client.embed("0b0c6f4e-7d1a-4a7e-9d5e-1f6c2b7a9e01", "", TextQuery(text="a car"))
    finally:
        await server.stop(None)
