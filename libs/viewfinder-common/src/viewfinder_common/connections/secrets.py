"""Secrets of connections: encrypted at rest with a configured Fernet key, or
references to where the deployment keeps them (environment, mounted
Kubernetes Secret). The clear value exists only in memory, on its way to the
service it unlocks."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from viewfinder_common.connections.models import SecretSpec
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.errors import FailedPrecondition, InvalidArgument

ENV_PREFIX = "env:"
K8S_PREFIX = "k8s-secret:"
MASKED = "********"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A Kubernetes object name (DNS subdomain) and a data key.
_K8S_REF = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)/([-._a-zA-Z0-9]+)$")


class SecretUnavailable(FailedPrecondition):
    """A stored secret cannot be turned back into its value (missing variable, wrong key)."""


def env_reference(name: str) -> str:
    """The stored reference for environment variable ``name``, or InvalidArgument."""
    if not _ENV_NAME.match(name):
        raise InvalidArgument(f"environment variable name {name!r} is invalid")
    return ENV_PREFIX + name


def kubernetes_reference(secret_and_key: str) -> str:
    """The stored reference for a Kubernetes Secret given as "name/key", or InvalidArgument."""
    match = _K8S_REF.match(secret_and_key)
    if match is None or ".." in secret_and_key:
        raise InvalidArgument(
            f"Kubernetes secret reference {secret_and_key!r} must look like 'secret-name/key'"
        )
    return K8S_PREFIX + secret_and_key


class SecretVault:
    """Seals secrets for storage and opens them for use."""

    def __init__(self, settings: ConnectionSettings, *, environ: Mapping[str, str] | None = None) -> None:
        key = settings.secret_key.get_secret_value() if settings.secret_key else None
        try:
            self._fernet = Fernet(key) if key else None
        except ValueError as err:
            # Deliberately not chaining the key into the message.
            raise ValueError(
                "VIEWFINDER_CONNECTIONS_SECRET_KEY is not a Fernet key (urlsafe base64 of 32 bytes)"
            ) from (err.__cause__)
        self._secrets_dir = Path(settings.secrets_dir)
        # The one place that reads the process environment: "env:" references name it.
        self._environ = os.environ if environ is None else environ

    def seal(self, secret: SecretSpec) -> tuple[bytes | None, str | None]:
        """``(ciphertext, reference)`` to store for ``secret``; exactly one is set."""
        if secret.reference is not None:
            if secret.reference.startswith(ENV_PREFIX):
                return None, env_reference(secret.reference.removeprefix(ENV_PREFIX))
            if secret.reference.startswith(K8S_PREFIX):
                return None, kubernetes_reference(secret.reference.removeprefix(K8S_PREFIX))
            raise InvalidArgument("a secret reference must start with 'env:' or 'k8s-secret:'")
        if not secret.value:
            raise InvalidArgument("the secret value is empty")
        if self._fernet is None:
            raise FailedPrecondition(
                "secrets given by value need VIEWFINDER_CONNECTIONS_SECRET_KEY configured; "
                "give an env_var or kubernetes_secret reference instead"
            )
        return self._fernet.encrypt(secret.value.encode()), None

    def open(self, ciphertext: bytes | None, reference: str | None) -> str | None:
        """The clear secret, None when none is stored, or SecretUnavailable with a secret-free reason."""
        if ciphertext is not None:
            if self._fernet is None:
                raise SecretUnavailable(
                    "the connection's secret is encrypted but no secret key is configured"
                )
            try:
                return self._fernet.decrypt(ciphertext).decode()
            except InvalidToken:
                raise SecretUnavailable(
                    "the connection's secret cannot be decrypted with the configured key (was the key rotated?)"
                ) from None
        if reference is None:
            return None
        if reference.startswith(ENV_PREFIX):
            name = reference.removeprefix(ENV_PREFIX)
            value = self._environ.get(name)
            if not value:
                raise SecretUnavailable(f"environment variable {name} (the connection's secret) is not set")
            return value
        if reference.startswith(K8S_PREFIX):
            secret_name, _, key = reference.removeprefix(K8S_PREFIX).partition("/")
            path = self._secrets_dir / secret_name / key
            try:
                return path.read_text().rstrip("\n")
            except OSError:
                raise SecretUnavailable(
                    f"Kubernetes secret {secret_name}/{key} is not mounted at {path}"
                ) from None
        raise SecretUnavailable(f"unknown secret reference scheme in {reference.split(':', 1)[0]!r}")


def masked(ciphertext: bytes | None, reference: str | None) -> str:
    """What responses show instead of a secret: the mask, the reference, or empty."""
    if ciphertext is not None:
        return MASKED
    return reference or ""
