"""Settings of the search service (env prefix ``VIEWFINDER_SEARCH_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from viewfinder_common.settings import ServiceSettings


class SearchSettings(ServiceSettings):
    """Configuration of one search process, read once at start."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_SEARCH_", extra="ignore")

    service_name: str = "search"
    grpc_port: int = 50054
