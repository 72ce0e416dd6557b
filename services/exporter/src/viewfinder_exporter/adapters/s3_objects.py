"""The object operations of a manifest export over an aioboto3 S3 client."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from viewfinder_common.errors import FailedPrecondition, NotFound, Unavailable
from viewfinder_exporter.domain.errors import PermissionDenied
from viewfinder_exporter.domain.jobs import UploadedPart

# CopyObject copies at most 5 GiB; larger objects are copied part by part.
SINGLE_COPY_LIMIT = 5 * 1024**3
COPY_PART_SIZE = 512 * 1024**2
_READ_CHUNK = 1024 * 1024


def storage_error(error: ClientError, action: str, bucket: str, key: str) -> Exception:
    """A domain error for a failed S3 call: what failed and the store's error code, nothing else."""
    code = str(error.response.get("Error", {}).get("Code", "Unknown"))
    where = f"s3://{bucket}/{key}"
    if code in {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        return PermissionDenied(f"the store refused to {action} {where} ({code})")
    if code in {"NoSuchBucket", "NoSuchKey", "404"}:
        return NotFound(f"cannot {action} {where}: {code}")
    if code == "NoSuchUpload":
        return FailedPrecondition(
            f"the multipart upload of {where} no longer exists (aborted or expired); start a new export"
        )
    return Unavailable(f"cannot {action} {where}: {code}")


class S3ObjectStore:
    """``ObjectStore`` over an aioboto3 S3 client created in the service's lifespan."""

    def __init__(
        self, client: Any, *, single_copy_limit: int = SINGLE_COPY_LIMIT, copy_part_size: int = COPY_PART_SIZE
    ) -> None:
        self._s3 = client
        self._single_copy_limit = single_copy_limit
        self._copy_part_size = copy_part_size

    async def create_multipart_upload(self, bucket: str, key: str, content_type: str) -> str:
        """Starts a multipart upload; returns its id."""
        try:
            response = await self._s3.create_multipart_upload(
                Bucket=bucket, Key=key, ContentType=content_type
            )
        except ClientError as error:
            raise storage_error(error, "start an upload to", bucket, key) from None
        return str(response["UploadId"])

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Uploads one part; returns its ETag."""
        try:
            response = await self._s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        except ClientError as error:
            raise storage_error(error, f"upload part {number} of", bucket, key) from None
        return str(response["ETag"])

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        """Completes an upload; an upload that an earlier attempt completed counts as done."""
        try:
            await self._s3.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code == "NoSuchUpload" and await self.exists(bucket, key):
                return
            raise storage_error(error, "complete the upload of", bucket, key) from None

    async def put_object(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        """Writes a whole object."""
        try:
            await self._s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        except ClientError as error:
            raise storage_error(error, "write", bucket, key) from None

    async def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists."""
        try:
            await self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise storage_error(error, "look up", bucket, key) from None
        return True

    async def sha256(self, bucket: str, key: str) -> str:
        """Hex SHA-256 of an object, read in 1 MiB chunks."""
        digest = hashlib.sha256()
        try:
            response = await self._s3.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            # The context manager releases the connection even when reading fails.
            async with body:
                async for chunk in body.iter_chunks(_READ_CHUNK):
                    digest.update(chunk)
        except ClientError as error:
            raise storage_error(error, "read", bucket, key) from None
        return digest.hexdigest()

    async def copy(self, bucket: str, source_key: str, target_key: str) -> None:
        """Copies within the bucket: one CopyObject up to 5 GiB, UploadPartCopy ranges beyond."""
        try:
            head = await self._s3.head_object(Bucket=bucket, Key=source_key)
            size = int(head["ContentLength"])
            source = {"Bucket": bucket, "Key": source_key}
            if size <= self._single_copy_limit:
                await self._s3.copy_object(
                    Bucket=bucket,
                    Key=target_key,
                    CopySource=source,
                    ContentType=head.get("ContentType", "application/octet-stream"),
                    MetadataDirective="REPLACE",
                )
                return
            upload = await self._s3.create_multipart_upload(
                Bucket=bucket, Key=target_key, ContentType=head.get("ContentType", "application/octet-stream")
            )
            try:
                parts = []
                for number, start in enumerate(range(0, size, self._copy_part_size), start=1):
                    end = min(start + self._copy_part_size, size) - 1
                    part = await self._s3.upload_part_copy(
                        Bucket=bucket,
                        Key=target_key,
                        UploadId=upload["UploadId"],
                        PartNumber=number,
                        CopySource=source,
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                    parts.append({"PartNumber": number, "ETag": part["CopyPartResult"]["ETag"]})
                await self._s3.complete_multipart_upload(
                    Bucket=bucket,
                    Key=target_key,
                    UploadId=upload["UploadId"],
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                # Leave no orphaned parts behind; the next run copies again from the start.
                await self._s3.abort_multipart_upload(
                    Bucket=bucket, Key=target_key, UploadId=upload["UploadId"]
                )
                raise
        except ClientError as error:
            raise storage_error(error, "copy the manifest to", bucket, target_key) from None

    async def delete(self, bucket: str, key: str) -> None:
        """Deletes an object (S3 answers success for an absent one)."""
        try:
            await self._s3.delete_object(Bucket=bucket, Key=key)
        except ClientError as error:
            raise storage_error(error, "delete", bucket, key) from None
