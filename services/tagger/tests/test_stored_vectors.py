"""The zero-shot tagger scores the image vectors the embedder stored (real PostgreSQL + pgvector).

The stored vectors deliberately disagree with the images (a red image stored
as "cat"), so a tag shows which vector was scored: the stored one when it is
current for the file's content, the image's (EmbedImage of the double) when not.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiokafka import AIOKafkaProducer
from cryptography.fernet import Fernet
from pydantic import SecretStr
from pymilvus import AsyncMilvusClient

from viewfinder.v1 import common_pb2, events_pb2, labeling_pb2
from viewfinder_common.connections.models import ConnectionKind, ConnectionSpec, validate_spec
from viewfinder_common.connections.settings import ConnectionSettings
from viewfinder_common.connections.store import ConnectionStore
from viewfinder_common.events import encode_event
from viewfinder_common.settings import KafkaSettings, MilvusSettings
from viewfinder_common.testing.polling import eventually
from viewfinder_common.vectorstore import INDEX_PREFIX, IndexSchema, VectorField, VectorRow, VectorStore
from viewfinder_common.vectorstore.factory import VectorStoreSettings, stored_vector_store_opener
from viewfinder_common.vectorstore.milvus import MilvusVectorStore
from viewfinder_common.vectorstore.pgvector import PgVectorStore
from viewfinder_common.vectorstore.registry import VectorStoreRegistry
from viewfinder_tagger.adapters.stored_vectors import StoredVectorScorer
from viewfinder_tagger.config import ZeroShotConnection
from viewfinder_tagger.domain.definitions import DefinitionContent, TagSpec
from viewfinder_tagger.domain.models import LabelTarget

TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
# Tags whose texts the EmbedService double embeds along its axes (red, green, blue, cat).
CONTENT = DefinitionContent(
    description="colours and cats",
    guide_prompt="",
    tags=(
        TagSpec("red", "mostly red"),
        TagSpec("green", "mostly green"),
        TagSpec("blue", "mostly blue"),
        TagSpec("cat", "a cat"),
    ),
)
AXES = {
    "red": [1.0, 0.0, 0.0, 0.0],
    "green": [0.0, 1.0, 0.0, 0.0],
    "blue": [0.0, 0.0, 1.0, 0.0],
    "cat": [0.0, 0.0, 0.0, 1.0],
}


async def store_vectors(
    pool: Any,
    seeded: Any,
    vectors: dict[str, tuple[str, list[float]]],
    *,
    store: VectorStore | None = None,
    connection: str = "pgvector",
    active: bool = True,
) -> str:
    """What the embedder leaves behind: an active index, its rows, and the ETags they were computed from.

    ``vectors``: file id -> (etag recorded, semantic vector); the rows go to ``store`` (default
    pgvector on the catalogue) and the index records ``connection`` as its vector store. At most
    one index of a dataset is ``active``; a scorer names another by index name.
    """
    index = f"ix_{uuid.uuid4().hex[:12]}"
    store = store or PgVectorStore(pool)
    await store.ensure_index(IndexSchema(index, [VectorField("visual", 2), VectorField("semantic", 4)]))
    await pool.execute(
        """
        INSERT INTO embedding_indexes (name, dataset_id, model_connection, model_id, model_version,
                                       vector_store_connection, vector_fields, active)
        VALUES ($1, $2, 'offline', 'test-model', '1', $3, $4::jsonb, $5)
        """,
        index,
        uuid.UUID(seeded.dataset_id),
        connection,
        json.dumps([{"name": "visual", "dimension": 2}, {"name": "semantic", "dimension": 4}]),
        active,
    )
    await store.upsert(
        index,
        [
            VectorRow(file_id, seeded.version_id, etag, {"visual": [1.0, 2.0], "semantic": vector})
            for file_id, (etag, vector) in vectors.items()
        ],
    )
    await pool.executemany(
        "INSERT INTO embedding_index_files (index_name, file_id, dataset_version_id, etag, model_version) "
        "VALUES ($1, $2, $3, $4, '1')",
        [
            (index, uuid.UUID(file_id), uuid.UUID(seeded.version_id), etag)
            for file_id, (etag, _) in vectors.items()
        ],
    )
    return index


@pytest.fixture
def connection_settings() -> ConnectionSettings:
    """A fresh key for the connections a test stores."""
    return ConnectionSettings(secret_key=SecretStr(Fernet.generate_key().decode()))


async def store_connection(pool: Any, name: str, kind: ConnectionKind, config: dict[str, Any]) -> None:
    """A connection as ConnectionService stores it (no secret: the local servers need none)."""
    spec = validate_spec(ConnectionSpec(name, kind, config), None)
    await ConnectionStore(pool).create(spec, secret_ciphertext=None, secret_reference=None)


def catalogue_as_pgvector_connection(catalogue_db_url: str) -> dict[str, Any]:
    """The test's catalogue database, described as a stored pgvector connection."""
    url = urlsplit(catalogue_db_url)
    return {"host": url.hostname, "port": url.port, "database": url.path.lstrip("/"), "user": url.username}


async def ai_tags(pool: Any) -> dict[str, set[str]]:
    """file id -> its AI tags."""
    tags: dict[str, set[str]] = {}
    for row in await pool.fetch("SELECT file_id, tag FROM file_tags WHERE source = 'ai'"):
        tags.setdefault(str(row["file_id"]), set()).add(row["tag"])
    return tags


async def etags(pool: Any) -> dict[str, str]:
    """file id -> its current ETag in the catalogue."""
    return {str(r["id"]): r["etag"] for r in await pool.fetch("SELECT id, etag FROM files")}


def connection(address: str) -> ZeroShotConnection:
    """The offline tagger on the double; a high threshold so that only the axis a vector points along scores."""
    return ZeroShotConnection(embedder_address=address, threshold=0.9, margin=None)


async def full_label_job(tagger: Any, helpers: Any, dataset_version_id: str) -> Any:
    """Creates the colours-and-cats definition and runs a FULL label job of the version to its end."""
    definition = (
        await tagger.stub.CreateTagDefinition(helpers.definition_request("cats", CONTENT), timeout=5)
    ).tag_definition
    started = await tagger.stub.StartLabelJob(
        labeling_pb2.StartLabelJobRequest(
            dataset_version_id=dataset_version_id,
            tag_definition_id=definition.id,
            mode=common_pb2.JOB_MODE_FULL,
        ),
        timeout=5,
    )
    return await helpers.wait_for_job(tagger.stub, started.job.job.id, TERMINAL)


async def test_a_label_job_scores_current_stored_vectors_and_embeds_only_the_others(
    start_tagger: Any, seeder: Any, embed_service: tuple[Any, str], helpers: Any, db_pool: Any
) -> None:
    servicer, address = embed_service
    seeded = await seeder.version(["red", "green", "blue"])
    by_colour = {colour: fid for fid, (_, _, colour) in seeded.files.items()}
    current = await etags(db_pool)
    await store_vectors(
        db_pool,
        seeded,
        {
            by_colour["red"]: (current[by_colour["red"]], AXES["cat"]),
            by_colour["green"]: (current[by_colour["green"]], AXES["blue"]),
            # Embedded from content the file no longer has: not to be used.
            by_colour["blue"]: ("an-older-etag", AXES["cat"]),
        },
    )
    async with start_tagger(connections={"offline": connection(address)}) as tagger:
        job = await full_label_job(tagger, helpers, seeded.version_id)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
        assert job.counts.files_labeled == 3
    assert await ai_tags(db_pool) == {
        by_colour["red"]: {"cat"},  # the stored vector, not the red pixels
        by_colour["green"]: {"blue"},
        by_colour["blue"]: {"blue"},  # stale stored vector: the image was embedded instead
    }
    assert servicer.image_calls == 1


async def test_automatic_labeling_with_stored_vectors_follows_file_embedded(
    start_tagger: Any, seeder: Any, embed_service: tuple[Any, str], helpers: Any, db_pool: Any
) -> None:
    servicer, address = embed_service
    seeded = await seeder.version(["red"])
    (file_id,) = seeded.files
    etag = (await etags(db_pool))[file_id]
    index = await store_vectors(db_pool, seeded, {file_id: (etag, AXES["cat"])})
    async with start_tagger(connections={"offline": connection(address)}, auto_labeling=True) as tagger:
        definition = (
            await tagger.stub.CreateTagDefinition(helpers.definition_request("cats", CONTENT), timeout=5)
        ).tag_definition
        await db_pool.execute(
            "INSERT INTO dataset_labeling_settings (dataset_id, automatic, definition_id) VALUES ($1, true, $2)",
            uuid.UUID(seeded.dataset_id),
            uuid.UUID(definition.id),
        )
        key, _, _ = seeded.files[file_id]
        common = {
            "dataset_id": seeded.dataset_id,
            "dataset_version_id": seeded.version_id,
            "file_id": file_id,
            "uri": f"s3://{seeded.bucket}/{key}",
            "bucket": seeded.bucket,
            "key": key,
            "etag": etag,
            "change_type": events_pb2.CHANGE_TYPE_UPSERT,
        }
        kafka = tagger.settings.kafka
        producer = AIOKafkaProducer(bootstrap_servers=KafkaSettings().bootstrap_servers, acks="all")
        await producer.start()
        try:
            discovered = events_pb2.FileDiscovered(event_id=uuid.uuid4().hex, **common)
            await producer.send_and_wait(
                kafka.topic_file_discovered, encode_event(discovered), key=file_id.encode()
            )

            # The discovered event is left to file-embedded: nothing fetched, embedded or labeled.
            async def skipped() -> bool:
                return any("auto_label_other_topic" in line and file_id in line for line in tagger.log_lines)

            await eventually(skipped, "skipped", timeout_s=60, interval_s=0.1)
            assert await ai_tags(db_pool) == {}
            assert servicer.image_calls == 0

            embedded = events_pb2.FileEmbedded(
                event_id=uuid.uuid4().hex, index_name=index, vector_fields=["visual", "semantic"], **common
            )
            await producer.send_and_wait(
                kafka.topic_file_embedded, encode_event(embedded), key=file_id.encode()
            )

            async def labeled() -> bool:
                return file_id in await ai_tags(db_pool)

            await eventually(labeled, "labeled", timeout_s=60, interval_s=0.1)
        finally:
            await producer.stop()
    assert await ai_tags(db_pool) == {file_id: {"cat"}}  # scored from the stored vector
    assert servicer.image_calls == 0


async def test_the_scorer_answers_only_for_a_current_vector_in_a_store_it_reaches(
    seeder: Any, db_pool: Any, catalogue_db_url: str, connection_settings: ConnectionSettings
) -> None:
    seeded = await seeder.version(["red", "green"])
    red, green = seeded.files
    current = await etags(db_pool)
    await store_vectors(db_pool, seeded, {red: (current[red], [0.6, 0.8, 0.0, 0.0])})
    target = LabelTarget(seeded.dataset_id, red, "s3://b/k", seeded.version_id, current[red])
    texts = [AXES["red"], AXES["green"], AXES["cat"]]
    settings = VectorStoreSettings()
    opener = stored_vector_store_opener(db_pool, connection_settings, settings)
    stores = VectorStoreRegistry(settings, db_pool, stored=opener)
    scorer = StoredVectorScorer(db_pool, stores)
    try:
        scores = await scorer.scores(target, index_name="", field="semantic", text_vectors=texts)
        assert scores == pytest.approx([0.6, 0.8, 0.0], abs=1e-6)
        # No vector of the file's current content, no field of that name, no index of that name:
        # None, and the tagger embeds the image instead.
        stale = LabelTarget(seeded.dataset_id, red, "s3://b/k", seeded.version_id, "other-etag")
        assert await scorer.scores(stale, index_name="", field="semantic", text_vectors=texts) is None
        assert await scorer.scores(target, index_name="", field="colour", text_vectors=texts) is None
        assert (
            await scorer.scores(target, index_name="ix_absent", field="semantic", text_vectors=texts) is None
        )

        # An index in a pgvector database stored through ConnectionService: read there.
        await store_connection(
            db_pool,
            "archive-pg",
            ConnectionKind.PGVECTOR,
            catalogue_as_pgvector_connection(catalogue_db_url),
        )
        archived = await store_vectors(
            db_pool,
            seeded,
            {green: (current[green], [0.0, 0.6, 0.0, 0.8])},
            connection="archive-pg",
            active=False,
        )
        in_archive = LabelTarget(seeded.dataset_id, green, "s3://b/k", seeded.version_id, current[green])
        scores = await scorer.scores(in_archive, index_name=archived, field="semantic", text_vectors=texts)
        assert scores == pytest.approx([0.0, 0.6, 0.8], abs=1e-6)
        # A store that cannot be opened (its connection deleted, or not a vector store): None.
        await store_connection(db_pool, "offline-model", ConnectionKind.OFFLINE_DEFAULT, {})
        for gone in ("deleted-connection", "offline-model"):
            await db_pool.execute(
                "UPDATE embedding_indexes SET vector_store_connection = $1 WHERE name = $2", gone, archived
            )
            assert (
                await scorer.scores(in_archive, index_name=archived, field="semantic", text_vectors=texts)
                is None
            )
    finally:
        await stores.close()


async def test_an_index_in_a_stored_milvus_connection_is_labeled_without_embedding_images(
    start_tagger: Any,
    seeder: Any,
    embed_service: tuple[Any, str],
    helpers: Any,
    db_pool: Any,
    connection_settings: ConnectionSettings,
) -> None:
    """The tagger's own store is pgvector; the dataset's index lives in a Milvus stored by name."""
    servicer, address = embed_service
    seeded = await seeder.version(["red", "green"])
    by_colour = {colour: fid for fid, (_, _, colour) in seeded.files.items()}
    current = await etags(db_pool)
    milvus = MilvusSettings()
    await store_connection(db_pool, "milvus-archive", ConnectionKind.MILVUS, {"uri": milvus.uri})
    writer = MilvusVectorStore(milvus)
    index = ""
    try:
        index = await store_vectors(
            db_pool,
            seeded,
            {
                by_colour["red"]: (current[by_colour["red"]], AXES["cat"]),
                by_colour["green"]: (current[by_colour["green"]], AXES["blue"]),
            },
            store=writer,
            connection="milvus-archive",
        )
        async with start_tagger(
            connections={"offline": connection(address)}, connection_store=connection_settings
        ) as tagger:
            assert tagger.settings.vectorstore.kind == "pgvector"
            job = await full_label_job(tagger, helpers, seeded.version_id)
            assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
            assert job.counts.files_labeled == 2
        assert await ai_tags(db_pool) == {by_colour["red"]: {"cat"}, by_colour["green"]: {"blue"}}
        assert servicer.image_calls == 0
    finally:
        await writer.close()
        if index:
            client = AsyncMilvusClient(uri=milvus.uri, dedicated=True)
            try:
                await client.drop_collection(INDEX_PREFIX + index)
            finally:
                await client.close()
