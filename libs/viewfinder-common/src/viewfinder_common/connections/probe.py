"""The live round-trip of ``TestConnection``: one tiny call per kind, timed,
with failures classified into a precise, secret-free reason.

Model services embed (or chat about) one tiny input and report the model's
dimension; databases report their server version through the vector-store
adapters (Elasticsearch, OpenSearch, Lindorm, Hologres) or a direct ping
(pgvector: ``version()`` and the ``vector`` extension; Milvus: its server
version).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from viewfinder_common.connections.models import ConnectionKind, ConnectionSpec
from viewfinder_common.connections.secrets import SecretUnavailable
from viewfinder_common.embedding_clients.dashscope import DEFAULT_BASE_URL, DashScopeEmbeddingClient
from viewfinder_common.embedding_clients.pai_eas import DEFAULT_MODEL, PaiEasEmbeddingClient
from viewfinder_common.http_retry import (
    HTTPStatusError,
    RetriesExhausted,
    RetryPolicy,
    mask_secrets,
    raise_for_status,
)
from viewfinder_common.vectorstore.factory import VectorStoreSettings, connect_vector_store

# An 8x8 red PNG: the smallest image a chat-with-images model accepts.
_PROBE_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8ISfHgA0wYRUdtBIA0MoBFD5jqJkAAAAASUVORK5CYII="
)
_PROBE_TEXT = "viewfinder connection test"
# A test is one try: retrying would only hide how the service behaves now.
_ONE_TRY = RetryPolicy(max_attempts=1)


@runtime_checkable
class _ReportsServerVersion(Protocol):
    """The Elasticsearch, OpenSearch, Lindorm and Hologres adapters."""

    async def server_version(self) -> str: ...


class Failure:
    """Failure reasons, the names of ``ConnectionTestFailure`` without the prefix."""

    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"
    UNREACHABLE = "UNREACHABLE"
    SECRET_UNAVAILABLE = "SECRET_UNAVAILABLE"  # noqa: S105 - a reason name, not a secret
    OTHER = "OTHER"


@dataclass(frozen=True)
class ProbeResult:
    """What a connection test found."""

    ok: bool
    latency_ms: float = 0.0
    dimension: int = 0
    server_version: str = ""
    model: str = ""
    failure: str = ""
    error: str = ""


def address_of(spec: ConnectionSpec) -> str:
    """``host:port`` the connection talks to (for "cannot reach" messages), or ""."""
    config = spec.config
    if spec.kind in (ConnectionKind.HOLOGRES, ConnectionKind.PGVECTOR):
        default_port = 80 if spec.kind is ConnectionKind.HOLOGRES else 5432
        return f"{config.get('host', '')}:{config.get('port', default_port)}"
    url = config.get("base_url") or config.get("endpoint") or config.get("uri")
    if spec.kind is ConnectionKind.DASHSCOPE_EMBEDDING and not url:
        url = DEFAULT_BASE_URL
    if not url:
        return ""
    parts = urlsplit(str(url))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes/contexts, outermost first, each once."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        if isinstance(current, RetriesExhausted):
            current = current.last_error
        else:
            current = current.__cause__ or current.__context__
    return seen


def _status_of(error: BaseException) -> int | None:
    if isinstance(error, HTTPStatusError):
        return error.status
    status = getattr(error, "status_code", None)  # opensearch-py TransportError
    return status if isinstance(status, int) else None


def classify_failure(error: BaseException, spec: ConnectionSpec) -> tuple[str, str]:  # noqa: PLR0911 - one return per reason
    """``(failure, message)`` for an error raised while probing ``spec``."""
    address = address_of(spec)
    for cause in _chain(error):
        if isinstance(cause, SecretUnavailable):
            return Failure.SECRET_UNAVAILABLE, f"secret unavailable: {cause}"
        status = _status_of(cause)
        if status in (401, 403):
            return Failure.AUTHENTICATION_FAILED, (
                f"authentication failed: {address} rejected the credentials (HTTP {status})"
            )
        if status == 404:
            return (
                Failure.ENDPOINT_NOT_FOUND,
                f"endpoint not found: {address} answered HTTP 404 for the API path",
            )
        if isinstance(cause, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
            return (
                Failure.AUTHENTICATION_FAILED,
                f"authentication failed: {address} rejected the user or password",
            )
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return Failure.ENDPOINT_NOT_FOUND, (
                f"endpoint not found: database {spec.config.get('database', '')!r} does not exist on {address}"
            )
        if isinstance(
            cause,
            aiohttp.ClientConnectorError | ConnectionRefusedError | socket.gaierror | TimeoutError,
        ) or (isinstance(cause, OSError) and cause.errno is not None):
            reason = "timed out" if isinstance(cause, TimeoutError) else type(cause).__name__
            return Failure.UNREACHABLE, f"cannot reach {address} ({reason})"
        if type(cause).__name__ == "ConnectionError" and type(cause).__module__.startswith("opensearchpy"):
            return Failure.UNREACHABLE, f"cannot reach {address} (connection error)"
        if type(cause).__name__ == "MilvusException" and "connect" in str(cause).lower():
            return Failure.UNREACHABLE, f"cannot reach {address} (Milvus server unavailable)"
    return Failure.OTHER, f"{type(error).__name__}: {error}"


class ConnectionProber:
    """Runs one test round-trip per call."""

    def __init__(self, *, timeout_s: float = 15.0) -> None:
        self._timeout_s = timeout_s

    async def probe(self, spec: ConnectionSpec, secret: str | None) -> ProbeResult:
        """Tests ``spec`` with ``secret``; never raises for a failed test, never returns the secret."""
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(self._round_trip(spec, secret), self._timeout_s)
        except Exception as error:  # every failure becomes a classified result
            failure, message = classify_failure(error, spec)
            return ProbeResult(
                ok=False,
                latency_ms=(time.perf_counter() - started) * 1000,
                failure=failure,
                error=mask_secrets(message, [secret] if secret else []),
            )
        return replace(result, latency_ms=(time.perf_counter() - started) * 1000)

    async def _round_trip(self, spec: ConnectionSpec, secret: str | None) -> ProbeResult:  # noqa: PLR0911 - one branch per kind
        config = spec.config
        kind = spec.kind
        if kind is ConnectionKind.DASHSCOPE_EMBEDDING:
            dashscope = DashScopeEmbeddingClient(
                api_key=secret or "",
                model=config["model"],
                base_url=config.get("base_url", DEFAULT_BASE_URL),
                retry_policy=_ONE_TRY,
            )
            try:
                vectors = await dashscope.embed_texts([_PROBE_TEXT])
            finally:
                await dashscope.close()
            return ProbeResult(ok=True, dimension=len(vectors[0]), model=dashscope.model)
        if kind is ConnectionKind.PAI_EAS:
            eas = PaiEasEmbeddingClient(
                endpoint=config["endpoint"],
                token=secret or "",
                model=config.get("model", DEFAULT_MODEL),
                retry_policy=_ONE_TRY,
            )
            try:
                vectors = await eas.embed_texts([_PROBE_TEXT])
            finally:
                await eas.close()
            return ProbeResult(ok=True, dimension=len(vectors[0]), model=eas.model)
        if kind is ConnectionKind.OPENAI_CHAT:
            return await self._chat(config, secret)
        if kind is ConnectionKind.LOCAL_MODEL_DIRECTORY:
            return self._model_directory(Path(config["path"]))
        if kind is ConnectionKind.OFFLINE_DEFAULT:
            return ProbeResult(ok=True, model="offline default")
        if kind is ConnectionKind.PGVECTOR:
            return await self._pgvector(config, secret)
        if kind is ConnectionKind.MILVUS:
            return await self._milvus(config, secret)
        return ProbeResult(ok=True, server_version=await self._search_engine_or_hologres(spec, secret))

    async def _chat(self, config: dict[str, Any], secret: str | None) -> ProbeResult:
        url = config["base_url"].rstrip("/") + "/chat/completions"
        image_url = "data:image/png;base64," + base64.b64encode(_PROBE_PNG).decode()
        payload = {
            "model": config["model"],
            "max_tokens": 16,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Reply with one word: the colour of this image."},
                        {"type": "image_url", "image_url": {"url": image_url}},
                    ],
                }
            ],
        }
        headers = {"Authorization": f"Bearer {secret or ''}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=payload, headers=headers) as response,
        ):
            await raise_for_status(response, what="chat completion", secrets=[secret] if secret else [])
            body = await response.json(content_type=None)
        return ProbeResult(ok=True, model=str(body.get("model") or config["model"]))

    @staticmethod
    def _model_directory(path: Path) -> ProbeResult:
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist")
        for name in ("config.json", "open_clip_config.json"):
            candidate = path / name
            if candidate.is_file():
                config = json.loads(candidate.read_text())
                model_config = config.get("model_cfg", config)
                dimension = model_config.get("projection_dim") or model_config.get("embed_dim") or 0
                return ProbeResult(ok=True, dimension=int(dimension), model=path.name)
        raise FileNotFoundError(f"{path} holds neither config.json (transformers) nor open_clip_config.json")

    @staticmethod
    async def _pgvector(config: dict[str, Any], secret: str | None) -> ProbeResult:
        conn = await asyncpg.connect(
            host=config["host"],
            port=config.get("port", 5432),
            database=config["database"],
            user=config.get("user"),
            password=secret,
        )
        try:
            version = await conn.fetchval("SHOW server_version")
            vector = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        finally:
            await conn.close()
        if vector is None:
            raise RuntimeError(f"PostgreSQL {version} is reachable but the vector extension is not installed")
        return ProbeResult(ok=True, server_version=f"PostgreSQL {version}, pgvector {vector}")

    @staticmethod
    async def _milvus(config: dict[str, Any], secret: str | None) -> ProbeResult:
        from pymilvus import AsyncMilvusClient  # noqa: PLC0415 (pymilvus only when tested)

        client = AsyncMilvusClient(
            uri=config["uri"], token=secret or "", db_name=config.get("database", "default"), dedicated=True
        )
        try:
            version = await client.get_server_version()
        finally:
            await client.close()
        return ProbeResult(ok=True, server_version=str(version))

    @staticmethod
    async def _search_engine_or_hologres(spec: ConnectionSpec, secret: str | None) -> str:
        # The adapter the services would open for this connection; Hologres on one connection.
        store = await connect_vector_store(
            spec.kind.value, spec.config, secret, settings=VectorStoreSettings(), pool_max_size=1
        )
        try:
            if not isinstance(store, _ReportsServerVersion):
                raise TypeError(f"the {spec.kind.value} adapter does not report its server version")
            return await store.server_version()
        finally:
            await store.close()
