"""Configuration of the connection store (``VIEWFINDER_CONNECTIONS_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConnectionSettings(BaseSettings):
    """Where connection secrets are kept and how long a test may take."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_CONNECTIONS_", extra="ignore")

    # Fernet key (urlsafe base64 of 32 bytes, ``Fernet.generate_key()``) that
    # encrypts secrets given by value. Without it only references are accepted.
    secret_key: SecretStr | None = None
    # Where Kubernetes Secrets are mounted: "k8s-secret:name/key" reads
    # ``<secrets_dir>/<name>/<key>``.
    secrets_dir: str = "/var/run/secrets/viewfinder"
    # Bound on one TestConnection round-trip.
    test_timeout_s: float = Field(default=15.0, gt=0)
