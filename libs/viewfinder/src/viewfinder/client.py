"""Loading logical dataset versions from the exporter's ExportService (synchronous gRPC)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC

import grpc

from viewfinder.datasets import Dataset, DatasetItem, ItemTag, ManifestError, checksum_of
from viewfinder.storage import DEFAULT_CACHE_BYTES, ObjectReader, StorageOptions
from viewfinder.v1 import common_pb2, export_pb2, export_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:7055"
_ITEMS_PER_CALL = 1000
_SOURCES = {common_pb2.TAG_SOURCE_AI: "ai", common_pb2.TAG_SOURCE_USER: "user"}


class DatasetNotFoundError(LookupError):
    """No logical dataset (or no such version of it) exists."""


def item_from_message(message: export_pb2.LogicalDatasetItem) -> DatasetItem:
    """An item from a LogicalDatasetItem message."""
    file = message.file
    return DatasetItem(
        file_id=file.id,
        uri=file.uri,
        bucket=file.bucket,
        key=file.key,
        size=file.size,
        etag=file.etag,
        last_modified=file.last_modified.ToDatetime(tzinfo=UTC) if file.HasField("last_modified") else None,
        format=file.format,
        width=file.width,
        height=file.height,
        score=message.score if message.HasField("score") else None,
        tags=tuple(
            ItemTag(
                name=tag.name,
                value=tag.value,
                source=_SOURCES.get(tag.source, ""),
                confidence=tag.confidence if tag.HasField("confidence") else None,
                model=tag.model,
            )
            for tag in message.tags
        ),
        dataset_id=file.dataset_id,
        dataset_version_id=file.dataset_version_id,
        storage_connection=message.storage_connection,
    )


class ExportClient:
    """A small synchronous client of ExportService; every call has a deadline."""

    def __init__(self, target: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.target = target or os.environ.get("VIEWFINDER_EXPORTER_TARGET") or DEFAULT_TARGET
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(self.target)
        self._stub = export_pb2_grpc.ExportServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> ExportClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def version(self, name: str, version: str = "latest") -> export_pb2.LogicalDatasetVersion:
        """A version by dataset name and version name ("v2", or "latest")."""
        request = export_pb2.GetLogicalDatasetVersionRequest(
            version_name=export_pb2.LogicalDatasetVersionName(name=name, version=version)
        )
        try:
            response = self._stub.GetLogicalDatasetVersion(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise DatasetNotFoundError(error.details()) from None
            raise
        return response.version

    def items(self, version_id: str) -> Iterator[DatasetItem]:
        """Every item of a version, in export order, fetched a page at a time."""
        token = ""
        while True:
            page = self._stub.ListLogicalDatasetItems(
                export_pb2.ListLogicalDatasetItemsRequest(
                    logical_dataset_version_id=version_id, page_size=_ITEMS_PER_CALL, page_token=token
                ),
                timeout=self.timeout_s,
            )
            yield from (item_from_message(item) for item in page.items)
            token = page.next_page_token
            if not token:
                return


def load_dataset(
    name: str,
    version: str = "latest",
    *,
    target: str | None = None,
    storage: StorageOptions | None = None,
    verify: bool = True,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    timeout_s: float = 30.0,
) -> Dataset:
    """A logical dataset version (e.g. ``load_dataset("cars", version="v2")``), its items in export order.

    ``target`` is the ExportService address (default ``$VIEWFINDER_EXPORTER_TARGET`` or
    127.0.0.1:7055); ``storage`` says how to read images (default: the
    ``VIEWFINDER_S3_*`` variables, then boto3's own configuration). With
    ``verify`` the items are checked against the version's checksum.
    """
    with ExportClient(target, timeout_s=timeout_s) as client:
        found = client.version(name, version)
        items = list(client.items(found.id))
    if verify and checksum_of(items) != found.checksum:
        raise ManifestError(f"{name} {found.name}: the items read do not match the version's checksum")
    return Dataset(
        items, name=name, version=found.name, reader=ObjectReader(storage, cache_bytes=cache_bytes)
    )
