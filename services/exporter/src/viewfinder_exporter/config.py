"""Settings of the exporter service (env prefix ``VIEWFINDER_EXPORTER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from viewfinder_common.settings import ServiceSettings
from viewfinder_exporter.domain.sinks import MIN_PART_SIZE


class ExporterSettings(ServiceSettings):
    """Configuration of one exporter process, read once at start."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_EXPORTER_", extra="ignore")

    service_name: str = "exporter"
    grpc_port: int = 7055
    # SearchService (the search service) address, and the deadline of each call to it.
    search_target: str = "127.0.0.1:7054"
    search_deadline_s: float = Field(default=30.0, gt=0)
    # Results per Search call while an export pages through a search.
    search_page_size: int = Field(default=1000, ge=1, le=1000)
    # Buckets manifests may be written to: names or shell-style patterns
    # (JSON list in the environment, e.g. '["exports", "team-*"]'). Empty
    # allows none, so a fresh deployment writes nowhere until told.
    allowed_buckets: list[str] = Field(default_factory=list)
    # Name of the storage connection served by this process's S3 settings
    # (VIEWFINDER_S3_*); the only one manifests can be written with until
    # named connections exist.
    storage_connection: str = "default"
    # Size of each multipart-upload part; memory per running export is about
    # one part plus one page of results.
    manifest_part_size_bytes: int = Field(default=8 * 1024 * 1024, ge=MIN_PART_SIZE)
    # Export jobs one process runs at once.
    max_parallel_jobs: int = Field(default=2, ge=1)
    # A RUNNING job whose worker has not written for this long is taken over.
    job_lease_s: float = Field(default=120.0, gt=0)
    # How often idle workers look for PENDING jobs started on other replicas.
    job_poll_interval_s: float = Field(default=5.0, gt=0)
