"""Reading the images to label from object storage (any S3 API)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from viewfinder_tagger.domain.models import LabelingFailed


class ObjectReader:
    """Reads objects and presigns URLs with one shared (pooled) aioboto3 S3 client."""

    def __init__(self, s3: Any, *, presign_expires_s: int = 900) -> None:
        self._s3 = s3
        self._expires_s = presign_expires_s

    async def read(self, bucket: str, key: str) -> bytes:
        """The object's bytes; LabelingFailed with the S3 error code if it cannot be read."""
        try:
            response = await self._s3.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise LabelingFailed(f"could not read s3://{bucket}/{key}: {code}") from None
        except BotoCoreError as exc:
            raise LabelingFailed(f"could not read s3://{bucket}/{key}: {type(exc).__name__}") from None
        return data

    async def presigned_url(self, bucket: str, key: str) -> str:
        """A GET URL the model service can fetch for a while (``presign_expires_s``)."""
        url: str = await self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self._expires_s
        )
        return url
