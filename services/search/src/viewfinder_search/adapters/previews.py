"""Short-lived presigned GET URLs for result previews."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any


class S3PreviewSigner:
    """Signs with an aioboto3 S3 client opened in the lifespan (signing makes no request)."""

    def __init__(self, s3: Any, *, ttl_s: int) -> None:
        self._s3 = s3
        self._ttl_s = ttl_s

    async def sign(self, bucket: str, key: str) -> tuple[str, datetime]:
        """A presigned GET URL for ``bucket/key`` and when it stops working."""
        expires = datetime.now(UTC) + timedelta(seconds=self._ttl_s)
        url = await self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self._ttl_s
        )
        return str(url), expires
