"""Settings of the exporter service (env prefix ``VIEWFINDER_EXPORTER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from viewfinder_common.settings import ServiceSettings


class ExporterSettings(ServiceSettings):
    """Configuration of one exporter process, read once at start."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_EXPORTER_", extra="ignore")

    service_name: str = "exporter"
    grpc_port: int = 50055
