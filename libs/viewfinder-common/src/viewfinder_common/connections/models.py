"""Connection kinds, their settings and validation; free of I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from viewfinder_common.errors import InvalidArgument

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


class ConnectionKind(StrEnum):
    """What a connection connects to; the value is what the catalogue stores."""

    DASHSCOPE_EMBEDDING = "dashscope_embedding"
    PAI_EAS = "pai_eas"
    OPENAI_CHAT = "openai_chat"
    LOCAL_MODEL_DIRECTORY = "local_model_directory"
    OFFLINE_DEFAULT = "offline_default"
    MILVUS = "milvus"
    OPENSEARCH = "opensearch"
    ELASTICSEARCH = "elasticsearch"
    LINDORM = "lindorm"
    HOLOGRES = "hologres"
    PGVECTOR = "pgvector"


@dataclass(frozen=True)
class KindRules:
    """Which settings a kind takes, which are required, and whether it takes a secret."""

    fields: tuple[str, ...]
    required: tuple[str, ...]
    takes_secret: bool
    # Port-like integer fields; everything else is a string.
    integer_fields: tuple[str, ...] = ()


KIND_RULES: dict[ConnectionKind, KindRules] = {
    ConnectionKind.DASHSCOPE_EMBEDDING: KindRules(("base_url", "model"), ("model",), True),
    ConnectionKind.PAI_EAS: KindRules(("endpoint", "model"), ("endpoint",), True),
    ConnectionKind.OPENAI_CHAT: KindRules(("base_url", "model"), ("base_url", "model"), True),
    ConnectionKind.LOCAL_MODEL_DIRECTORY: KindRules(("path",), ("path",), False),
    ConnectionKind.OFFLINE_DEFAULT: KindRules((), (), False),
    ConnectionKind.MILVUS: KindRules(("uri", "database"), ("uri",), True),
    ConnectionKind.OPENSEARCH: KindRules(("uri", "username"), ("uri",), True),
    ConnectionKind.ELASTICSEARCH: KindRules(("uri", "username"), ("uri",), True),
    ConnectionKind.LINDORM: KindRules(("uri", "username"), ("uri",), True),
    ConnectionKind.HOLOGRES: KindRules(
        ("host", "port", "database", "access_key_id"),
        ("host", "database", "access_key_id"),
        True,
        integer_fields=("port",),
    ),
    ConnectionKind.PGVECTOR: KindRules(
        ("host", "port", "database", "user"),
        ("host", "database"),
        True,
        integer_fields=("port",),
    ),
}

MODEL_KINDS = frozenset(
    {
        ConnectionKind.DASHSCOPE_EMBEDDING,
        ConnectionKind.PAI_EAS,
        ConnectionKind.OPENAI_CHAT,
        ConnectionKind.LOCAL_MODEL_DIRECTORY,
        ConnectionKind.OFFLINE_DEFAULT,
    }
)


@dataclass(frozen=True)
class SecretSpec:
    """A secret as requested: exactly one of a value to encrypt or a reference."""

    value: str | None = None
    reference: str | None = None

    def __repr__(self) -> str:  # never show the value, even in a traceback
        return f"SecretSpec(value={'***' if self.value else None}, reference={self.reference!r})"


@dataclass(frozen=True)
class ConnectionSpec:
    """What a user states about a connection: its name, kind and settings (no secret)."""

    name: str
    kind: ConnectionKind
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class StoredConnection:
    """A connection as the catalogue holds it; the secret stays in its stored form."""

    id: str
    spec: ConnectionSpec
    secret_ciphertext: bytes | None
    secret_reference: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def has_secret(self) -> bool:
        """Whether a secret (encrypted or referenced) is stored."""
        return self.secret_ciphertext is not None or self.secret_reference is not None

    def __repr__(self) -> str:  # the ciphertext is no one's business in a log line
        return f"StoredConnection(id={self.id!r}, spec={self.spec!r}, has_secret={self.has_secret})"


def validate_spec(spec: ConnectionSpec, secret: SecretSpec | None) -> ConnectionSpec:
    """``spec`` with its config normalised (empty strings and zero ports dropped), or InvalidArgument.

    Rejects a bad name, unknown or missing settings, and a secret for a kind that takes none.
    """
    if not NAME_PATTERN.match(spec.name):
        raise InvalidArgument(
            f"connection name {spec.name!r} is invalid: use 1-128 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    rules = KIND_RULES[spec.kind]
    unknown = sorted(set(spec.config) - set(rules.fields))
    if unknown:
        raise InvalidArgument(f"a {spec.kind.value} connection has no setting(s) {', '.join(unknown)}")
    config: dict[str, Any] = {}
    for name, value in spec.config.items():
        normalised = _normalised(name, value, integer=name in rules.integer_fields)
        if normalised:
            config[name] = normalised
    missing = [name for name in rules.required if name not in config]
    if missing:
        raise InvalidArgument(f"a {spec.kind.value} connection needs {', '.join(missing)}")
    for url_field in ("base_url", "endpoint", "uri"):
        url = config.get(url_field)
        if url is not None and not re.match(r"^[a-z][a-z0-9+.-]*://[^\s/]+", url):
            raise InvalidArgument(
                f"{url_field} must be an absolute URL such as https://host:port, got {url!r}"
            )
    if secret is not None and not rules.takes_secret:
        raise InvalidArgument(f"a {spec.kind.value} connection takes no secret")
    return ConnectionSpec(name=spec.name, kind=spec.kind, config=config, description=spec.description)


def _check_urls(config: dict[str, Any]) -> None:
    """InvalidArgument unless every URL-valued setting is an absolute URL."""
    for url_field in ("base_url", "endpoint", "uri"):
        url = config.get(url_field)
        if url is not None and not re.match(r"^[a-z][a-z0-9+.-]*://[^\s/]+", url):
            raise InvalidArgument(
                f"{url_field} must be an absolute URL such as https://host:port, got {url!r}"
            )


def _normalised(name: str, value: Any, *, integer: bool) -> Any:
    """A setting's value checked and trimmed; a falsy result means "not set"."""
    if integer:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
            raise InvalidArgument(f"{name} must be a port number between 1 and 65535, got {value!r}")
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string")
    return value.strip()
