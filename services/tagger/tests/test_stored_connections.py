"""Label jobs through connections stored by ConnectionService (real PostgreSQL, the fake VLM over HTTP)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from viewfinder.v1 import common_pb2, labeling_pb2
from viewfinder_common.connections.models import ConnectionKind, ConnectionSpec, SecretSpec, validate_spec
from viewfinder_common.connections.resolve import ResolvedConnection
from viewfinder_common.connections.secrets import SecretVault
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.errors import FailedPrecondition, NotFound
from viewfinder_common.testing.fake_vlm import FakeVLMServer
from viewfinder_tagger.adapters.openai_vlm import OpenAIChatModel
from viewfinder_tagger.adapters.zero_shot_tagger import ZeroShotTagger
from viewfinder_tagger.config import ZeroShotConnection
from viewfinder_tagger.model_registry import ModelRegistry, stored_connection_loader

TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
WRONG_KEY = "sk-vf-wrong-3c9a1e7f5b2d8046"


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


class StoredConnections:
    """Writes connections the way ConnectionService does: validated, secret sealed with the shared key."""

    def __init__(self, pool: Any, settings: ConnectionSettings) -> None:
        self.store = ConnectionStore(pool)
        self.vault = SecretVault(settings)

    async def create(
        self, name: str, kind: ConnectionKind, config: dict[str, Any], secret: str | None = None
    ) -> str:
        spec = validate_spec(ConnectionSpec(name, kind, config), SecretSpec(value=secret) if secret else None)
        ciphertext, reference = self.vault.seal(SecretSpec(value=secret)) if secret else (None, None)
        stored = await self.store.create(spec, secret_ciphertext=ciphertext, secret_reference=reference)
        return stored.id

    async def replace_secret(self, connection_id: str, secret: str) -> None:
        stored = await self.store.get(connection_id)
        await self.store.update(connection_id, stored.spec, secret=self.vault.seal(SecretSpec(value=secret)))


async def test_label_jobs_use_stored_connections_and_their_keys_never_leak(
    start_tagger: Any, seeder: Any, fake_vlm: FakeVLMServer, api_key: str, helpers: Any, db_pool: Any
) -> None:
    seeded = await seeder.version(["red", "green", "blue"])
    settings = ConnectionSettings(secret_key=SecretStr(Fernet.generate_key().decode()))
    connections = StoredConnections(db_pool, settings)
    # Stored with a wrong key first: the job fails for the connection, not file by file.
    qwen_id = await connections.create(
        "qwen-stored",
        ConnectionKind.OPENAI_CHAT,
        {"base_url": fake_vlm.base_url, "model": "qwen-vl-max"},
        WRONG_KEY,
    )
    await connections.create(
        "dashscope", ConnectionKind.DASHSCOPE_EMBEDDING, {"model": "tongyi-embedding-vision-plus"}, "sk-other"
    )
    async with start_tagger(connection_store=settings) as tagger:
        stub = tagger.stub
        definition = (
            await stub.CreateTagDefinition(helpers.definition_request("colours"), timeout=5)
        ).tag_definition

        def request(**fields: Any) -> labeling_pb2.StartLabelJobRequest:
            values = {
                "dataset_version_id": seeded.version_id,
                "tag_definition_id": definition.id,
                "mode": common_pb2.JOB_MODE_FULL,
            } | fields
            return labeling_pb2.StartLabelJobRequest(**values)

        code, details = await _code(stub.StartLabelJob(request(model_connection="dashscope"), timeout=5))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith(
            "connection 'dashscope' is a dashscope_embedding connection, which cannot label images"
        )
        code, details = await _code(stub.StartLabelJob(request(model_connection="nowhere"), timeout=5))
        assert code == grpc.StatusCode.NOT_FOUND
        assert "unknown model connection 'nowhere'" in details

        started = (await stub.StartLabelJob(request(model_connection="qwen-stored"), timeout=5)).job
        assert started.model_connection == "qwen-stored"
        failed = await helpers.wait_for_job(stub, started.job.id, TERMINAL)
        assert failed.job.state == common_pb2.JOB_STATE_FAILED
        assert "HTTP 401" in failed.job.error
        assert "model connection 'qwen-stored' refused the call" in failed.job.error

        # The key is fixed through the store (as UpdateConnection does); resuming reads it again.
        await connections.replace_secret(qwen_id, api_key)
        await stub.ResumeLabelJob(labeling_pb2.ResumeLabelJobRequest(job_id=started.job.id), timeout=5)
        done = await helpers.wait_for_job(stub, started.job.id, TERMINAL)
        assert done.job.state == common_pb2.JOB_STATE_SUCCEEDED, done.job.error
        assert done.counts.files_labeled == 3
        rows = await db_pool.fetch("SELECT file_id, tag, model FROM file_tags WHERE source = 'ai'")
        by_file = {str(r["file_id"]): r for r in rows if r["tag"] in {"red", "green", "blue"}}
        assert {fid: r["tag"] for fid, r in by_file.items()} == {
            fid: colour for fid, (_, _, colour) in seeded.files.items()
        }
        assert {r["model"] for r in rows} == {"qwen-vl-max"}
        assert {c.status for c in fake_vlm.calls} == {401, 200}

        # A dataset's labeling settings may name the stored connection; jobs then use it by default.
        await db_pool.execute(
            "INSERT INTO dataset_labeling_settings (dataset_id, definition_id, model_connection) "
            "VALUES ($1, $2, 'qwen-stored')",
            uuid.UUID(seeded.dataset_id),
            uuid.UUID(definition.id),
        )
        by_dataset = (await stub.StartLabelJob(request(), timeout=5)).job
        assert by_dataset.model_connection == "qwen-stored"
        again = await helpers.wait_for_job(stub, by_dataset.job.id, TERMINAL)
        assert (again.job.state, again.counts.files_labeled) == (common_pb2.JOB_STATE_SUCCEEDED, 3)

        everything = [*tagger.log_lines, failed.job.error, str(failed), str(done), str(again)]
        assert any("label_job_finished" in line for line in tagger.log_lines), "the logs were captured"
        for text in everything:
            assert api_key not in text
            assert WRONG_KEY not in text


async def test_the_registry_maps_stored_kinds_and_rereads_changed_connections(db_pool: Any) -> None:
    settings = ConnectionSettings(secret_key=SecretStr(Fernet.generate_key().decode()))
    connections = StoredConnections(db_pool, settings)
    qwen_id = await connections.create(
        "qwen",
        ConnectionKind.OPENAI_CHAT,
        {"base_url": "http://127.0.0.1:9/v1", "model": "qwen-vl-plus"},
        "k1",
    )
    await connections.create("offline-stored", ConnectionKind.OFFLINE_DEFAULT, {})
    await connections.create("vectors", ConnectionKind.MILVUS, {"uri": "http://127.0.0.1:19530"})
    loaded: list[str] = []

    read_stored = stored_connection_loader(db_pool, settings)

    async def load(name: str) -> ResolvedConnection:
        loaded.append(name)
        return await read_stored(name)

    template = ZeroShotConnection(embedder_address="embedder:7053", threshold=0.5)
    registry = ModelRegistry(
        {"offline": ZeroShotConnection()},
        default="offline",
        stored=load,
        offline_template=template,
        refresh_s=3600,
    )
    try:
        qwen = await registry.get("qwen")
        assert isinstance(qwen, OpenAIChatModel)
        assert qwen.model_id == "qwen-vl-plus"
        assert await registry.get("qwen") is qwen  # shared: one limiter per connection
        assert loaded == ["qwen"]  # read once within refresh_s

        offline = await registry.get("offline-stored")
        assert isinstance(offline, ZeroShotTagger)
        assert offline.model_id == template.model_id
        assert await registry.resolve("", "") == "offline"  # configured names never touch the store
        assert "offline" not in loaded

        # A changed key makes a new model (the old one closes with the registry); an unchanged one does not.
        assert await registry.get("qwen", fresh=True) is qwen
        await connections.replace_secret(qwen_id, "k2")
        assert await registry.get("qwen", fresh=True) is not qwen

        with pytest.raises(FailedPrecondition, match="'vectors' is a milvus connection, which cannot label"):
            await registry.resolve("vectors")
        with pytest.raises(NotFound, match="unknown model connection 'gone'"):
            await registry.get("gone")
    finally:
        await registry.close()

    # A tagger whose key differs from the one that sealed the secret says so, without the secret.
    other_key = ConnectionSettings(secret_key=SecretStr(Fernet.generate_key().decode()))
    mismatched = ModelRegistry({}, default="qwen", stored=stored_connection_loader(db_pool, other_key))
    with pytest.raises(FailedPrecondition, match=r"model connection 'qwen': .*cannot be decrypted") as info:
        await mismatched.get("qwen")
    assert "k2" not in str(info.value)
