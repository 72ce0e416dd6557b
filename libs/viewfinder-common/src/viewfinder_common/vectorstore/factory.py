"""Chooses and builds the configured vector-store adapter (DESIGN §4).

``VIEWFINDER_VECTORSTORE_KIND=pgvector`` (the default) keeps vectors in the
catalogue's PostgreSQL: pass the service's catalogue pool to share it, or let
the store open its own from ``DatabaseSettings`` (``VIEWFINDER_DB_*``).
``VIEWFINDER_VECTORSTORE_KIND=milvus`` connects to ``MilvusSettings``
(``VIEWFINDER_MILVUS_*``). A service holds the store for its lifetime and
closes it at shutdown.

``connect_vector_store`` builds the same adapters from a database connection
stored through ConnectionService (its kind, settings and clear secret), and
``stored_vector_store_opener`` opens one by connection name, so that a dataset
can keep its vectors in a store other than the service's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal
from urllib.parse import quote

import asyncpg
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from viewfinder_common.connections.resolve import resolve_connection
from viewfinder_common.connections.secrets import SecretVault
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.db import create_pool
from viewfinder_common.errors import InvalidArgument, NotFound
from viewfinder_common.settings import DatabaseSettings, MilvusSettings
from viewfinder_common.vectorstore import VectorStore


class VectorStoreSettings(BaseSettings):
    """Which vector store the services use, and how they write to it."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_VECTORSTORE_", extra="ignore")

    # elasticsearch / opensearch / lindorm / hologres read their connection from
    # VIEWFINDER_ELASTICSEARCH_* / VIEWFINDER_OPENSEARCH_* / VIEWFINDER_LINDORM_* /
    # VIEWFINDER_HOLOGRES_* (settings classes beside each adapter).
    kind: Literal["pgvector", "milvus", "elasticsearch", "opensearch", "lindorm", "hologres"] = "pgvector"
    # Rows per upsert statement / request.
    upsert_batch_size: int = Field(default=500, ge=1)
    # Milvus: "Strong" makes a search see every completed upsert; "Bounded"
    # is cheaper on a cluster when a second of staleness is acceptable.
    milvus_consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = "Strong"
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)


async def create_vector_store(
    settings: VectorStoreSettings,
    *,
    pool: asyncpg.Pool | None = None,
    db: DatabaseSettings | None = None,
) -> VectorStore:
    """The adapter ``settings.kind`` names.

    pgvector uses ``pool`` when given (it stays its owner's to close) or opens
    a pool from ``db`` (default ``DatabaseSettings()``) that ``close()`` closes.
    """
    if settings.kind == "milvus":
        from viewfinder_common.vectorstore.milvus import MilvusVectorStore  # noqa: PLC0415 (pymilvus only when chosen)

        return MilvusVectorStore(
            settings.milvus,
            upsert_batch_size=settings.upsert_batch_size,
            consistency_level=settings.milvus_consistency_level,
        )
    if settings.kind in ("elasticsearch", "opensearch", "lindorm", "hologres"):
        return await _create_contract_tested_store(settings.kind, settings.upsert_batch_size)
    from viewfinder_common.vectorstore.pgvector import PgVectorStore  # noqa: PLC0415

    if pool is not None:
        return PgVectorStore(pool, upsert_batch_size=settings.upsert_batch_size)
    own_pool = await create_pool(db if db is not None else DatabaseSettings())
    return PgVectorStore(own_pool, upsert_batch_size=settings.upsert_batch_size, owns_pool=True)


async def _create_contract_tested_store(kind: str, upsert_batch_size: int) -> VectorStore:
    """The Elasticsearch, OpenSearch, Lindorm or Hologres adapter, configured from its own
    environment settings (clients imported only when chosen)."""
    if kind == "elasticsearch":
        from viewfinder_common.vectorstore.elasticsearch import (  # noqa: PLC0415
            ElasticsearchSettings,
            ElasticsearchVectorStore,
        )

        return ElasticsearchVectorStore(ElasticsearchSettings(), upsert_batch_size=upsert_batch_size)
    if kind == "hologres":
        from viewfinder_common.vectorstore.hologres import HologresSettings, HologresVectorStore  # noqa: PLC0415

        return await HologresVectorStore.connect(HologresSettings(), upsert_batch_size=upsert_batch_size)
    from viewfinder_common.vectorstore.opensearch import (  # noqa: PLC0415 (opensearch-py only when chosen)
        LindormSettings,
        LindormVectorStore,
        OpenSearchSettings,
        OpenSearchVectorStore,
    )

    if kind == "lindorm":
        return LindormVectorStore(LindormSettings(), upsert_batch_size=upsert_batch_size)
    return OpenSearchVectorStore(OpenSearchSettings(), upsert_batch_size=upsert_batch_size)


# Connection kinds (``ConnectionKind`` values) that are vector stores.
STORE_CONNECTION_KINDS = frozenset(
    {"pgvector", "milvus", "elasticsearch", "opensearch", "lindorm", "hologres"}
)


async def connect_vector_store(
    kind: str,
    config: Mapping[str, Any],
    secret: str | None,
    *,
    settings: VectorStoreSettings,
    pool_max_size: int | None = None,
) -> VectorStore:
    """The adapter of a stored database connection (``ResolvedConnection.spec.kind.value``,
    ``.spec.config``, ``.secret``); ``settings`` gives the write knobs (batch size, Milvus
    consistency). The store owns its clients and pools: ``close()`` releases them.
    ``pool_max_size`` caps the connection pool of pgvector and Hologres, which then opens
    none up front (a connection test wants 1); by default they use their settings' sizes.

    The secret is the password (pgvector, Elasticsearch, OpenSearch, Lindorm), the
    token ``user:password`` (Milvus) or the AccessKey secret (Hologres); it goes to
    the client only, never into a URL or a message. ValueError for a kind that is
    not a vector store.
    """
    password = SecretStr(secret) if secret else None
    if kind == "pgvector":
        from viewfinder_common.vectorstore.pgvector import PgVectorStore  # noqa: PLC0415

        user = quote(str(config["user"]), safe="") + "@" if config.get("user") else ""
        url = f"postgresql://{user}{config['host']}:{int(config.get('port', 5432))}/{quote(str(config['database']))}"
        db = DatabaseSettings(url=url, password=password)
        if pool_max_size is not None:
            db = db.model_copy(update={"pool_min_size": 0, "pool_max_size": pool_max_size})
        pool = await create_pool(db)
        return PgVectorStore(pool, upsert_batch_size=settings.upsert_batch_size, owns_pool=True)
    if kind == "milvus":
        from viewfinder_common.vectorstore.milvus import MilvusVectorStore  # noqa: PLC0415

        return MilvusVectorStore(
            MilvusSettings(
                uri=str(config["uri"]), token=password, db_name=str(config.get("database", "default"))
            ),
            upsert_batch_size=settings.upsert_batch_size,
            consistency_level=settings.milvus_consistency_level,
        )
    if kind == "hologres":
        from viewfinder_common.vectorstore.hologres import HologresSettings, HologresVectorStore  # noqa: PLC0415

        hologres = HologresSettings(
            host=str(config["host"]),
            port=int(config.get("port", 80)),
            database=str(config["database"]),
            access_key_id=str(config["access_key_id"]),
            access_key_secret=password,
        )
        if pool_max_size is not None:
            hologres = hologres.model_copy(update={"pool_min_size": 0, "pool_max_size": pool_max_size})
        return await HologresVectorStore.connect(hologres, upsert_batch_size=settings.upsert_batch_size)
    if kind == "elasticsearch":
        from viewfinder_common.vectorstore.elasticsearch import (  # noqa: PLC0415
            ElasticsearchSettings,
            ElasticsearchVectorStore,
        )

        return ElasticsearchVectorStore(
            ElasticsearchSettings(uri=str(config["uri"]), username=config.get("username"), password=password),
            upsert_batch_size=settings.upsert_batch_size,
        )
    if kind in ("opensearch", "lindorm"):
        from viewfinder_common.vectorstore.opensearch import (  # noqa: PLC0415
            LindormSettings,
            LindormVectorStore,
            OpenSearchSettings,
            OpenSearchVectorStore,
        )

        if kind == "lindorm":
            return LindormVectorStore(
                LindormSettings(uri=str(config["uri"]), username=config.get("username"), password=password),
                upsert_batch_size=settings.upsert_batch_size,
            )
        return OpenSearchVectorStore(
            OpenSearchSettings(uri=str(config["uri"]), username=config.get("username"), password=password),
            upsert_batch_size=settings.upsert_batch_size,
        )
    raise ValueError(f"connection kind {kind!r} is not a vector store")


def stored_vector_store_opener(
    pool: asyncpg.Pool, connections: ConnectionSettings, settings: VectorStoreSettings
) -> Callable[[str], Awaitable[VectorStore]]:
    """``await open_(name)``: the vector store of the database connection named ``name`` in
    the catalogue (``pool``), its secret opened with ``connections``' key. NotFound for an
    unknown name, InvalidArgument for a connection that is not a vector store (a model
    service), SecretUnavailable when its secret cannot be opened. The caller closes the store.
    """
    store, vault = ConnectionStore(pool), SecretVault(connections)

    async def open_(name: str) -> VectorStore:
        try:
            resolved = await resolve_connection(store, vault, name)
        except NotFound:
            raise NotFound(f"no vector store connection named {name!r} is configured or stored") from None
        kind = resolved.spec.kind.value
        if kind not in STORE_CONNECTION_KINDS:
            raise InvalidArgument(f"connection {name!r} is a {kind} connection, not a vector store")
        return await connect_vector_store(kind, resolved.spec.config, resolved.secret, settings=settings)

    return open_
