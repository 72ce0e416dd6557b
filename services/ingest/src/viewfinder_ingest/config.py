"""Settings of the ingest service (env prefix ``VIEWFINDER_INGEST_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    """Configuration of one ingest process, read once at start."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_INGEST_", extra="ignore")

    service_name: str = "ingest"
    # Ingest hosts ConnectionService (datasets choose connections); secrets
    # stored by value are encrypted with this key, shared with the embedder.
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings)
    grpc_port: int = 7051
    # The embedder's EmbedService: switching a dataset's indexing connections
    # starts an index job there (and cancels a superseded one).
    embedder_target: str = "127.0.0.1:7053"
    embedder_deadline_s: float = Field(default=10.0, gt=0)

    # Most files a new dataset's versions may hold (DESIGN §3); stored per
    # dataset at creation, so changing it does not touch existing datasets.
    default_version_file_limit: int = Field(default=1_000_000, gt=0)

    # Listing: prefixes listed at once (one per common prefix under the
    # dataset prefix) and keys per ListObjectsV2 page (S3's maximum is 1000).
    listing_concurrency: int = Field(default=8, ge=1)
    listing_page_size: int = Field(default=1000, ge=1, le=1000)

    # Inspection: ranged GETs in flight at once, bytes read first, and the most
    # bytes read when an image header lies further in (e.g. JPEG after a large
    # EXIF block). Pillow runs in a pool of this many threads.
    inspect_concurrency: int = Field(default=64, ge=1)
    header_bytes: int = Field(default=64 * 1024, ge=64)
    max_header_bytes: int = Field(default=1024 * 1024, ge=64)
    inspect_threads: int = Field(default=4, ge=1)
    # Images with more pixels than this are recorded as decompression bombs
    # (Pillow's own default limit).
    max_image_pixels: int = Field(default=89_478_485, gt=0)
    # Objects read whole (smaller than header_bytes) are also decoded, to catch
    # truncated pixel data, when they have at most this many pixels.
    verify_max_pixels: int = Field(default=4_000_000, ge=0)

    # Jobs: how often a running job proves it is alive, and after how long
    # without that proof it counts as crashed (and can be resumed).
    job_heartbeat_s: float = Field(default=10.0, gt=0)
    job_stale_after_s: float = Field(default=60.0, gt=0)

    # Storage-event notifications from Kafka (topic: kafka.topic_storage_events).
    storage_events_group: str = "viewfinder-ingest"
    storage_events_batch: int = Field(default=500, ge=1)
    storage_events_enabled: bool = True

    # The HTTP webhook for stores that post notifications (MinIO, OSS via MNS).
    webhook_enabled: bool = True
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8081
    webhook_path: str = "/storage-events"
    # When set, a request must carry it as "Authorization: Bearer <token>"
    # (or the bare token, as MinIO's auth_token sends it).
    webhook_token: SecretStr | None = None
    webhook_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
