"""The zero-shot tagger scores the image vectors the embedder stored (real PostgreSQL + pgvector).

The stored vectors deliberately disagree with the images (a red image stored
as "cat"), so a tag shows which vector was scored: the stored one when it is
current for the file's content, the image's (EmbedImage of the double) when not.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from viewfinder.v1 import common_pb2, events_pb2, labeling_pb2
from viewfinder_common.events import encode_event
from viewfinder_common.settings import KafkaSettings
from viewfinder_common.vectorstore import IndexSchema, VectorField, VectorRow
from viewfinder_common.vectorstore.pgvector import PgVectorStore
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


async def store_vectors(pool: Any, seeded: Any, vectors: dict[str, tuple[str, list[float]]]) -> str:
    """What the embedder leaves behind: an active index, its rows, and the ETags they were computed from.

    ``vectors``: file id -> (etag recorded, semantic vector).
    """
    index = f"ix_{uuid.uuid4().hex[:12]}"
    store = PgVectorStore(pool)
    await store.ensure_index(IndexSchema(index, [VectorField("visual", 2), VectorField("semantic", 4)]))
    await pool.execute(
        """
        INSERT INTO embedding_indexes (name, dataset_id, model_connection, model_id, model_version,
                                       vector_store_connection, vector_fields, active)
        VALUES ($1, $2, 'offline', 'test-model', '1', 'pgvector', $3::jsonb, true)
        """,
        index,
        uuid.UUID(seeded.dataset_id),
        json.dumps([{"name": "visual", "dimension": 2}, {"name": "semantic", "dimension": 4}]),
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
        definition = (
            await tagger.stub.CreateTagDefinition(helpers.definition_request("cats", CONTENT), timeout=5)
        ).tag_definition
        started = await tagger.stub.StartLabelJob(
            labeling_pb2.StartLabelJobRequest(
                dataset_version_id=seeded.version_id,
                tag_definition_id=definition.id,
                mode=common_pb2.JOB_MODE_FULL,
            ),
            timeout=5,
        )
        job = await helpers.wait_for_job(tagger.stub, started.job.job.id, TERMINAL)
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

            await _eventually(skipped)
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

            await _eventually(labeled)
        finally:
            await producer.stop()
    assert await ai_tags(db_pool) == {file_id: {"cat"}}  # scored from the stored vector
    assert servicer.image_calls == 0


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    """Polls ``check`` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{check.__name__} did not come true in {timeout_s} s"
        await asyncio.sleep(0.1)


async def test_the_scorer_answers_only_for_a_current_vector_in_a_store_it_reaches(
    seeder: Any, db_pool: Any
) -> None:
    seeded = await seeder.version(["red"])
    (file_id,) = seeded.files
    etag = (await etags(db_pool))[file_id]
    await store_vectors(db_pool, seeded, {file_id: (etag, [0.6, 0.8, 0.0, 0.0])})
    target = LabelTarget(seeded.dataset_id, file_id, "s3://b/k", seeded.version_id, etag)
    texts = [AXES["red"], AXES["green"], AXES["cat"]]
    scorer = StoredVectorScorer(db_pool, PgVectorStore(db_pool), store_kind="pgvector")

    scores = await scorer.scores(target, index_name="", field="semantic", text_vectors=texts)
    assert scores == pytest.approx([0.6, 0.8, 0.0], abs=1e-6)
    # No vector of the file's current content, no field of that name, no index of that name:
    # None, and the tagger embeds the image instead.
    stale = LabelTarget(seeded.dataset_id, file_id, "s3://b/k", seeded.version_id, "other-etag")
    assert await scorer.scores(stale, index_name="", field="semantic", text_vectors=texts) is None
    assert await scorer.scores(target, index_name="", field="colour", text_vectors=texts) is None
    assert await scorer.scores(target, index_name="ix_absent", field="semantic", text_vectors=texts) is None
    # An index in a store this process does not reach (the tagger is configured for another kind).
    elsewhere = StoredVectorScorer(db_pool, PgVectorStore(db_pool), store_kind="milvus")
    assert await elsewhere.scores(target, index_name="", field="semantic", text_vectors=texts) is None
