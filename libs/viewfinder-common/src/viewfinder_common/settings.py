"""Settings shared by every service.

Each process reads its configuration once, at start, into one Settings object.
Connections every service shares (Kafka, PostgreSQL, S3, Milvus) have their own
env prefixes (``VIEWFINDER_KAFKA_``, ``VIEWFINDER_DB_``, ``VIEWFINDER_S3_``,
``VIEWFINDER_MILVUS_``) so one environment file serves the whole stack; what
belongs to one service lives under ``VIEWFINDER_<NAME>_`` in that service's
``config.py``.

Secrets are ``SecretStr``: their repr is masked, so a logged settings object
never shows them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """The Kafka-protocol broker and the topic names (defaults from DESIGN §2)."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    topic_file_discovered: str = "viewfinder.file-discovered"
    topic_file_tagged: str = "viewfinder.file-tagged"
    topic_file_embedded: str = "viewfinder.file-embedded"
    topic_storage_events: str = "viewfinder.storage-events"
    # Group membership: tansu (and many managed brokers) take seconds to settle
    # a join, so sessions are short and heartbeats frequent.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 500
    # The consumer watchdog (kafka.ConsumerWatchdog) restarts a consumer that
    # has work but has not moved for this long while no handler runs.
    consumer_stall_after_s: float = Field(default=60.0, gt=0)


class DatabaseSettings(BaseSettings):
    """The catalogue's PostgreSQL."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_DB_", extra="ignore")

    url: str = "postgresql://viewfinder@127.0.0.1:55432/viewfinder"
    # Kept apart from the URL so that the URL can be logged.
    password: SecretStr | None = None
    pool_min_size: int = 1
    pool_max_size: int = 10
    command_timeout_s: float = 60.0


class S3Settings(BaseSettings):
    """An S3 API endpoint: AWS S3, Alibaba OSS (S3-compatible endpoint), MinIO, moto."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_S3_", extra="ignore")

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    # MinIO and OSS-compatible endpoints usually need path-style addressing.
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    max_pool_connections: int = 64


class MilvusSettings(BaseSettings):
    """A Milvus 2.4+ server or the Milvus Lite server."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_MILVUS_", extra="ignore")

    uri: str = "http://127.0.0.1:19530"
    token: SecretStr | None = None
    db_name: str = "default"


class ServiceSettings(BaseSettings):
    """Base of every service's Settings: shared connections plus process basics.

    Subclasses set ``model_config`` with their own ``env_prefix``.
    """

    model_config = SettingsConfigDict(extra="ignore")

    service_name: str = "viewfinder"
    log_level: str = "INFO"
    log_json: bool = True
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    # Seconds a stopping server keeps answering in-flight calls after it has
    # reported NOT_SERVING.
    shutdown_grace_s: float = 5.0
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    s3: S3Settings = Field(default_factory=S3Settings)

    def dead_letter_topic(self, topic: str) -> str:
        """The dead-letter topic of this service for ``topic`` (DESIGN §2)."""
        return f"{topic}.dlq.{self.service_name}"
