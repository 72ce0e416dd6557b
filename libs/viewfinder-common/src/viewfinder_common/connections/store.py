# ruff: noqa: S608 - only the constant column list and fixed assignments are interpolated; values are bind parameters
"""Connections in the catalogue's PostgreSQL (migration 0007)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from viewfinder_common.connections.models import ConnectionKind, ConnectionSpec, StoredConnection
from viewfinder_common.errors import AlreadyExists, InvalidArgument, NotFound

_COLUMNS = "id, name, kind, description, config, secret_ciphertext, secret_reference, created_at, updated_at"


def _row_to_connection(row: asyncpg.Record) -> StoredConnection:
    return StoredConnection(
        id=str(row["id"]),
        spec=ConnectionSpec(
            name=row["name"],
            kind=ConnectionKind(row["kind"]),
            config=json.loads(row["config"]),
            description=row["description"],
        ),
        secret_ciphertext=row["secret_ciphertext"],
        secret_reference=row["secret_reference"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _parse_id(connection_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(connection_id)
    except ValueError:
        raise InvalidArgument(f"connection id {connection_id!r} is not a UUID") from None


class ConnectionStore:
    """Create, read, update and delete connections; secrets arrive sealed."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, spec: ConnectionSpec, *, secret_ciphertext: bytes | None, secret_reference: str | None
    ) -> StoredConnection:
        """Inserts a validated connection; AlreadyExists for a taken name."""
        try:
            row = await self._pool.fetchrow(
                f"""
                INSERT INTO connections (name, kind, description, config, secret_ciphertext, secret_reference)
                VALUES ($1, $2, $3, $4::jsonb, $5, $6)
                RETURNING {_COLUMNS}
                """,
                spec.name,
                spec.kind.value,
                spec.description,
                json.dumps(spec.config),
                secret_ciphertext,
                secret_reference,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"a connection named {spec.name!r} exists already") from None
        assert row is not None
        return _row_to_connection(row)

    async def get(self, connection_id: str) -> StoredConnection:
        """The connection with ``connection_id``, or NotFound."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM connections WHERE id = $1", _parse_id(connection_id)
        )
        if row is None:
            raise NotFound(f"connection {connection_id} does not exist")
        return _row_to_connection(row)

    async def get_by_name(self, name: str) -> StoredConnection:
        """The connection named ``name``, or NotFound."""
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM connections WHERE name = $1", name)
        if row is None:
            raise NotFound(f"connection {name!r} does not exist")
        return _row_to_connection(row)

    async def list(self, kind: ConnectionKind | None = None) -> list[StoredConnection]:
        """All connections (of ``kind``), ordered by name."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM connections WHERE $1::text IS NULL OR kind = $1 ORDER BY name",
            kind.value if kind is not None else None,
        )
        return [_row_to_connection(row) for row in rows]

    async def update(
        self,
        connection_id: str,
        spec: ConnectionSpec,
        *,
        secret: tuple[bytes | None, str | None] | None,
    ) -> StoredConnection:
        """Replaces name, description and config; ``secret`` None keeps the stored secret,
        ``(None, None)`` clears it. The kind cannot change (InvalidArgument)."""
        parsed = _parse_id(connection_id)
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow("SELECT kind FROM connections WHERE id = $1 FOR UPDATE", parsed)
            if current is None:
                raise NotFound(f"connection {connection_id} does not exist")
            if current["kind"] != spec.kind.value:
                raise InvalidArgument(
                    f"a connection's kind cannot change ({current['kind']} → {spec.kind.value}); create a new one"
                )
            assignments = "name = $2, description = $3, config = $4::jsonb, updated_at = now()"
            args: list[Any] = [parsed, spec.name, spec.description, json.dumps(spec.config)]
            if secret is not None:
                assignments += ", secret_ciphertext = $5, secret_reference = $6"
                args.extend(secret)
            try:
                row = await conn.fetchrow(
                    f"UPDATE connections SET {assignments} WHERE id = $1 RETURNING {_COLUMNS}", *args
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(f"a connection named {spec.name!r} exists already") from None
        assert row is not None
        return _row_to_connection(row)

    async def delete(self, connection_id: str) -> None:
        """Deletes the connection, or NotFound."""
        result = await self._pool.execute("DELETE FROM connections WHERE id = $1", _parse_id(connection_id))
        if result == "DELETE 0":
            raise NotFound(f"connection {connection_id} does not exist")
