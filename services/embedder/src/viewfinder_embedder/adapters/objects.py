"""Reading image objects from S3-API buckets."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from viewfinder_embedder.domain.ports import ObjectUnavailable

# S3 error codes that concern one object, not the connection: the file fails, the batch goes on.
_PER_OBJECT_ERRORS = frozenset(
    {"NoSuchKey", "404", "NotFound", "AccessDenied", "403", "InvalidObjectState", "NoSuchBucket"}
)


class S3ObjectReader:
    """``ObjectReader`` over one aioboto3 S3 client (opened in the lifespan)."""

    def __init__(self, client: Any, *, max_bytes: int) -> None:
        self._client = client
        self._max_bytes = max_bytes

    async def read(self, bucket: str, key: str) -> bytes:
        """The object's bytes, refusing objects larger than the limit before reading them."""
        uri = f"s3://{bucket}/{key}"
        try:
            response = await self._client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _PER_OBJECT_ERRORS:
                raise ObjectUnavailable(f"cannot read {uri}: {code}") from None
            raise
        async with response["Body"] as body:
            length = int(response.get("ContentLength") or 0)
            if length > self._max_bytes:
                raise ObjectUnavailable(
                    f"{uri} is {length:,} bytes, more than the limit of {self._max_bytes:,} "
                    "(VIEWFINDER_EMBEDDER_MAX_OBJECT_BYTES)"
                )
            data: bytes = await body.read()
        return data
