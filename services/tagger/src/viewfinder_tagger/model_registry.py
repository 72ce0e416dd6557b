"""The labeling model connections, built once per process and shared.

Sharing matters: every job and the automatic labeler that use one connection
share its HTTP connection pool and its adaptive concurrency limiter, so the
limiter sees every 429 the service sends us.

A connection name is looked up in the service's configuration first
(``VIEWFINDER_TAGGER_CONNECTIONS``), then among the connections stored through
ConnectionService (``viewfinder_common.connections``), read with the shared
``resolve_connection`` and the same Fernet key as the service that stored
them. Two stored kinds can label images: *OpenAI-compatible chat with
images* (``openai_chat``: base URL, model, API key) becomes the VLM client,
*offline default* the zero-shot tagger with the settings of the configured
zero-shot connection that ``offline_template`` holds. A stored connection is
read again when it is older than ``refresh_s`` or when a label job starts,
so a key fixed with UpdateConnection is used by the next job (or resume).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

import asyncpg
from pydantic import SecretStr

from viewfinder_common.connections.models import ConnectionKind
from viewfinder_common.connections.resolve import ResolvedConnection, resolve_connection
from viewfinder_common.connections.secrets import SecretUnavailable, SecretVault
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.errors import FailedPrecondition, NotFound
from viewfinder_tagger.adapters.openai_vlm import OpenAIChatModel
from viewfinder_tagger.adapters.stored_vectors import StoredVectorScorer
from viewfinder_tagger.adapters.zero_shot_tagger import ZeroShotTagger
from viewfinder_tagger.config import LabelingConnection, OpenAIConnection, ZeroShotConnection
from viewfinder_tagger.domain.jobs import Prices
from viewfinder_tagger.domain.models import LabelingModel

ModelFactory = Callable[[str, LabelingConnection], LabelingModel]
# Reads a connection stored through ConnectionService, secret opened (NotFound if none).
StoredConnectionLoader = Callable[[str], Awaitable[ResolvedConnection]]

LABELING_KINDS = (ConnectionKind.OPENAI_CHAT, ConnectionKind.OFFLINE_DEFAULT)


def build_model(
    name: str, connection: LabelingConnection, *, stored_vectors: StoredVectorScorer | None = None
) -> LabelingModel:
    """The adapter for one connection (the zero-shot tagger reads stored vectors through ``stored_vectors``)."""
    if isinstance(connection, OpenAIConnection):
        return OpenAIChatModel(name, connection)
    return ZeroShotTagger(name, connection, stored=stored_vectors)


def stored_connection_loader(pool: asyncpg.Pool, settings: ConnectionSettings) -> StoredConnectionLoader:
    """Reads stored connections from the catalogue and opens their secrets with the configured key."""
    store, vault = ConnectionStore(pool), SecretVault(settings)

    async def load(name: str) -> ResolvedConnection:
        return await resolve_connection(store, vault, name)

    return load


def labeling_connection(
    resolved: ResolvedConnection, *, offline_template: ZeroShotConnection
) -> LabelingConnection:
    """What a stored connection labels with; FAILED_PRECONDITION for a kind that cannot label images."""
    spec = resolved.spec
    if spec.kind is ConnectionKind.OPENAI_CHAT:
        return OpenAIConnection(
            base_url=spec.config["base_url"],
            model=spec.config["model"],
            api_key=SecretStr(resolved.secret) if resolved.secret else None,
        )
    if spec.kind is ConnectionKind.OFFLINE_DEFAULT:
        return offline_template
    usable = " or ".join(kind.value for kind in LABELING_KINDS)
    raise FailedPrecondition(
        f"connection {spec.name!r} is a {spec.kind.value} connection, which cannot label images; "
        f"label with a {usable} connection"
    )


class ModelRegistry:
    """Named labeling models, created on first use and closed together."""

    def __init__(
        self,
        connections: Mapping[str, LabelingConnection],
        *,
        default: str,
        factory: ModelFactory = build_model,
        stored: StoredConnectionLoader | None = None,
        offline_template: ZeroShotConnection | None = None,
        refresh_s: float = 30.0,
    ) -> None:
        self._connections = dict(connections)
        self._default = default
        self._factory = factory
        self._stored = stored
        self._offline_template = offline_template or ZeroShotConnection()
        self._refresh_s = refresh_s
        self._models: dict[str, LabelingModel] = {}
        # Stored connections as last read: name -> (connection, monotonic time read).
        self._stored_connections: dict[str, tuple[LabelingConnection, float]] = {}
        # Models of stored connections that changed since; jobs may still use them.
        self._retired: list[LabelingModel] = []
        self._lock = asyncio.Lock()

    @property
    def default_name(self) -> str:
        """The connection used when neither the job nor the dataset names one."""
        return self._default

    async def resolve(self, *names: str) -> str:
        """The first non-empty name, else the default, once it is known to label images.

        NOT_FOUND for a name neither configured nor stored, FAILED_PRECONDITION
        for a stored connection of another kind or with a secret that cannot be opened.
        """
        name = next((n for n in names if n), self._default)
        await self._connection(name, fresh=False)
        return name

    async def get(self, name: str, *, fresh: bool = False) -> LabelingModel:
        """The model of a connection; ``fresh`` reads a stored connection again first."""
        name = name or self._default
        connection = await self._connection(name, fresh=fresh)
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = self._factory(name, connection)
        return model

    def prices(self, name: str) -> Prices:
        """The connection's token prices (zero and no currency for models without prices)."""
        connection = self._connections.get(name or self._default)
        if isinstance(connection, OpenAIConnection):
            return Prices(
                connection.price_prompt_per_million,
                connection.price_completion_per_million,
                connection.currency,
            )
        return Prices()

    async def _connection(self, name: str, *, fresh: bool) -> LabelingConnection:
        configured = self._connections.get(name)
        if configured is not None:
            return configured
        known = self._stored_connections.get(name)
        if known is not None and not fresh and time.monotonic() - known[1] < self._refresh_s:
            return known[0]
        async with self._lock:
            return await self._read_stored(name)

    async def _read_stored(self, name: str) -> LabelingConnection:
        if self._stored is None:
            raise NotFound(f"unknown model connection {name!r}; configured: {self._configured()}")
        try:
            resolved = await self._stored(name)
        except NotFound:
            self._forget(name)
            raise NotFound(
                f"unknown model connection {name!r}: neither configured in the tagger "
                f"({self._configured()}) nor stored through ConnectionService"
            ) from None
        except SecretUnavailable as exc:
            raise FailedPrecondition(f"model connection {name!r}: {exc}") from None
        connection = labeling_connection(resolved, offline_template=self._offline_template)
        known = self._stored_connections.get(name)
        if known is not None and known[0] != connection:
            self._forget(name)
        self._stored_connections[name] = (connection, time.monotonic())
        return connection

    def _forget(self, name: str) -> None:
        """Drops a stored connection that changed or vanished; its model closes with the registry."""
        self._stored_connections.pop(name, None)
        model = self._models.pop(name, None)
        if model is not None:
            self._retired.append(model)

    def _configured(self) -> str:
        return ", ".join(sorted(self._connections)) or "none"

    async def close(self) -> None:
        """Closes every model created so far."""
        models, self._models = [*self._models.values(), *self._retired], {}
        self._retired = []
        for model in models:
            await model.close()
