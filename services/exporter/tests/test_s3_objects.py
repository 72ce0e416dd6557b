"""The S3 adapter against the S3 API server: ranged copies, repeated completes, error mapping."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from viewfinder_common.errors import NotFound
from viewfinder_exporter.adapters.s3_objects import S3ObjectStore
from viewfinder_exporter.domain.jobs import UploadedPart
from viewfinder_exporter.domain.sinks import MIN_PART_SIZE

pytestmark = pytest.mark.stack


async def test_large_objects_are_copied_in_ranges(s3: Any, bucket: str, objects_in: Any) -> None:
    data = os.urandom(2 * MIN_PART_SIZE + 123)
    store = S3ObjectStore(s3, single_copy_limit=MIN_PART_SIZE, copy_part_size=MIN_PART_SIZE)
    await store.put_object(bucket, "src/big.bin", data, "application/octet-stream")
    await store.copy(bucket, "src/big.bin", "dst/big.bin")
    assert await objects_in.read("dst/big.bin") == data
    assert await store.sha256(bucket, "dst/big.bin") == hashlib.sha256(data).hexdigest()
    assert await objects_in.unfinished_uploads() == 0


async def test_completing_an_upload_twice_is_harmless(s3: Any, bucket: str, objects_in: Any) -> None:
    store = S3ObjectStore(s3)
    upload_id = await store.create_multipart_upload(bucket, "m.jsonl", "application/x-ndjson")
    etag = await store.upload_part(bucket, "m.jsonl", upload_id, 1, b"last and only part\n")
    parts = [UploadedPart(1, etag)]
    await store.complete_multipart_upload(bucket, "m.jsonl", upload_id, parts)
    # A run that crashed after completing but before recording it completes again.
    await store.complete_multipart_upload(bucket, "m.jsonl", upload_id, parts)
    assert await objects_in.read("m.jsonl") == b"last and only part\n"


async def test_missing_things_are_domain_errors(s3: Any, bucket: str) -> None:
    store = S3ObjectStore(s3)
    assert not await store.exists(bucket, "nothing-here")
    with pytest.raises(NotFound, match="nothing-here"):
        await store.sha256(bucket, "nothing-here")
    with pytest.raises(NotFound, match="NoSuchBucket"):
        await store.put_object(f"{bucket}-absent", "k", b"x", "text/plain")
