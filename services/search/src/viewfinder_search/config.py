"""Settings of the search service (env prefix ``VIEWFINDER_SEARCH_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.settings import ServiceSettings
from viewfinder_common.vectorstore import DEFAULT_SEARCH_BREADTH
from viewfinder_common.vectorstore.factory import VectorStoreSettings


class SearchSettings(ServiceSettings):
    """Configuration of one search process, read once at start."""

    model_config = SettingsConfigDict(env_prefix="VIEWFINDER_SEARCH_", extra="ignore")

    service_name: str = "search"
    grpc_port: int = 7054
    # EmbedService (the embedder) address and the deadline of each call to it.
    embedder_target: str = "127.0.0.1:7053"
    embed_deadline_s: float = Field(default=10.0, gt=0)
    # Where indexes live (VIEWFINDER_VECTORSTORE_*): pgvector in the catalogue's
    # PostgreSQL (sharing the service's pool), or Milvus.
    vectorstore: VectorStoreSettings = Field(default_factory=VectorStoreSettings)
    # An index in a database connection stored through ConnectionService (a
    # dataset switched to it) opens with the connection store's key, as in the embedder.
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings)
    # HMAC key of page tokens. Set the same value on every replica so that a
    # token from one replica works on the next; unset, each process draws a
    # random key (fine for one replica, tokens die with the process).
    page_token_key: SecretStr | None = None
    # Lifetime of presigned preview URLs.
    preview_url_ttl_s: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    # Planner: filters leaving at most exact_candidate_floor files are answered
    # exactly (ids from the catalogue, brute-force vector search over them);
    # above it, exactly while cheaper than the filtered ANN (sqrt(ratio x top_k x
    # version size)), never above exact_candidate_limit.
    exact_candidate_floor: int = Field(default=500, ge=0)
    exact_candidate_limit: int = Field(default=20_000, ge=0)
    ann_cost_ratio: float = Field(default=10.0, gt=0)
    # Planner: the first filtered ANN request asks for top_k / the estimated pass
    # rate x estimate_margin neighbours, and at least top_k x overfetch_factor.
    estimate_margin: float = Field(default=1.5, ge=1.0)
    overfetch_factor: int = Field(default=2, ge=1)
    # Planner: ANN requests never ask for more neighbours; past it, exact scan.
    max_overfetch: int = Field(default=16_384, ge=1)
    # Planner: HNSW search breadth per neighbour requested, and its minimum.
    breadth_factor: int = Field(default=3, ge=1)
    min_search_breadth: int = Field(default=DEFAULT_SEARCH_BREADTH, ge=1)
    # Planner: the largest breadth the vector store honours (pgvector: 1,000);
    # filters that would need more take the exact path up to exact_candidate_limit.
    max_search_breadth: int = Field(default=1000, ge=1)
    # Planner: widening asks for what the observed pass rate needs, times this.
    widen_margin: float = Field(default=2.0, ge=1.0)
    # Facets: most tag counts returned.
    facet_tag_limit: int = Field(default=100, ge=1, le=10_000)
