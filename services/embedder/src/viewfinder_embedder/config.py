"""Settings of the embedder service (env prefix ``VIEWFINDER_EMBEDDER_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.settings import ServiceSettings
from viewfinder_common.vectorstore.factory import VectorStoreSettings


def default_model_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/viewfinder/models`` (``~/.cache/viewfinder/models``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "viewfinder" / "models"


class ModelConnection(BaseModel):
    """A named embedding-model connection.

    Only ``offline`` (models shipped by PyPI packages, DESIGN §5) exists so
    far; managed services (DashScope, PAI-EAS GME, a CLIP directory) add their
    kinds here with their endpoint and credential fields.
    """

    kind: Literal["offline"] = "offline"


class OfflineModelSettings(BaseModel):
    """Knobs of the offline model (EfficientNet-Lite0 + MiniLM bridge)."""

    # Where the one-time ONNX export and the class-text embeddings are cached;
    # a read-only container points this at a writable volume.
    cache_dir: Path = Field(default_factory=default_model_cache_dir)
    # ONNX Runtime threads per inference call (0: ONNX Runtime decides).
    intra_op_threads: int = Field(default=0, ge=0)
    # Images per inference call.
    batch_size: int = Field(default=32, ge=1, le=512)


class EmbedderSettings(ServiceSettings):
    """Configuration of one embedder process, read once at start."""

    model_config = SettingsConfigDict(
        env_prefix="VIEWFINDER_EMBEDDER_", env_nested_delimiter="__", extra="ignore"
    )

    service_name: str = "embedder"
    grpc_port: int = 7053

    # Named model connections; a dataset's index records the one it was built with.
    model_connections: dict[str, ModelConnection] = Field(
        default_factory=lambda: {"offline": ModelConnection(kind="offline")}
    )
    # Used for a dataset whose indexing settings name none.
    default_model_connection: str = "offline"
    # Connections stored through ConnectionService (DashScope, PAI-EAS, CLIP
    # directory) are used by name; their secrets open with this key.
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings)
    offline_model: OfflineModelSettings = Field(default_factory=OfflineModelSettings)
    vector_store: VectorStoreSettings = Field(default_factory=VectorStoreSettings)

    # Kafka consumption of file-discovered.
    consumer_group: str = "viewfinder-embedder"
    # Records per consumed batch; each batch is committed after its upserts.
    consume_batch_max_records: int = Field(default=256, ge=1)
    consume_batch_timeout_ms: int = Field(default=200, ge=1)
    # Seconds to wait before a batch that failed as a whole (vector store or
    # database unreachable) is redelivered.
    retry_backoff_s: float = Field(default=2.0, ge=0)

    # Objects fetched and decoded at once (pipeline; an index job may set its own).
    fetch_concurrency: int = Field(default=32, ge=1, le=256)
    # Decode worker processes; 0 means one per CPU.
    decode_workers: int = Field(default=0, ge=0)
    # Objects larger than this are not fetched (the file goes to the dead-letter topic).
    max_object_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # Pixels an image may have after JPEG's DCT scaling; bigger images are refused.
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    fit: Literal["pad", "crop", "squash"] = "pad"

    # Index jobs.
    job_default_concurrency: int = Field(default=16, ge=1, le=256)
    job_page_size: int = Field(default=256, ge=1)
    job_poll_interval_s: float = Field(default=2.0, gt=0)
    # A running job whose worker has not reported for this long is taken over.
    job_stale_after_s: float = Field(default=300.0, gt=0)
    # Longest query text EmbedText accepts (embedding.proto).
    max_query_text_chars: int = 2048
