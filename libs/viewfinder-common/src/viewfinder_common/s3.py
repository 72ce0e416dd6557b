"""The aioboto3 S3 client factory.

One function builds every S3 client, so endpoint, region, path-style
addressing (MinIO and OSS-compatible endpoints) and connection pooling are set
in one place.
"""

from __future__ import annotations

from typing import Any

import aioboto3
from aiobotocore.config import AioConfig

from viewfinder_common.settings import S3Settings


def s3_session(settings: S3Settings) -> aioboto3.Session:
    """An aioboto3 session carrying the configured credentials (if any)."""
    return aioboto3.Session(
        aws_access_key_id=settings.access_key_id.get_secret_value() if settings.access_key_id else None,
        aws_secret_access_key=(
            settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
        ),
        region_name=settings.region,
    )


def s3_client(settings: S3Settings, session: aioboto3.Session | None = None) -> Any:
    """An async context manager yielding an S3 client: ``async with s3_client(s) as s3: ...``.

    Create it in the app lifespan and reuse it; each client holds a
    connection pool of ``max_pool_connections``.
    """
    session = session or s3_session(settings)
    config = AioConfig(
        s3={"addressing_style": settings.addressing_style},
        max_pool_connections=settings.max_pool_connections,
        retries={"max_attempts": 5, "mode": "adaptive"},
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)
