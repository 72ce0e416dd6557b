"""Settings of the tagger service (env prefix ``VIEWFINDER_TAGGER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from viewfinder_common.settings import ServiceSettings


class TaggerSettings(ServiceSettings):
    """Configuration of one tagger process, read once at start."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_TAGGER_", extra="ignore")

    service_name: str = "tagger"
    grpc_port: int = 50052
