"""ConnectionService over gRPC against a real PostgreSQL catalogue."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from viewfinder.v1 import connection_pb2 as pb
from viewfinder.v1 import connection_pb2_grpc
from viewfinder_common.connections.probe import ConnectionProber
from viewfinder_common.connections.resolve import resolve_connection
from viewfinder_common.connections.secrets import SecretUnavailable, SecretVault
from viewfinder_common.connections.service import (
    SERVICE_NAME,
    ConnectionServicer,
    connection_service_registration,
)
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.errors import NotFound
from viewfinder_common.grpc_server import GrpcServer
from viewfinder_common.testing.fake_dashscope import FakeDashScopeServer

SECRET = "sk-very-secret-value-0123456789"


@dataclass
class Harness:
    stub: connection_pb2_grpc.ConnectionServiceAsyncStub
    pool: asyncpg.Pool
    environ: dict[str, str]


async def _serve(
    catalogue_db_url: str, settings: ConnectionSettings, environ: dict[str, str]
) -> AsyncIterator[Harness]:
    pool = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=4)
    servicer = ConnectionServicer(
        ConnectionStore(pool), SecretVault(settings, environ=environ), ConnectionProber(timeout_s=10)
    )
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        service_names=[SERVICE_NAME],
        registrations=[lambda s: connection_pb2_grpc.add_ConnectionServiceServicer_to_server(servicer, s)],
        shutdown_grace_s=0.5,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub: connection_pb2_grpc.ConnectionServiceAsyncStub = connection_pb2_grpc.ConnectionServiceStub(
                channel
            )
            yield Harness(stub, pool, environ)
    finally:
        await server.stop()
        await pool.close()


@pytest.fixture
async def harness(catalogue_db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    (tmp_path / "milvus-auth").mkdir()
    (tmp_path / "milvus-auth" / "token").write_text("root:Milvus\n")
    settings = ConnectionSettings(
        secret_key=SecretStr(Fernet.generate_key().decode()), secrets_dir=str(tmp_path)
    )
    async for h in _serve(catalogue_db_url, settings, {"SEARCH_PASSWORD": "env-password-42"}):
        yield h


def _all_kinds() -> list[tuple[pb.Connection, pb.SecretInput | None]]:
    return [
        (
            pb.Connection(
                name="dashscope",
                dashscope_embedding=pb.DashScopeEmbeddingConfig(
                    base_url="http://127.0.0.1:1", model="tongyi-embedding-vision-plus"
                ),
            ),
            pb.SecretInput(value=SECRET),
        ),
        (
            pb.Connection(name="gme", pai_eas=pb.PaiEasConfig(endpoint="http://127.0.0.1:1/api/predict/gme")),
            pb.SecretInput(value="eas-token-secret"),
        ),
        (
            pb.Connection(
                name="qwen-vl",
                openai_chat=pb.OpenAIChatConfig(base_url="http://127.0.0.1:1/v1", model="qwen-vl-max"),
            ),
            pb.SecretInput(value="sk-qwen-secret"),
        ),
        (
            pb.Connection(
                name="clip-dir", local_model_directory=pb.LocalModelDirectoryConfig(path="/models/clip")
            ),
            None,
        ),
        (pb.Connection(name="offline", offline_default=pb.OfflineDefaultConfig()), None),
        (
            pb.Connection(name="milvus", milvus=pb.MilvusConfig(uri="http://127.0.0.1:1", database="vf")),
            pb.SecretInput(kubernetes_secret="milvus-auth/token"),
        ),
        (
            pb.Connection(
                name="os", opensearch=pb.SearchEngineConfig(uri="http://127.0.0.1:1", username="admin")
            ),
            pb.SecretInput(env_var="SEARCH_PASSWORD"),
        ),
        (
            pb.Connection(
                name="es", elasticsearch=pb.SearchEngineConfig(uri="http://127.0.0.1:1", username="elastic")
            ),
            pb.SecretInput(value="es-password-secret"),
        ),
        (
            pb.Connection(
                name="lindorm", lindorm=pb.SearchEngineConfig(uri="http://127.0.0.1:1", username="root")
            ),
            pb.SecretInput(value="lindorm-password-secret"),
        ),
        (
            pb.Connection(
                name="holo",
                hologres=pb.HologresConfig(host="127.0.0.1", port=1, database="db", access_key_id="LTAI123"),
            ),
            pb.SecretInput(value="holo-ak-secret"),
        ),
        (
            pb.Connection(
                name="pg", pgvector=pb.PgVectorConfig(host="127.0.0.1", port=1, database="vf", user="vf")
            ),
            None,
        ),
    ]


async def test_round_trips_every_kind(harness: Harness) -> None:
    stub = harness.stub
    created: dict[str, pb.Connection] = {}
    for connection, secret in _all_kinds():
        request = pb.CreateConnectionRequest(connection=connection)
        if secret is not None:
            request.secret.CopyFrom(secret)
        reply = await stub.CreateConnection(request, timeout=10)
        stored = reply.connection
        assert stored.id
        assert stored.WhichOneof("config") == connection.WhichOneof("config")
        which = connection.WhichOneof("config")
        assert which is not None
        assert getattr(stored, which) == getattr(connection, which)
        assert stored.kind == pb.ConnectionKind.Value("CONNECTION_KIND_" + which.upper())
        assert stored.has_secret == (secret is not None)
        created[connection.name] = stored
    assert len(created) == 11

    assert created["dashscope"].secret_masked == "********"
    assert created["os"].secret_masked == "env:SEARCH_PASSWORD"
    assert created["milvus"].secret_masked == "k8s-secret:milvus-auth/token"
    assert created["offline"].secret_masked == ""

    for name, stored in created.items():
        by_id = await stub.GetConnection(pb.GetConnectionRequest(id=stored.id), timeout=10)
        by_name = await stub.GetConnection(pb.GetConnectionRequest(name=name), timeout=10)
        assert by_id.connection == stored
        assert by_name.connection == stored

    listed = await stub.ListConnections(pb.ListConnectionsRequest(), timeout=10)
    assert [c.name for c in listed.connections] == sorted(created)
    engines = await stub.ListConnections(
        pb.ListConnectionsRequest(kind=pb.CONNECTION_KIND_ELASTICSEARCH), timeout=10
    )
    assert [c.name for c in engines.connections] == ["es"]

    es = created["es"]
    changed = pb.Connection(
        name="es-prod",
        description="production cluster",
        elasticsearch=pb.SearchEngineConfig(uri="https://es-prod:9200", username="elastic"),
    )
    updated = (
        await stub.UpdateConnection(pb.UpdateConnectionRequest(id=es.id, connection=changed), timeout=10)
    ).connection
    assert (updated.name, updated.description, updated.elasticsearch.uri) == (
        "es-prod",
        "production cluster",
        "https://es-prod:9200",
    )
    assert updated.has_secret  # kept
    assert updated.update_time.ToDatetime() >= es.update_time.ToDatetime()

    for stored in created.values():
        await stub.DeleteConnection(pb.DeleteConnectionRequest(id=stored.id), timeout=10)
    assert not (await stub.ListConnections(pb.ListConnectionsRequest(), timeout=10)).connections
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetConnection(pb.GetConnectionRequest(id=es.id), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_update_replaces_clears_and_keeps_the_secret(harness: Harness) -> None:
    stub = harness.stub
    connection = pb.Connection(
        name="es", elasticsearch=pb.SearchEngineConfig(uri="http://es:9200", username="u")
    )
    created = await stub.CreateConnection(
        pb.CreateConnectionRequest(connection=connection, secret=pb.SecretInput(value="first-secret")),
        timeout=10,
    )
    conn_id = created.connection.id
    first = await harness.pool.fetchval(
        "SELECT secret_ciphertext FROM connections WHERE id = $1::uuid", conn_id
    )
    replaced = await stub.UpdateConnection(
        pb.UpdateConnectionRequest(id=conn_id, connection=connection, secret=pb.SecretInput(env_var="ES_PW")),
        timeout=10,
    )
    assert replaced.connection.secret_masked == "env:ES_PW"
    row = await harness.pool.fetchrow(
        "SELECT secret_ciphertext, secret_reference FROM connections WHERE id = $1::uuid", conn_id
    )
    assert first is not None
    assert row["secret_ciphertext"] is None
    assert row["secret_reference"] == "env:ES_PW"
    cleared = await stub.UpdateConnection(
        pb.UpdateConnectionRequest(id=conn_id, connection=connection, clear_secret=True), timeout=10
    )
    assert not cleared.connection.has_secret
    assert cleared.connection.secret_masked == ""


@pytest.mark.parametrize(
    ("request_message", "code", "detail"),
    [
        (
            pb.CreateConnectionRequest(connection=pb.Connection(name="x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "missing",
        ),
        (
            pb.CreateConnectionRequest(connection=pb.Connection(name="x", milvus=pb.MilvusConfig())),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs uri",
        ),
        (
            pb.CreateConnectionRequest(
                connection=pb.Connection(name="x", milvus=pb.MilvusConfig(uri="milvus:19530"))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "absolute URL",
        ),
        (
            pb.CreateConnectionRequest(
                connection=pb.Connection(name="Bad Name", offline_default=pb.OfflineDefaultConfig())
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "name",
        ),
        (
            pb.CreateConnectionRequest(
                connection=pb.Connection(name="x", offline_default=pb.OfflineDefaultConfig()),
                secret=pb.SecretInput(value="s"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "takes no secret",
        ),
        (
            pb.CreateConnectionRequest(
                connection=pb.Connection(name="x", milvus=pb.MilvusConfig(uri="http://m:1")),
                secret=pb.SecretInput(kubernetes_secret="../etc/passwd"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "secret-name/key",
        ),
        (
            pb.CreateConnectionRequest(
                connection=pb.Connection(name="x", milvus=pb.MilvusConfig(uri="http://m:1")),
                secret=pb.SecretInput(env_var="1BAD"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "environment variable",
        ),
    ],
)
async def test_invalid_requests_get_precise_statuses(
    harness: Harness, request_message: pb.CreateConnectionRequest, code: grpc.StatusCode, detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.stub.CreateConnection(request_message, timeout=10)
    assert raised.value.code() == code
    assert detail in (raised.value.details() or "")


async def test_name_conflicts_and_kind_changes_are_rejected(harness: Harness) -> None:
    stub = harness.stub
    offline = pb.Connection(name="offline", offline_default=pb.OfflineDefaultConfig())
    created = await stub.CreateConnection(pb.CreateConnectionRequest(connection=offline), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await stub.CreateConnection(pb.CreateConnectionRequest(connection=offline), timeout=10)
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
    other = pb.Connection(name="offline", milvus=pb.MilvusConfig(uri="http://m:19530"))
    with pytest.raises(grpc.aio.AioRpcError) as kind_change:
        await stub.UpdateConnection(
            pb.UpdateConnectionRequest(id=created.connection.id, connection=other), timeout=10
        )
    assert kind_change.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kind cannot change" in (kind_change.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad_id:
        await stub.GetConnection(pb.GetConnectionRequest(id="not-a-uuid"), timeout=10)
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_secret_by_value_needs_a_configured_key(catalogue_db_url: str) -> None:
    async for h in _serve(catalogue_db_url, ConnectionSettings(secret_key=None), {}):
        request = pb.CreateConnectionRequest(
            connection=pb.Connection(name="es", elasticsearch=pb.SearchEngineConfig(uri="http://es:9200")),
            secret=pb.SecretInput(value=SECRET),
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await h.stub.CreateConnection(request, timeout=10)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert SECRET not in (raised.value.details() or "")
        request.secret.CopyFrom(pb.SecretInput(env_var="ES_PASSWORD"))
        reply = await h.stub.CreateConnection(request, timeout=10)
        assert reply.connection.secret_masked == "env:ES_PASSWORD"


async def test_test_rpc_through_stored_and_unsaved_connections(harness: Harness) -> None:
    stub = harness.stub
    async with FakeDashScopeServer(api_key=SECRET) as fake:
        connection = pb.Connection(
            name="dashscope",
            dashscope_embedding=pb.DashScopeEmbeddingConfig(
                base_url=fake.base_url, model="tongyi-embedding-vision-plus"
            ),
        )
        created = await stub.CreateConnection(
            pb.CreateConnectionRequest(connection=connection, secret=pb.SecretInput(value=SECRET)), timeout=10
        )
        stored_test = await stub.TestConnection(
            pb.TestConnectionRequest(id=created.connection.id), timeout=20
        )
        assert stored_test.ok, stored_test.error
        assert stored_test.dimension == 1152
        assert stored_test.model == "tongyi-embedding-vision-plus"
        assert stored_test.latency_ms > 0

        unsaved_wrong_key = await stub.TestConnection(
            pb.TestConnectionRequest(connection=connection, secret=pb.SecretInput(value="sk-wrong-key-987")),
            timeout=20,
        )
        assert not unsaved_wrong_key.ok
        assert unsaved_wrong_key.failure == pb.CONNECTION_TEST_FAILURE_AUTHENTICATION_FAILED
        assert unsaved_wrong_key.error.startswith("authentication failed")
        assert "sk-wrong-key-987" not in str(unsaved_wrong_key)

    missing_env = await stub.TestConnection(
        pb.TestConnectionRequest(
            connection=pb.Connection(milvus=pb.MilvusConfig(uri="http://127.0.0.1:19530")),
            secret=pb.SecretInput(env_var="NOT_SET_ANYWHERE"),
        ),
        timeout=20,
    )
    assert not missing_env.ok
    assert missing_env.failure == pb.CONNECTION_TEST_FAILURE_SECRET_UNAVAILABLE
    assert "NOT_SET_ANYWHERE" in missing_env.error


async def test_secrets_never_appear_in_responses_storage_or_logs(
    harness: Harness, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    stub = harness.stub
    responses: list[bytes] = []
    secrets = {SECRET, "eas-token-secret", "sk-qwen-secret", "es-password-secret", "lindorm-password-secret"}
    secrets |= {"holo-ak-secret", "env-password-42", "root:Milvus"}
    ids = []
    for connection, secret in _all_kinds():
        request = pb.CreateConnectionRequest(connection=connection)
        if secret is not None:
            request.secret.CopyFrom(secret)
        reply = await stub.CreateConnection(request, timeout=10)
        responses.append(reply.SerializeToString())
        ids.append(reply.connection.id)
    responses.append(
        (await stub.ListConnections(pb.ListConnectionsRequest(), timeout=10)).SerializeToString()
    )
    failures: dict[str, int] = {}
    for conn_id in ids:
        got = await stub.GetConnection(pb.GetConnectionRequest(id=conn_id), timeout=10)
        responses.append(got.SerializeToString())
        # Nothing listens on 127.0.0.1:1, so every networked kind's test fails with the
        # secret on its way to the server: the error texts must stay clean too.
        test = await stub.TestConnection(pb.TestConnectionRequest(id=conn_id), timeout=30)
        responses.append(test.SerializeToString())
        failures[got.connection.name] = test.failure
    networked = set(failures) - {"clip-dir", "offline"}
    assert {name: failures[name] for name in networked} == dict.fromkeys(
        networked, pb.CONNECTION_TEST_FAILURE_UNREACHABLE
    )
    assert failures["offline"] == pb.CONNECTION_TEST_FAILURE_UNSPECIFIED
    rows = await harness.pool.fetch(
        "SELECT config::text, secret_ciphertext, secret_reference FROM connections"
    )
    stored = b"".join(
        (row["config"] or "").encode()
        + (row["secret_ciphertext"] or b"")
        + (row["secret_reference"] or "").encode()
        for row in rows
    )
    captured = capsys.readouterr()
    logs = (
        captured.out
        + captured.err
        + "".join(f"{r.getMessage()} {r.msg!r} {r.args!r}" for r in caplog.records)
    )
    for secret_text in secrets:
        assert all(secret_text.encode() not in response for response in responses), secret_text
        assert secret_text.encode() not in stored, secret_text
        assert secret_text not in logs, secret_text
    assert "connection created" in logs  # the log lines were captured
    assert "connection tested" in logs


async def test_the_registration_a_host_service_uses(catalogue_db_url: str) -> None:
    pool = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=2)
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        service_names=[SERVICE_NAME],
        registrations=[connection_service_registration(pool, ConnectionSettings())],
        shutdown_grace_s=0.5,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub: connection_pb2_grpc.ConnectionServiceAsyncStub = connection_pb2_grpc.ConnectionServiceStub(
                channel
            )
            created = await stub.CreateConnection(
                pb.CreateConnectionRequest(
                    connection=pb.Connection(name="offline", offline_default=pb.OfflineDefaultConfig())
                ),
                timeout=10,
            )
            listed = await stub.ListConnections(pb.ListConnectionsRequest(), timeout=10)
    finally:
        await server.stop()
        await pool.close()
    assert [c.id for c in listed.connections] == [created.connection.id]


async def test_services_resolve_a_connection_by_name_with_its_secret(
    harness: Harness, tmp_path: Path
) -> None:
    stub = harness.stub
    es = pb.Connection(
        name="es", elasticsearch=pb.SearchEngineConfig(uri="http://es:9200", username="elastic")
    )
    os_ = pb.Connection(name="os", opensearch=pb.SearchEngineConfig(uri="http://os:9200"))
    await stub.CreateConnection(
        pb.CreateConnectionRequest(connection=es, secret=pb.SecretInput(value=SECRET))
    )
    await stub.CreateConnection(
        pb.CreateConnectionRequest(connection=os_, secret=pb.SecretInput(env_var="SEARCH_PASSWORD"))
    )
    settings = ConnectionSettings(secret_key=None, secrets_dir=str(tmp_path))
    vault_without_key = SecretVault(settings, environ=harness.environ)
    store = ConnectionStore(harness.pool)
    referenced = await resolve_connection(store, vault_without_key, "os")
    assert referenced.secret == "env-password-42"
    assert referenced.spec.config == {"uri": "http://os:9200"}
    with pytest.raises(SecretUnavailable, match="no secret key is configured"):
        await resolve_connection(store, vault_without_key, "es")
    with pytest.raises(NotFound):
        await resolve_connection(store, vault_without_key, "nope")
    assert "env-password-42" not in repr(referenced)
