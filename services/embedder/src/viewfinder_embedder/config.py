"""Settings of the embedder service (env prefix ``VIEWFINDER_EMBEDDER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from viewfinder_common.settings import ServiceSettings


class EmbedderSettings(ServiceSettings):
    """Configuration of one embedder process, read once at start."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_EMBEDDER_", extra="ignore")

    service_name: str = "embedder"
    grpc_port: int = 50053
