"""Selections answered by SearchService: the exporter pages through a search over gRPC.

Search owns the query logic (structured filters, DSL, vector queries), so
the exporter never re-implements it: it repeats the request with
``page_token`` until the last page. Every call has a deadline; calls that
fail with UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED are retried a
few times with backoff, and the next page is requested while the current one
is written, so search latency overlaps the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC
from typing import Any

import grpc

from viewfinder.v1 import common_pb2, search_pb2, search_pb2_grpc
from viewfinder_common.errors import DomainError, FailedPrecondition
from viewfinder_common.logging import get_logger
from viewfinder_exporter.domain.records import ExportRecord, TagSnapshot
from viewfinder_exporter.domain.runner import SourcePage

log = get_logger(__name__)

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_TAG_SOURCES = {common_pb2.TAG_SOURCE_AI: "ai", common_pb2.TAG_SOURCE_USER: "user"}
# Search's maximum page size.
MAX_SEARCH_PAGE_SIZE = 1000


class SearchRejected(DomainError):
    """SearchService refused a call; keeps its status code and trailers (e.g. a DSL QueryError detail)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        super().__init__(f"search refused the selection: {details}")
        self.status = code
        self.trailing_metadata = tuple(trailing_metadata or ())


def tag_snapshot(tag: common_pb2.Tag) -> TagSnapshot:
    """A Tag message as a snapshot."""
    return TagSnapshot(
        name=tag.name,
        value=tag.value,
        source=_TAG_SOURCES.get(tag.source, ""),
        confidence=tag.confidence if tag.HasField("confidence") else None,
        model=tag.model,
        definition_id=tag.tag_definition_id,
        definition_version=tag.tag_definition_version,
    )


def export_record(result: search_pb2.SearchResult, storage_connection: str) -> ExportRecord:
    """A search result as an export record."""
    file = result.file
    return ExportRecord(
        file_id=result.file_id,
        dataset_id=file.dataset_id,
        dataset_version_id=file.dataset_version_id,
        uri=result.uri or file.uri,
        bucket=file.bucket,
        key=file.key,
        size=file.size,
        etag=file.etag,
        last_modified=file.last_modified.ToDatetime(tzinfo=UTC) if file.HasField("last_modified") else None,
        format=file.format,
        width=file.width,
        height=file.height,
        frames=file.frames,
        mode=file.mode,
        tags=tuple(tag_snapshot(tag) for tag in result.tags),
        score=result.score if result.HasField("score") else None,
        storage_connection=storage_connection,
    )


def export_request(request: search_pb2.SearchRequest) -> search_pb2.SearchRequest:
    """The request an export pages through: paging, facets and preview URLs are the exporter's business."""
    unpaged = search_pb2.SearchRequest()
    unpaged.CopyFrom(request)
    for name in ("page_size", "page_token", "include_facets", "include_preview_urls"):
        unpaged.ClearField(name)
    return unpaged


class SearchClient:
    """Calls SearchService.Search with a deadline and a few retries."""

    def __init__(
        self,
        stub: search_pb2_grpc.SearchServiceAsyncStub,
        *,
        deadline_s: float,
        attempts: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self._stub = stub
        self._deadline_s = deadline_s
        self._attempts = attempts
        self._backoff_s = backoff_s

    async def search(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        """One Search call; SearchRejected with search's status when it fails for good."""
        for attempt in range(1, self._attempts + 1):
            try:
                response: search_pb2.SearchResponse = await self._stub.Search(
                    request, timeout=self._deadline_s
                )
            except grpc.aio.AioRpcError as error:
                if error.code() in _RETRYABLE and attempt < self._attempts:
                    log.warning("search_retry", code=error.code().name, attempt=attempt)
                    await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
                    continue
                raise SearchRejected(
                    error.code(), f"{error.code().name}: {error.details()}", error.trailing_metadata()
                ) from None
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def count(self, request: search_pb2.SearchRequest) -> int:
        """How many files the search matches (one page of one result, with facets)."""
        probe = export_request(request)
        probe.page_size = 1
        probe.include_facets = True
        response = await self.search(probe)
        return int(response.facets.matched_files)


class SearchSource:
    """``RecordSource`` over every page of one search."""

    def __init__(
        self,
        client: SearchClient,
        request: search_pb2.SearchRequest,
        *,
        storage_connection: str,
        page_size: int = MAX_SEARCH_PAGE_SIZE,
    ) -> None:
        self._client = client
        self._request = export_request(request)
        self._request.page_size = page_size
        self._storage_connection = storage_connection

    async def pages(self, cursor: str) -> AsyncGenerator[SourcePage, None]:
        """Pages from the search page token ``cursor``; the next page is fetched while one is written."""
        pending = asyncio.create_task(self._page(cursor))
        try:
            while True:
                response = await pending
                if response.next_page_token:
                    pending = asyncio.create_task(self._page(response.next_page_token))
                records = self._records(response.results)
                yield SourcePage(records, 0, response.next_page_token)
                if not response.next_page_token:
                    return
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, SearchRejected):
                    await pending

    async def _page(self, token: str) -> search_pb2.SearchResponse:
        request = search_pb2.SearchRequest()
        request.CopyFrom(self._request)
        request.page_token = token
        try:
            return await self._client.search(request)
        except SearchRejected as error:
            if token and error.status == grpc.StatusCode.INVALID_ARGUMENT:
                # The request itself was accepted before, so it is the token: search
                # signs tokens with a key that a restart without a configured key replaces.
                raise FailedPrecondition(
                    "search no longer accepts this export's page token (its page-token key changed; "
                    "set VIEWFINDER_SEARCH_PAGE_TOKEN_KEY on every search replica); start a new export"
                ) from None
            raise

    def _records(self, results: Sequence[search_pb2.SearchResult]) -> list[ExportRecord]:
        return [export_record(result, self._storage_connection) for result in results]
