# ruff: noqa: N802 - method names are the rpc names of connection.proto
"""The ConnectionService gRPC servicer: translates messages and delegates to
the store, the vault and the prober. Hosted by the ingest service (datasets
choose connections); ``connection_service_registration`` is all a host needs.

No response carries a secret: ``Connection.has_secret`` and
``secret_masked`` say what is stored; log lines name the connection and kind
only.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from google.protobuf import json_format

from viewfinder.v1 import connection_pb2, connection_pb2_grpc
from viewfinder_common.connections.models import (
    ConnectionKind,
    ConnectionSpec,
    SecretSpec,
    StoredConnection,
    validate_spec,
)
from viewfinder_common.connections.probe import ConnectionProber, ProbeResult
from viewfinder_common.connections.secrets import SecretUnavailable, SecretVault, masked
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.errors import InvalidArgument
from viewfinder_common.grpc_server import ServicerRegistration
from viewfinder_common.logging import get_logger

SERVICE_NAME = connection_pb2.DESCRIPTOR.services_by_name["ConnectionService"].full_name
_log = get_logger(__name__)


def _kind_to_proto(kind: ConnectionKind) -> connection_pb2.ConnectionKind.ValueType:
    return connection_pb2.ConnectionKind.Value("CONNECTION_KIND_" + kind.name)


def _kind_from_proto(kind: connection_pb2.ConnectionKind.ValueType) -> ConnectionKind | None:
    if kind == connection_pb2.CONNECTION_KIND_UNSPECIFIED:
        return None
    name = connection_pb2.ConnectionKind.Name(kind).removeprefix("CONNECTION_KIND_")
    return ConnectionKind[name]


def spec_from_proto(message: connection_pb2.Connection) -> ConnectionSpec:
    """The domain spec of a request's Connection (output-only fields ignored), or InvalidArgument."""
    which = message.WhichOneof("config")
    if which is None:
        raise InvalidArgument(
            "connection settings are missing: set exactly one kind (e.g. milvus, dashscope_embedding)"
        )
    config: dict[str, Any] = json_format.MessageToDict(
        getattr(message, which), preserving_proto_field_name=True
    )
    return ConnectionSpec(
        name=message.name, kind=ConnectionKind(which), config=config, description=message.description
    )


def secret_from_proto(message: connection_pb2.SecretInput) -> SecretSpec | None:
    """The requested secret, or None when none is set."""
    which = message.WhichOneof("source")
    if which == "value":
        return SecretSpec(value=message.value)
    if which == "env_var":
        return SecretSpec(reference="env:" + message.env_var)
    if which == "kubernetes_secret":
        return SecretSpec(reference="k8s-secret:" + message.kubernetes_secret)
    return None


def connection_to_proto(stored: StoredConnection) -> connection_pb2.Connection:
    """The response form of a stored connection: settings and a masked secret marker."""
    message = connection_pb2.Connection(
        id=stored.id,
        name=stored.spec.name,
        description=stored.spec.description,
        kind=_kind_to_proto(stored.spec.kind),
        has_secret=stored.has_secret,
        secret_masked=masked(stored.secret_ciphertext, stored.secret_reference),
    )
    config_message = getattr(message, stored.spec.kind.value)
    config_message.SetInParent()  # an empty config (offline default) still selects its kind
    json_format.ParseDict(stored.spec.config, config_message)
    message.create_time.FromDatetime(stored.created_at)
    message.update_time.FromDatetime(stored.updated_at)
    return message


def _result_to_proto(result: ProbeResult) -> connection_pb2.TestConnectionResponse:
    failure = (
        connection_pb2.ConnectionTestFailure.Value("CONNECTION_TEST_FAILURE_" + result.failure)
        if result.failure
        else connection_pb2.CONNECTION_TEST_FAILURE_UNSPECIFIED
    )
    return connection_pb2.TestConnectionResponse(
        ok=result.ok,
        latency_ms=result.latency_ms,
        dimension=result.dimension,
        server_version=result.server_version,
        model=result.model,
        failure=failure,
        error=result.error,
    )


class ConnectionServicer(connection_pb2_grpc.ConnectionServiceServicer):
    """ConnectionService over a ``ConnectionStore``."""

    def __init__(self, store: ConnectionStore, vault: SecretVault, prober: ConnectionProber) -> None:
        self._store = store
        self._vault = vault
        self._prober = prober

    async def CreateConnection(
        self, request: connection_pb2.CreateConnectionRequest, context: Any
    ) -> connection_pb2.CreateConnectionResponse:
        """Validates, seals the secret and stores the connection."""
        secret = secret_from_proto(request.secret)
        spec = validate_spec(spec_from_proto(request.connection), secret)
        ciphertext, reference = self._vault.seal(secret) if secret is not None else (None, None)
        stored = await self._store.create(spec, secret_ciphertext=ciphertext, secret_reference=reference)
        _log.info(
            "connection created", connection=spec.name, kind=spec.kind.value, has_secret=stored.has_secret
        )
        return connection_pb2.CreateConnectionResponse(connection=connection_to_proto(stored))

    async def ListConnections(
        self, request: connection_pb2.ListConnectionsRequest, context: Any
    ) -> connection_pb2.ListConnectionsResponse:
        """All connections, or those of one kind, by name."""
        stored = await self._store.list(_kind_from_proto(request.kind))
        return connection_pb2.ListConnectionsResponse(connections=[connection_to_proto(c) for c in stored])

    async def GetConnection(
        self, request: connection_pb2.GetConnectionRequest, context: Any
    ) -> connection_pb2.GetConnectionResponse:
        """One connection by id or by name."""
        return connection_pb2.GetConnectionResponse(
            connection=connection_to_proto(await self._lookup(request))
        )

    async def _lookup(self, request: connection_pb2.GetConnectionRequest) -> StoredConnection:
        if bool(request.id) == bool(request.name):
            raise InvalidArgument("give exactly one of id and name")
        return await (self._store.get(request.id) if request.id else self._store.get_by_name(request.name))

    async def UpdateConnection(
        self, request: connection_pb2.UpdateConnectionRequest, context: Any
    ) -> connection_pb2.UpdateConnectionResponse:
        """Replaces name, description and settings; keeps, replaces or clears the secret."""
        if not request.id:
            raise InvalidArgument("id is required")
        secret = secret_from_proto(request.secret)
        if secret is not None and request.clear_secret:
            raise InvalidArgument("give a new secret or clear_secret, not both")
        spec = validate_spec(spec_from_proto(request.connection), secret)
        sealed: tuple[bytes | None, str | None] | None = None
        if secret is not None:
            sealed = self._vault.seal(secret)
        elif request.clear_secret:
            sealed = (None, None)
        stored = await self._store.update(request.id, spec, secret=sealed)
        _log.info(
            "connection updated",
            connection=spec.name,
            kind=spec.kind.value,
            secret_changed=sealed is not None,
        )
        return connection_pb2.UpdateConnectionResponse(connection=connection_to_proto(stored))

    async def DeleteConnection(
        self, request: connection_pb2.DeleteConnectionRequest, context: Any
    ) -> connection_pb2.DeleteConnectionResponse:
        """Deletes one connection."""
        if not request.id:
            raise InvalidArgument("id is required")
        await self._store.delete(request.id)
        _log.info("connection deleted", connection_id=request.id)
        return connection_pb2.DeleteConnectionResponse()

    async def TestConnection(
        self, request: connection_pb2.TestConnectionRequest, context: Any
    ) -> connection_pb2.TestConnectionResponse:
        """A live round-trip through a stored or an unsaved connection."""
        if request.id and request.HasField("connection"):
            raise InvalidArgument("give a stored connection's id or an unsaved connection, not both")
        if request.id:
            stored = await self._store.get(request.id)
            spec = stored.spec
            try:
                secret = self._vault.open(stored.secret_ciphertext, stored.secret_reference)
            except SecretUnavailable as err:
                return _result_to_proto(ProbeResult(ok=False, failure="SECRET_UNAVAILABLE", error=str(err)))
        elif request.HasField("connection"):
            secret_spec = secret_from_proto(request.secret)
            unsaved = request.connection
            if not unsaved.name:
                unsaved = connection_pb2.Connection()
                unsaved.CopyFrom(request.connection)
                unsaved.name = "unsaved"
            spec = validate_spec(spec_from_proto(unsaved), secret_spec)
            try:
                secret = self._open_unsaved(secret_spec)
            except SecretUnavailable as err:
                return _result_to_proto(ProbeResult(ok=False, failure="SECRET_UNAVAILABLE", error=str(err)))
        else:
            raise InvalidArgument("give a stored connection's id or an unsaved connection")
        result = await self._prober.probe(spec, secret)
        _log.info(
            "connection tested",
            connection=spec.name,
            kind=spec.kind.value,
            ok=result.ok,
            failure=result.failure or None,
            latency_ms=round(result.latency_ms, 1),
        )
        return _result_to_proto(result)

    def _open_unsaved(self, secret: SecretSpec | None) -> str | None:
        if secret is None:
            return None
        if secret.value is not None:
            return secret.value
        _, reference = self._vault.seal(secret)  # validates the reference's syntax
        return self._vault.open(None, reference)


def connection_service_registration(
    pool: asyncpg.Pool, settings: ConnectionSettings | None = None
) -> ServicerRegistration:
    """What a host service adds to its gRPC server to serve ConnectionService over ``pool``."""
    settings = settings or ConnectionSettings()
    servicer = ConnectionServicer(
        ConnectionStore(pool), SecretVault(settings), ConnectionProber(timeout_s=settings.test_timeout_s)
    )

    def register(server: Any) -> None:
        connection_pb2_grpc.add_ConnectionServiceServicer_to_server(servicer, server)

    return register
