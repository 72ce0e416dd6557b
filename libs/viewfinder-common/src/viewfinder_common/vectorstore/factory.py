"""Chooses and builds the configured vector-store adapter (DESIGN §4).

``VIEWFINDER_VECTORSTORE_KIND=pgvector`` (the default) keeps vectors in the
catalogue's PostgreSQL: pass the service's catalogue pool to share it, or let
the store open its own from ``DatabaseSettings`` (``VIEWFINDER_DB_*``).
``VIEWFINDER_VECTORSTORE_KIND=milvus`` connects to ``MilvusSettings``
(``VIEWFINDER_MILVUS_*``). A service holds the store for its lifetime and
closes it at shutdown.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from viewfinder_common.db import create_pool
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
