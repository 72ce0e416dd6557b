"""Settings of the tagger service (env prefix ``VIEWFINDER_TAGGER_``).

Labeling models are *connections*: named configurations that label jobs and
datasets refer to by name. They come from this configuration or, for names it
does not have, from the connections stored through ConnectionService
(``openai_chat`` and ``offline_default`` kinds; see ``model_registry``),
whose secrets open with ``VIEWFINDER_CONNECTIONS_SECRET_KEY``. Two kinds exist:

* ``openai``: any OpenAI-compatible chat completions endpoint with image
  input (Qwen-VL-Max/Plus on Model Studio's compatible mode
  ``https://dashscope.aliyuncs.com/compatible-mode/v1``, vLLM, …);
* ``zero-shot``: the offline tagger that scores tag texts against the
  image's vector: the one the embedder stored in the dataset's active index
  when it is current, else one EmbedService computes (the local default).

Configure them as JSON, with the API key apart so it can come from a
Kubernetes Secret::

    VIEWFINDER_TAGGER_CONNECTIONS='{"qwen": {"kind": "openai",
        "base_url": "https://dashscope.aliyuncs.com/compatible-mode/v1", "model": "qwen-vl-max",
        "price_prompt_per_million": 3.0, "price_completion_per_million": 9.0, "currency": "CNY"}}'
    VIEWFINDER_TAGGER_CONNECTIONS__QWEN__API_KEY=sk-...
    VIEWFINDER_TAGGER_DEFAULT_CONNECTION=qwen
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.settings import ServiceSettings
from viewfinder_common.vectorstore.factory import VectorStoreSettings


class OpenAIConnection(BaseModel):
    """An OpenAI-compatible chat completions endpoint that accepts images."""

    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["openai"] = "openai"
    base_url: str
    model: str
    api_key: SecretStr | None = None
    # Per HTTP request, not per file: a retried call gets a fresh timeout.
    request_timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    max_retry_after_s: float = Field(default=120.0, ge=0)
    # Ceiling of the adaptive (AIMD) limit on calls in flight to this endpoint,
    # shared by every job and by automatic labeling.
    max_in_flight: int = Field(default=64, ge=1)
    connection_pool_size: int = Field(default=128, ge=1)
    # "data_url" sends base64 bytes; "presigned_url" lets the service fetch the object.
    image_transport: Literal["data_url", "presigned_url"] = "data_url"
    max_image_side: int = Field(default=1536, ge=64)
    max_image_bytes: int = Field(default=4_000_000, ge=10_000)
    max_tokens: int = Field(default=1024, ge=16)
    temperature: float = Field(default=0.0, ge=0)
    # Ask for response_format {"type": "json_object"} (Model Studio and vLLM support it).
    json_mode: bool = False
    price_prompt_per_million: float = Field(default=0.0, ge=0)
    price_completion_per_million: float = Field(default=0.0, ge=0)
    currency: str = ""


class ZeroShotConnection(BaseModel):
    """The offline zero-shot tagger, scoring via the embedder's EmbedService."""

    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["zero-shot"] = "zero-shot"
    embedder_address: str = "127.0.0.1:7053"
    # Index whose model embeds; empty means the dataset's active index.
    index_name: str = ""
    # Vector field in which image and text vectors are comparable.
    vector_field: str = "semantic"
    # Score tag texts against the image's vector stored in the index (when it
    # was embedded from the file's current content) instead of embedding the
    # image again; automatic labeling then follows file-embedded events.
    use_stored_vectors: bool = True
    # A tag applies when its score is at least ``threshold`` and, unless
    # ``margin`` is None, within ``margin`` of the image's best tag. The
    # defaults are the offline model's F1-best pair on 1,997 openclipart
    # images outside the demo's sample (bench/tagger/calibrate.py); on the
    # demo's sample they give precision 0.23 / recall 0.30 where the former
    # threshold 0.3 alone gave 0.37 / 0.10. Other models need their own.
    threshold: float = 0.236
    margin: float | None = 0.0075
    tag_thresholds: dict[str, float] = Field(default_factory=dict)
    request_timeout_s: float = Field(default=30.0, gt=0)
    max_image_side: int = Field(default=1024, ge=64)
    max_image_bytes: int = Field(default=8_000_000, ge=10_000)
    model_id: str = "offline-zero-shot"


LabelingConnection = Annotated[OpenAIConnection | ZeroShotConnection, Field(discriminator="kind")]


def _default_connections() -> dict[str, OpenAIConnection | ZeroShotConnection]:
    return {"offline": ZeroShotConnection()}


class TaggerSettings(ServiceSettings):
    """Configuration of one tagger process, read once at start."""

    # hide_input_in_errors: a bad connection must not print its API key in the startup error.
    model_config = SettingsConfigDict(
        env_prefix="VIEWFINDER_TAGGER_", env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
    )

    service_name: str = "tagger"
    grpc_port: int = 7052
    connections: dict[str, LabelingConnection] = Field(default_factory=_default_connections)
    default_connection: str = "offline"
    # Connections stored through ConnectionService: the key their secrets open
    # with (VIEWFINDER_CONNECTIONS_SECRET_KEY, shared with the service that
    # stores them), how long a read stays fresh, and the configured zero-shot
    # connection whose settings serve stored "offline default" connections.
    connection_store: ConnectionSettings = Field(default_factory=ConnectionSettings)
    stored_connection_refresh_s: float = Field(default=30.0, ge=0)
    offline_template: str = "offline"
    # How the zero-shot tagger opens the stores indexes live in (as the embedder
    # does): pgvector, milvus and this kind with these settings; other names are
    # stored database connections, opened with ``connection_store``'s key.
    vectorstore: VectorStoreSettings = Field(default_factory=VectorStoreSettings)
    # Automatic labeling of file-discovered events (datasets with labeling.automatic).
    consumer_group: str = "viewfinder-tagger"
    auto_labeling: bool = True
    auto_batch_max_records: int = Field(default=32, ge=1)
    auto_max_concurrency: int = Field(default=5, ge=1)
    # Label jobs: how often idle workers look for pending jobs, how long a
    # running job may go without a heartbeat before another replica takes it over.
    job_poll_interval_s: float = Field(default=2.0, gt=0)
    job_lease_s: float = Field(default=60.0, gt=0)
    job_flush_interval_s: float = Field(default=0.5, gt=0)
    max_parallel_jobs: int = Field(default=4, ge=1)
    recent_errors_kept: int = Field(default=20, ge=1)
    presign_expires_s: int = Field(default=900, ge=60)

    def offline_template_connection(self) -> ZeroShotConnection:
        """The settings stored offline-default connections get: ``offline_template``'s, else the defaults."""
        template = self.connections.get(self.offline_template)
        return template if isinstance(template, ZeroShotConnection) else ZeroShotConnection()
