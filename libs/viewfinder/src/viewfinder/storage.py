"""Reading objects from an S3-compatible bucket (AWS S3, Alibaba OSS, MinIO) for the SDK.

A synchronous boto3 client is created lazily, once per process, so that an
``ObjectReader`` can be pickled into ``torch.utils.data.DataLoader`` worker
processes; each worker opens its own client. Recently read objects are kept in
a small LRU cache bounded by bytes.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class StorageOptions:
    """Where and how to reach the bucket. Unset fields fall back to boto3's own configuration chain."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    # MinIO and OSS-compatible endpoints usually need path-style addressing.
    addressing_style: str = "path"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageOptions:
        """Options from the ``VIEWFINDER_S3_*`` variables the services use (absent ones stay unset)."""
        env = os.environ if environ is None else environ
        return cls(
            endpoint_url=env.get("VIEWFINDER_S3_ENDPOINT_URL") or None,
            region=env.get("VIEWFINDER_S3_REGION") or None,
            access_key_id=env.get("VIEWFINDER_S3_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("VIEWFINDER_S3_SECRET_ACCESS_KEY") or None,
            addressing_style=env.get("VIEWFINDER_S3_ADDRESSING_STYLE") or "path",
        )


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); ValueError for anything else."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or not parts.path.lstrip("/"):
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return parts.netloc, parts.path.lstrip("/")


class ObjectReader:
    """Reads whole objects, keeping the most recent ones in an LRU cache of at most ``cache_bytes``."""

    def __init__(
        self, options: StorageOptions | None = None, *, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self.options = options or StorageOptions.from_env()
        self.cache_bytes = cache_bytes
        self._client: Any = None
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Clients, caches and locks stay in their process; a worker opens its own.
        return {"options": self.options, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["options"], cache_bytes=state["cache_bytes"])  # type: ignore[misc]

    def read(self, bucket: str, key: str) -> bytes:
        """The object's bytes, from the cache when it holds them."""
        with self._lock:
            cached = self._cache.get((bucket, key))
            if cached is not None:
                self._cache.move_to_end((bucket, key))
                return cached
        response = self._s3().get_object(Bucket=bucket, Key=key)
        data: bytes = response["Body"].read()
        self._remember((bucket, key), data)
        return data

    def stream(self, bucket: str, key: str) -> Any:
        """The object as a binary stream (bypassing the cache); close it when done."""
        return self._s3().get_object(Bucket=bucket, Key=key)["Body"]

    @property
    def cached_objects(self) -> int:
        """How many objects the cache holds now."""
        return len(self._cache)

    def _remember(self, location: tuple[str, str], data: bytes) -> None:
        if len(data) > self.cache_bytes:
            return
        with self._lock:
            if location in self._cache:
                return
            self._cache[location] = data
            self._cached_bytes += len(data)
            while self._cached_bytes > self.cache_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= len(evicted)

    def _s3(self) -> Any:
        if self._client is None:
            import boto3  # type: ignore[import-untyped]  # noqa: PLC0415 (lazy: one client per process)
            from botocore.config import Config  # noqa: PLC0415

            options = self.options
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=options.endpoint_url,
                region_name=options.region,
                aws_access_key_id=options.access_key_id,
                aws_secret_access_key=options.secret_access_key,
                config=Config(s3={"addressing_style": options.addressing_style}, retries={"max_attempts": 5}),
            )
        return self._client
