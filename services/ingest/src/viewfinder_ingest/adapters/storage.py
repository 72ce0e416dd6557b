"""The bucket, through any S3 API (AWS S3, OSS S3-compatible endpoint, MinIO, moto)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from botocore.exceptions import ClientError

from viewfinder_common.errors import InvalidArgument, Unavailable
from viewfinder_ingest.domain.models import ListedObject
from viewfinder_ingest.domain.ports import ListingPage, ObjectAccessError, ObjectHead

_MISSING = {"404", "NoSuchKey", "NotFound"}
_MISSING_BUCKET = {"NoSuchBucket"}


class S3ObjectStore:
    """Listing pages, ranged GETs and HEADs on one S3 client (its pool is shared)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def list_pages(
        self, bucket: str, prefix: str, *, delimiter: str | None, start_after: str | None, page_size: int
    ) -> AsyncIterator[ListingPage]:
        """Pages of ListObjectsV2 in key order, starting after ``start_after``."""
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        if delimiter:
            params["Delimiter"] = delimiter
        if start_after:
            params["StartAfter"] = start_after
        while True:
            response = await self._client.list_objects_v2(**params)
            objects = [
                ListedObject(
                    key=entry["Key"],
                    size=int(entry.get("Size", 0)),
                    etag=_etag(entry.get("ETag")),
                    last_modified=entry.get("LastModified"),
                )
                for entry in response.get("Contents", ())
            ]
            prefixes = [entry["Prefix"] for entry in response.get("CommonPrefixes", ())]
            truncated = bool(response.get("IsTruncated"))
            yield ListingPage(objects=objects, common_prefixes=prefixes, is_last=not truncated)
            if not truncated:
                return
            params.pop("StartAfter", None)
            params["ContinuationToken"] = response["NextContinuationToken"]

    async def read_head(self, bucket: str, key: str, length: int) -> ObjectHead | None:
        """The first ``length`` bytes of an object (ranged GET); None if it does not exist."""
        try:
            response = await self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{length - 1}")
        except ClientError as exc:
            code = _code(exc)
            if code in _MISSING:
                return None
            if code == "InvalidRange":  # a zero-byte object has no byte 0
                stat = await self.stat(bucket, key)
                return None if stat is None else ObjectHead(b"", 0, stat.etag, stat.last_modified)
            raise _access_error(bucket, key, exc) from exc
        # Leaving the context releases the connection to the pool when the body
        # was read to its end (the usual case: the range is all that was sent);
        # a server that ignored Range sent more, and that connection is closed.
        body = response["Body"]
        async with body:
            data: bytes = await body.read(length)
        return ObjectHead(
            data=data,
            size=_total_size(response, len(data)),
            etag=_etag(response.get("ETag")),
            last_modified=response.get("LastModified"),
        )

    async def stat(self, bucket: str, key: str) -> ListedObject | None:
        """An object's metadata (HEAD); None if it does not exist."""
        try:
            response = await self._client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise _access_error(bucket, key, exc) from exc
        return ListedObject(
            key=key,
            size=int(response.get("ContentLength", 0)),
            etag=_etag(response.get("ETag")),
            last_modified=response.get("LastModified"),
        )

    async def check_bucket(self, bucket: str) -> None:
        """Raises InvalidArgument if the bucket does not exist, Unavailable if it cannot be reached."""
        try:
            await self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = _code(exc)
            if code in _MISSING | _MISSING_BUCKET:
                raise InvalidArgument(f"bucket {bucket!r} does not exist on the storage connection") from None
            if code in {"403", "AccessDenied", "Forbidden"}:
                raise InvalidArgument(
                    f"the storage connection may not read bucket {bucket!r} (access denied)"
                ) from None
            raise Unavailable(f"could not check bucket {bucket!r}: {code}") from None
        except OSError as exc:
            raise Unavailable(f"the object store cannot be reached: {type(exc).__name__}") from None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _access_error(bucket: str, key: str, exc: ClientError) -> Exception:
    code = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if isinstance(status, int) and (status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout"}):
        transient: Exception = exc
        return transient  # transient: the caller's job or batch fails and is retried
    return ObjectAccessError(f"{code or status} reading s3://{bucket}/{key}")


def _etag(raw: Any) -> str:
    return str(raw or "").strip('"')


def _total_size(response: dict[str, Any], read: int) -> int:
    content_range = response.get("ContentRange")
    if isinstance(content_range, str) and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    length = response.get("ContentLength")
    return int(length) if length is not None else read
