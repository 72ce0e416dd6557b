"""Settings of the ingest service (env prefix ``VIEWFINDER_INGEST_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from viewfinder_common.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    """Configuration of one ingest process, read once at start."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_INGEST_", extra="ignore")

    service_name: str = "ingest"
    grpc_port: int = 50051
