"""The SearchService servicer: translates protobuf to the domain and back."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2  # type: ignore[import-untyped]  # ships .pyi without py.typed

from viewfinder.v1 import common_pb2, dataset_pb2, search_pb2, search_pb2_grpc
from viewfinder_common.logging import get_logger
from viewfinder_common.timestamps import to_timestamp
from viewfinder_search.domain.dsl import QueryError
from viewfinder_search.domain.engine import ResultItem, Searcher, SearchOutcome
from viewfinder_search.domain.records import FileRecord, TagRecord
from viewfinder_search.domain.request import search_spec

log = get_logger(__name__)

# The trailer gRPC clients read google.rpc.Status (with its details) from.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_FILE_STATUS = {
    "active": dataset_pb2.FILE_STATUS_ACTIVE,
    "deleted": dataset_pb2.FILE_STATUS_DELETED,
    "unsupported": dataset_pb2.FILE_STATUS_UNSUPPORTED,
    "corrupt": dataset_pb2.FILE_STATUS_CORRUPT,
}
_TAG_SOURCE = {"ai": common_pb2.TAG_SOURCE_AI, "user": common_pb2.TAG_SOURCE_USER}


def file_message(record: FileRecord) -> dataset_pb2.File:
    """The File message of a catalogue row."""
    return dataset_pb2.File(
        id=record.id,
        dataset_id=record.dataset_id,
        dataset_version_id=record.version_id,
        uri=record.uri,
        bucket=record.bucket,
        key=record.key,
        size=record.size,
        etag=record.etag,
        last_modified=to_timestamp(record.last_modified),
        format=record.format or "",
        width=record.width or 0,
        height=record.height or 0,
        frames=record.frames or 0,
        mode=record.mode or "",
        status=_FILE_STATUS.get(record.status, dataset_pb2.FILE_STATUS_UNSPECIFIED),
        error=record.error or "",
        create_time=to_timestamp(record.created_at),
        update_time=to_timestamp(record.updated_at),
    )


def tag_message(record: TagRecord) -> common_pb2.Tag:
    """The Tag message of a tag in effect."""
    tag = common_pb2.Tag(
        name=record.name,
        value=record.value,
        source=_TAG_SOURCE.get(record.source, common_pb2.TAG_SOURCE_UNSPECIFIED),
        model=record.model or "",
        tag_definition_id=record.definition_id or "",
        tag_definition_version=record.definition_version or 0,
    )
    if record.confidence is not None:
        tag.confidence = record.confidence
    return tag


def result_message(item: ResultItem) -> search_pb2.SearchResult:
    """The SearchResult message of one result item."""
    result = search_pb2.SearchResult(
        file_id=item.file.id,
        uri=item.file.uri,
        tags=[tag_message(tag) for tag in item.tags],
        file=file_message(item.file),
        preview_url=item.preview_url,
        preview_url_expire_time=to_timestamp(item.preview_expires),
    )
    if item.score is not None:
        result.score = item.score
    return result


def response_message(outcome: SearchOutcome) -> search_pb2.SearchResponse:
    """The SearchResponse of a search outcome."""
    response = search_pb2.SearchResponse(
        results=[result_message(item) for item in outcome.items], next_page_token=outcome.next_page_token
    )
    if outcome.facets is not None:
        response.facets.CopyFrom(
            search_pb2.SearchFacets(
                matched_files=outcome.facets.matched_files,
                tag_counts=[
                    search_pb2.TagCount(name=count.name, value=count.value, count=count.count)
                    for count in outcome.facets.tag_counts
                ],
            )
        )
    return response


def query_error_status(error: QueryError) -> status_pb2.Status:
    """google.rpc.Status for a DSL error, with a QueryError detail pointing at the mistake."""
    detail = any_pb2.Any()
    detail.Pack(
        search_pb2.QueryError(
            message=error.message, line=error.line, column=error.column, expected=list(error.expected)
        )
    )
    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    return status_pb2.Status(code=code, message=str(error), details=[detail])


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """SearchService over a ``Searcher``."""

    def __init__(self, searcher: Searcher) -> None:
        self._searcher = searcher

    async def Search(  # noqa: N802 (gRPC method name)
        self, request: search_pb2.SearchRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> search_pb2.SearchResponse:
        """Searches a dataset version; DSL errors carry a QueryError status detail."""
        try:
            spec = search_spec(request)
        except QueryError as error:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                str(error),
                trailing_metadata=((STATUS_DETAILS_KEY, query_error_status(error).SerializeToString()),),
            )
        outcome = await self._searcher.search(spec)
        log.info(
            "search_done",
            dataset_version_id=spec.dataset_version_id,
            results=len(outcome.items),
            vector=spec.vector is not None,
            strategy=outcome.strategy.value if outcome.strategy else None,
        )
        return response_message(outcome)
