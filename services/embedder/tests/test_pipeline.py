"""The file-discovered pipeline on real servers, for both vector stores.

Discovered files end up as exactly one index row each; a poison image goes to
the dead-letter topic with its reason while the rest are embedded; a
redelivered event changes nothing; a DELETE removes the row.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pymilvus import MilvusClient

from viewfinder.v1 import events_pb2
from viewfinder_common.kafka import DLQ_ERROR_TYPE, DLQ_REASON
from viewfinder_common.settings import DatabaseSettings, MilvusSettings
from viewfinder_common.vectorstore import VectorFilter, VectorQuery, VectorStore
from viewfinder_common.vectorstore.factory import VectorStoreSettings, create_vector_store
from viewfinder_embedder.domain.indexes import default_index_name

pytestmark = pytest.mark.stack


def _headers(record: Any) -> dict[str, str]:
    return {key: value.decode() for key, value in record.headers or []}


def _embedded(records: list[Any]) -> list[events_pb2.FileEmbedded]:
    events = []
    for record in records:
        event = events_pb2.FileEmbedded()
        event.ParseFromString(record.value)
        events.append(event)
    return events


@pytest.fixture
async def open_store(catalogue: Any) -> Any:
    """``await open_store(kind)``: a vector store client of the test's database / the stack's Milvus."""
    opened: list[tuple[str, VectorStore]] = []

    async def open_(kind: str) -> VectorStore:
        store = await create_vector_store(
            VectorStoreSettings(kind=kind), db=DatabaseSettings(url=catalogue.url)
        )
        opened.append((kind, store))
        return store

    yield open_
    for kind, store in opened:
        await store.close()
        if kind == "milvus":  # the Milvus Lite server is shared: leave no collection behind
            client = MilvusClient(uri=MilvusSettings().uri)
            name = f"vf_index_{default_index_name(catalogue.dataset_id)}"
            if client.has_collection(name):
                client.drop_collection(name)
            client.close()


@pytest.mark.parametrize("store_kind", ["pgvector", "milvus"])
async def test_discovered_files_are_embedded_once_poison_is_dead_lettered_and_deletes_remove(
    store_kind: str, catalogue: Any, bucket: Any, start_embedder: Any, open_store: Any, helpers: Any
) -> None:
    keys = [f"img/{n}.{'png' if n % 2 else 'jpg'}" for n in range(5)]
    etags = [
        await bucket(key, helpers.image_bytes(n, "PNG" if n % 2 else "JPEG")) for n, key in enumerate(keys)
    ]
    poison_etag = await bucket("img/poison.png", helpers.poison)
    file_ids = await catalogue.add_files([*zip(keys, etags, strict=True), ("img/poison.png", poison_etag)])
    events = [
        helpers.discovered(catalogue, file_id, key, etag)
        for file_id, key, etag in zip(file_ids, [*keys, "img/poison.png"], [*etags, poison_etag], strict=True)
    ]
    index = default_index_name(catalogue.dataset_id)

    async with start_embedder(store=store_kind) as embedder:
        await embedder.publish(events)
        embedded = _embedded(await helpers.read_topic(embedder.embedded_topic, 5, timeout_s=120))
        dead = await helpers.read_topic(embedder.dlq_topic, 1)

        assert sorted(e.file_id for e in embedded) == sorted(file_ids[:5])
        assert {e.index_name for e in embedded} == {index}
        assert all(list(e.vector_fields) == ["visual", "semantic"] for e in embedded)
        assert all(e.change_type == events_pb2.CHANGE_TYPE_UPSERT and e.model_id for e in embedded)
        assert len(dead) == 1
        assert dead[0].value == events[5].SerializeToString(deterministic=True)  # the original bytes
        assert dead[0].key == file_ids[5].encode()
        assert "cannot decode" in _headers(dead[0])[DLQ_REASON]
        assert _headers(dead[0])[DLQ_ERROR_TYPE] == "ImageNotEmbeddable"

        store = await open_store(store_kind)
        in_version = VectorFilter(dataset_version_id=catalogue.version_id)
        assert await store.count(index, in_version) == 5
        recorded = await catalogue.fetch(
            "SELECT file_id::text AS file_id, etag, embedded_at FROM embedding_index_files ORDER BY file_id"
        )
        assert sorted(r["file_id"] for r in recorded) == sorted(file_ids[:5])
        first_times = {r["file_id"]: r["embedded_at"] for r in recorded}

        # The same events again (as after a consumer crash before its commit): nothing changes.
        await embedder.publish(events)
        again = _embedded(await helpers.read_topic(embedder.embedded_topic, 10, timeout_s=90))
        assert len(again) == 10  # re-announced (at-least-once), not re-embedded
        assert len(await helpers.read_topic(embedder.dlq_topic, 2)) == 2
        assert await store.count(index, in_version) == 5
        recorded = await catalogue.fetch(
            "SELECT file_id::text AS file_id, embedded_at FROM embedding_index_files"
        )
        assert {r["file_id"]: r["embedded_at"] for r in recorded} == first_times

        # A file's vectors answer a query with that file first.
        own = await store.search(
            index,
            VectorQuery(vector_field="visual", vector=[1.0] * 1280, top_k=5, filter=in_version, exact=True),
        )
        assert len(own) == 5

        # DELETE removes the row.
        await embedder.publish(
            [helpers.discovered(catalogue, file_ids[0], keys[0], "", events_pb2.CHANGE_TYPE_DELETE)]
        )
        after_delete = _embedded(await helpers.read_topic(embedder.embedded_topic, 11, timeout_s=90))
        deletes = [e for e in after_delete if e.change_type == events_pb2.CHANGE_TYPE_DELETE]
        assert [e.file_id for e in deletes] == [file_ids[0]]
        assert list(deletes[0].vector_fields) == []
        assert await store.count(index, in_version) == 4
        hits = await store.search(
            index,
            VectorQuery(vector_field="semantic", vector=[1.0] * 384, top_k=10, filter=in_version, exact=True),
        )
        assert file_ids[0] not in {hit.file_id for hit in hits}
        rows = await catalogue.fetch("SELECT file_id::text AS file_id FROM embedding_index_files")
        assert sorted(r["file_id"] for r in rows) == sorted(file_ids[1:5])


class _FailureLog(logging.Handler):
    """Counts the service's ``embed_batch_failed`` log records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.failures = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "embed_batch_failed" in str(record.msg):
            self.failures += 1


async def test_a_batch_whose_upsert_fails_is_not_committed_and_is_delivered_again(
    catalogue: Any, bucket: Any, start_embedder: Any, open_store: Any, helpers: Any
) -> None:
    keys = [f"r/{n}.png" for n in range(4)]
    etags = [await bucket(key, helpers.image_bytes(300 + n)) for n, key in enumerate(keys)]
    file_ids = await catalogue.add_files(list(zip(keys, etags, strict=True)))
    events = [helpers.discovered(catalogue, f, k, e) for f, k, e in zip(file_ids, keys, etags, strict=True)]
    index = default_index_name(catalogue.dataset_id)
    table = f"vf_index_{index}"

    async with start_embedder(store="pgvector") as embedder:
        await embedder.publish(events[:1])  # creates the index and its table
        await helpers.read_topic(embedder.embedded_topic, 1, timeout_s=120)
        failures = _FailureLog()
        logging.getLogger().addHandler(failures)
        try:
            # The vector store breaks for a while: every write to the index is refused.
            await catalogue.fetch(f'ALTER TABLE "{table}" ADD CONSTRAINT refuse CHECK (false) NOT VALID')
            await embedder.publish(events[1:])

            async def failed_twice() -> bool:
                return failures.failures >= 2  # delivered, failed, delivered again, failed again

            await helpers.eventually(failed_twice, "repeated delivery of the failing batch", timeout_s=60)
            await catalogue.fetch(f'ALTER TABLE "{table}" DROP CONSTRAINT refuse')
            embedded = await helpers.read_topic(embedder.embedded_topic, 4, timeout_s=60)
        finally:
            logging.getLogger().removeHandler(failures)

        assert len(embedded) == 4
        assert await helpers.read_topic(embedder.dlq_topic, 0, timeout_s=2) == []  # nothing given up on
        store = await open_store("pgvector")
        assert await store.count(index, VectorFilter(dataset_version_id=catalogue.version_id)) == 4
