"""The EmbedService client: query texts and images become vectors of the index's model."""

from __future__ import annotations

import grpc

from viewfinder.v1 import embedding_pb2, embedding_pb2_grpc
from viewfinder_common.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from viewfinder_search.domain.engine import EmbeddedQuery
from viewfinder_search.domain.semantic import ImageBytesQuery, ImageUriQuery, SemanticQuery, TextQuery

# What the embedder's status means to a search caller.
_STATUS_ERRORS: dict[grpc.StatusCode, type[DomainError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


class EmbedServiceClient:
    """Calls EmbedService with a deadline on every call."""

    def __init__(self, channel: grpc.aio.Channel, *, deadline_s: float) -> None:
        self._stub = embedding_pb2_grpc.EmbedServiceStub(channel)
        self._deadline_s = deadline_s

    async def embed(self, dataset_id: str, index_name: str, query: SemanticQuery) -> EmbeddedQuery:
        """The query's vector in the field that answers its kind (the first such field)."""
        kind = "text" if isinstance(query, TextQuery) else "image"
        try:
            if isinstance(query, TextQuery):
                text_response = await self._stub.EmbedText(
                    embedding_pb2.EmbedTextRequest(
                        dataset_id=dataset_id, index_name=index_name, text=query.text
                    ),
                    timeout=self._deadline_s,
                )
                vectors, used_index = list(text_response.vectors), text_response.index_name
            else:
                request = embedding_pb2.EmbedImageRequest(dataset_id=dataset_id, index_name=index_name)
                if isinstance(query, ImageUriQuery):
                    request.image_uri = query.uri
                else:
                    assert isinstance(query, ImageBytesQuery)
                    request.image_bytes = query.data
                image_response = await self._stub.EmbedImage(request, timeout=self._deadline_s)
                vectors, used_index = list(image_response.vectors), image_response.index_name
        except grpc.aio.AioRpcError as err:
            error = _STATUS_ERRORS.get(err.code(), Unavailable)
            raise error(f"embedding the {kind} query failed: {err.details()}") from err
        if not vectors:
            raise FailedPrecondition(
                f"index {used_index or index_name or '(active)'} has no vector field that answers {kind} queries"
            )
        if not (used_index or index_name):
            # The embedder answers with the model a new index would use, but
            # nothing has been indexed yet: there is nothing to search.
            raise FailedPrecondition(
                f"dataset {dataset_id} has no index yet; run an index job or let the pipeline embed its files"
            )
        first = vectors[0]
        return EmbeddedQuery(
            index_name=used_index or index_name, vector_field=first.field, vector=list(first.values)
        )
