"""TestConnection's round-trip for every kind, against the fakes and the local servers."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from viewfinder_common.connections.models import ConnectionKind, ConnectionSpec
from viewfinder_common.connections.probe import ConnectionProber, Failure
from viewfinder_common.settings import DatabaseSettings, MilvusSettings
from viewfinder_common.testing.fake_dashscope import FakeDashScopeServer
from viewfinder_common.testing.fake_pai_eas import FakePaiEasServer
from viewfinder_common.testing.fake_search_engine import Dialect, FakeSearchEngine
from viewfinder_common.testing.fake_vlm import FakeVLMServer

PROBER = ConnectionProber(timeout_s=20)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _spec(kind: ConnectionKind, **config: object) -> ConnectionSpec:
    return ConnectionSpec(name="probe", kind=kind, config=dict(config))


async def test_dashscope_ok_wrong_key_wrong_url_unreachable(closed_port: int) -> None:
    async with FakeDashScopeServer(api_key="sk-right") as fake:
        spec = _spec(
            ConnectionKind.DASHSCOPE_EMBEDDING, base_url=fake.base_url, model="multimodal-embedding-v1"
        )
        ok = await PROBER.probe(spec, "sk-right")
        assert (ok.ok, ok.dimension, ok.model) == (True, 1024, "multimodal-embedding-v1")
        assert ok.latency_ms > 0

        wrong_key = await PROBER.probe(spec, "sk-wrong-0001")
        assert (wrong_key.ok, wrong_key.failure) == (False, Failure.AUTHENTICATION_FAILED)
        assert wrong_key.error.startswith("authentication failed")
        assert "sk-wrong-0001" not in wrong_key.error

        wrong_url = await PROBER.probe(
            _spec(ConnectionKind.DASHSCOPE_EMBEDDING, base_url=fake.base_url + "/v2", model="m"), "sk-right"
        )
        assert (wrong_url.ok, wrong_url.failure) == (False, Failure.ENDPOINT_NOT_FOUND)
        assert wrong_url.error.startswith("endpoint not found")

    unreachable = await PROBER.probe(
        _spec(ConnectionKind.DASHSCOPE_EMBEDDING, base_url=f"http://127.0.0.1:{closed_port}", model="m"), "k"
    )
    assert (unreachable.ok, unreachable.failure) == (False, Failure.UNREACHABLE)
    assert unreachable.error.startswith(f"cannot reach 127.0.0.1:{closed_port}")


async def test_pai_eas_ok_wrong_token_wrong_url_unreachable(closed_port: int) -> None:
    async with FakePaiEasServer(token="eas-right", dimension=3584) as fake:
        ok = await PROBER.probe(_spec(ConnectionKind.PAI_EAS, endpoint=fake.endpoint), "eas-right")
        assert (ok.ok, ok.dimension) == (True, 3584)
        wrong = await PROBER.probe(_spec(ConnectionKind.PAI_EAS, endpoint=fake.endpoint), "eas-wrong-777")
        assert (wrong.failure, "eas-wrong-777" in wrong.error) == (Failure.AUTHENTICATION_FAILED, False)
        missing = await PROBER.probe(_spec(ConnectionKind.PAI_EAS, endpoint=fake.endpoint + "x"), "eas-right")
        assert missing.failure == Failure.ENDPOINT_NOT_FOUND
    gone = await PROBER.probe(
        _spec(ConnectionKind.PAI_EAS, endpoint=f"http://127.0.0.1:{closed_port}/p"), "t"
    )
    assert gone.failure == Failure.UNREACHABLE
    assert f"127.0.0.1:{closed_port}" in gone.error


async def test_openai_chat_ok_and_wrong_key() -> None:
    async with FakeVLMServer(api_key="sk-vlm") as fake:
        spec = _spec(ConnectionKind.OPENAI_CHAT, base_url=fake.base_url, model="qwen-vl-plus")
        ok = await PROBER.probe(spec, "sk-vlm")
        assert (ok.ok, ok.model) == (True, "qwen-vl-plus"), ok.error
        wrong = await PROBER.probe(spec, "sk-nope-31337")
        assert wrong.failure == Failure.AUTHENTICATION_FAILED
        assert "sk-nope-31337" not in wrong.error
        missing = await PROBER.probe(
            _spec(ConnectionKind.OPENAI_CHAT, base_url=fake.base_url + "/nope", model="qwen-vl-plus"),
            "sk-vlm",
        )
        assert missing.failure == Failure.ENDPOINT_NOT_FOUND


async def test_local_directory_and_offline(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "projection_dim": 512}))
    ok = await PROBER.probe(_spec(ConnectionKind.LOCAL_MODEL_DIRECTORY, path=str(tmp_path)), None)
    assert (ok.ok, ok.dimension) == (True, 512)
    missing = await PROBER.probe(
        _spec(ConnectionKind.LOCAL_MODEL_DIRECTORY, path=str(tmp_path / "none")), None
    )
    assert not missing.ok
    assert "does not exist" in missing.error
    offline = await PROBER.probe(_spec(ConnectionKind.OFFLINE_DEFAULT), None)
    assert offline.ok


@pytest.mark.parametrize(
    ("dialect", "kind"),
    [
        (Dialect.ELASTICSEARCH, ConnectionKind.ELASTICSEARCH),
        (Dialect.OPENSEARCH, ConnectionKind.OPENSEARCH),
        (Dialect.LINDORM, ConnectionKind.LINDORM),
    ],
)
async def test_search_engines_report_their_version(
    dialect: Dialect, kind: ConnectionKind, closed_port: int
) -> None:
    async with FakeSearchEngine(dialect, username="admin", password="engine-secret") as fake:
        spec = _spec(kind, uri=fake.url, username="admin")
        ok = await PROBER.probe(spec, "engine-secret")
        assert (ok.ok, ok.server_version) == (True, fake.version), ok.error
        wrong = await PROBER.probe(spec, "bad-password-555")
        assert (wrong.ok, wrong.failure) == (False, Failure.AUTHENTICATION_FAILED), wrong.error
        assert "bad-password-555" not in wrong.error
    gone = await PROBER.probe(_spec(kind, uri=f"http://127.0.0.1:{closed_port}", username="admin"), "x")
    assert (gone.ok, gone.failure) == (False, Failure.UNREACHABLE), gone.error
    assert gone.error.startswith(f"cannot reach 127.0.0.1:{closed_port}")


def _local_pg() -> tuple[str, int, str, str]:
    url = urlsplit(DatabaseSettings().url)
    assert url.hostname is not None
    return url.hostname, url.port or 5432, url.path.lstrip("/"), url.username or "postgres"


async def test_pgvector_ok_wrong_database_wrong_user_unreachable(closed_port: int) -> None:
    host, port, database, user = _local_pg()
    ok = await PROBER.probe(
        _spec(ConnectionKind.PGVECTOR, host=host, port=port, database=database, user=user), None
    )
    assert ok.ok, ok.error
    assert ok.server_version.startswith("PostgreSQL ")
    assert "pgvector" in ok.server_version
    no_db = await PROBER.probe(
        _spec(ConnectionKind.PGVECTOR, host=host, port=port, database="no_such_db_xyz", user=user), None
    )
    assert (no_db.failure, "no_such_db_xyz" in no_db.error) == (Failure.ENDPOINT_NOT_FOUND, True)
    no_user = await PROBER.probe(
        _spec(ConnectionKind.PGVECTOR, host=host, port=port, database=database, user="no_such_role_xyz"),
        "pw-1",
    )
    assert no_user.failure == Failure.AUTHENTICATION_FAILED, no_user.error
    gone = await PROBER.probe(
        _spec(ConnectionKind.PGVECTOR, host="127.0.0.1", port=closed_port, database=database, user=user), None
    )
    assert (gone.failure, gone.error.startswith(f"cannot reach 127.0.0.1:{closed_port}")) == (
        Failure.UNREACHABLE,
        True,
    )


async def test_hologres_reports_the_server_version_over_the_postgresql_protocol() -> None:
    host, port, database, user = _local_pg()
    spec = _spec(ConnectionKind.HOLOGRES, host=host, port=port, database=database, access_key_id=user)
    ok = await PROBER.probe(spec, "ak-secret-unused-by-trust-auth")
    assert ok.ok, ok.error
    assert "PostgreSQL" in ok.server_version


async def test_milvus_reports_the_server_version(closed_port: int) -> None:
    ok = await PROBER.probe(_spec(ConnectionKind.MILVUS, uri=MilvusSettings().uri), None)
    assert ok.ok, ok.error
    assert ok.server_version
    gone = await ConnectionProber(timeout_s=5).probe(
        _spec(ConnectionKind.MILVUS, uri=f"http://127.0.0.1:{closed_port}"), "root:secret-pw"
    )
    assert (gone.ok, gone.failure) == (False, Failure.UNREACHABLE), gone.error
    assert "secret-pw" not in gone.error
