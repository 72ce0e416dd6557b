"""Turning a connection name into what a client needs: its settings and clear secret.

For the services that use connections (embedder, tagger, search): they read
the catalogue's ``connections`` table through ``ConnectionStore`` and open the
secret with the same ``SecretVault`` settings as the service that stored it.
"""

from __future__ import annotations

from dataclasses import dataclass

from viewfinder_common.connections.models import ConnectionSpec
from viewfinder_common.connections.secrets import SecretVault
from viewfinder_common.connections.store import ConnectionStore


@dataclass(frozen=True)
class ResolvedConnection:
    """A connection's settings and its secret in clear (keep it in memory only)."""

    spec: ConnectionSpec
    secret: str | None

    def __repr__(self) -> str:  # a resolved connection in a log line or traceback shows no secret
        return f"ResolvedConnection(spec={self.spec!r}, secret={'***' if self.secret else None})"


async def resolve_connection(store: ConnectionStore, vault: SecretVault, name: str) -> ResolvedConnection:
    """The connection named ``name`` with its secret opened; NotFound or SecretUnavailable otherwise."""
    stored = await store.get_by_name(name)
    return ResolvedConnection(stored.spec, vault.open(stored.secret_ciphertext, stored.secret_reference))
