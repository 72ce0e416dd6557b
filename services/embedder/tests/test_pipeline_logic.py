"""The pipeline's decisions, with in-memory stand-ins for the catalogue, bucket, decoder, model and store."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from viewfinder.v1 import events_pb2
from viewfinder_common.vectorstore import (
    IndexNotFound,
    IndexSchema,
    VectorFilter,
    VectorHit,
    VectorQuery,
    VectorRow,
)
from viewfinder_embedder.domain.decode import DecodedImage, DecodeFailure, DecodeResult
from viewfinder_embedder.domain.file_embedder import FileEmbedder
from viewfinder_embedder.domain.indexes import IndexDirectory
from viewfinder_embedder.domain.model import ModelField, ModelIdentity, QueryKind, VectorMatrix
from viewfinder_embedder.domain.pipeline import DiscoveredPipeline, IncomingRecord
from viewfinder_embedder.domain.ports import (
    CurrentVectors,
    DatasetIndexing,
    DeadLetter,
    EmbeddedFile,
    IndexRecord,
    IndexState,
    ObjectUnavailable,
)

DATASET = str(uuid.uuid4())
VERSION = str(uuid.uuid4())


class FakeModel:
    identity = ModelIdentity("fake", "1")
    fields = (ModelField("v", 2, frozenset({QueryKind.IMAGE, QueryKind.TEXT})),)
    image_size = 4

    async def embed_images(self, images: Sequence[Any]) -> Mapping[str, VectorMatrix]:
        return {"v": np.ones((len(images), 2), np.float32) / np.sqrt(2)}

    async def embed_texts(self, texts: Sequence[str]) -> Mapping[str, VectorMatrix]:
        return {"v": np.ones((len(texts), 2), np.float32)}

    async def close(self) -> None:
        pass


class Models:
    def has_connection(self, name: str) -> bool:
        return name == "offline"

    async def model(self, connection: str) -> FakeModel:
        return FakeModel()


class Store:
    def __init__(self) -> None:
        self.rows: dict[str, VectorRow] = {}
        self.upserts = 0

    async def ensure_index(self, schema: IndexSchema) -> None:
        pass

    async def upsert(self, index: str, rows: Sequence[VectorRow]) -> None:
        self.upserts += 1
        self.rows.update({row.file_id: row for row in rows})

    async def delete(self, index: str, file_ids: Sequence[str]) -> None:
        for file_id in file_ids:
            self.rows.pop(file_id, None)

    async def search(self, index: str, query: VectorQuery) -> list[VectorHit]:
        return []

    async def count(self, index: str, filter: VectorFilter | None = None) -> int:
        return len(self.rows)

    async def close(self) -> None:
        pass


class Stores:
    def __init__(self) -> None:
        self.only = Store()

    def has_connection(self, name: str) -> bool:
        return name == "pgvector"

    async def store(self, connection: str) -> Store:
        return self.only


class Catalogue:
    def __init__(self) -> None:
        self.indexes: dict[str, IndexRecord] = {}
        self.files: dict[str, CurrentVectors] = {}

    async def dataset_indexing(self, dataset_id: str) -> DatasetIndexing | None:
        return DatasetIndexing(dataset_id) if dataset_id == DATASET else None

    async def active_index(self, dataset_id: str) -> IndexRecord | None:
        return next((i for i in self.indexes.values() if i.dataset_id == dataset_id and i.active), None)

    async def get_index(self, name: str) -> IndexRecord | None:
        return self.indexes.get(name)

    async def list_indexes(self, dataset_id: str) -> list[IndexRecord]:
        return [i for i in self.indexes.values() if i.dataset_id == dataset_id]

    async def create_index(self, index: IndexRecord) -> IndexRecord:
        return self.indexes.setdefault(index.name, index)

    async def activate_index(self, name: str) -> None:
        from dataclasses import replace  # noqa: PLC0415

        self.indexes[name] = replace(self.indexes[name], active=True)

    async def set_index_state(self, name: str, state: IndexState) -> None:
        pass

    async def current_vectors(self, index: str, file_ids: Sequence[str]) -> Mapping[str, CurrentVectors]:
        return {f: self.files[f] for f in file_ids if f in self.files}

    async def record_embedded(
        self, index: str, files: Sequence[EmbeddedFile], model_version: str, job_id: str | None
    ) -> None:
        self.files.update({f.file_id: CurrentVectors(f.etag, model_version) for f in files})

    async def forget(self, index: str, file_ids: Sequence[str]) -> None:
        for file_id in file_ids:
            self.files.pop(file_id, None)


class Reader:
    async def read(self, bucket: str, key: str) -> bytes:
        if key == "gone":
            raise ObjectUnavailable("cannot read s3://b/gone: NoSuchKey")
        return key.encode()


class Decoder:
    async def decode(self, data: bytes, size: int) -> DecodeResult:
        if data == b"bad":
            return DecodeFailure("not an image format Pillow can read")
        return DecodedImage(np.zeros((size, size, 3), np.uint8), "PNG", size, size)


class Sink:
    def __init__(self) -> None:
        self.embedded: list[events_pb2.FileEmbedded] = []
        self.letters: list[DeadLetter] = []

    async def publish_embedded(self, events: Sequence[events_pb2.FileEmbedded]) -> None:
        self.embedded.extend(events)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


def record(
    key: str, change: int = events_pb2.CHANGE_TYPE_UPSERT, *, file_id: str = "", dataset: str = DATASET
) -> IncomingRecord:
    event = events_pb2.FileDiscovered(
        dataset_id=dataset,
        dataset_version_id=VERSION,
        file_id=file_id or str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        bucket="b",
        key=key,
        etag="e1",
        change_type=change,  # type: ignore[arg-type]
    )
    return IncomingRecord(event.SerializeToString(), key=key.encode(), partition=0, offset=1)


def pipeline() -> tuple[DiscoveredPipeline, Sink, Stores, Catalogue]:
    catalogue, stores, sink = Catalogue(), Stores(), Sink()
    directory = IndexDirectory(
        catalogue, Models(), stores, default_model_connection="offline", default_store_connection="pgvector"
    )
    return (
        DiscoveredPipeline(directory, FileEmbedder(Reader(), Decoder(), batch_size=2), sink, concurrency=4),
        sink,
        stores,
        catalogue,
    )


async def test_bad_records_and_bad_files_are_dead_letters_and_the_rest_is_embedded() -> None:
    processor, sink, stores, _ = pipeline()
    report = await processor.process(
        [
            record("a"),
            record("b"),
            record("c"),
            IncomingRecord(b"\xff\xfe not protobuf"),
            record("x", events_pb2.CHANGE_TYPE_UNSPECIFIED),
            record("bad"),
            record("gone"),
            record("u", dataset=str(uuid.uuid4())),
            record("n", file_id="not-a-uuid"),
        ]
    )
    assert (report.embedded, report.dead_lettered) == (3, 6)
    assert len(stores.only.rows) == 3
    reasons = " | ".join(letter.reason for letter in sink.letters)
    for fragment in (
        "not a valid viewfinder.v1.FileDiscovered",
        "no change type",
        "cannot decode s3://b/bad",
        "NoSuchKey",
        "does not exist",
        "must be UUIDs",
    ):
        assert fragment in reasons
    assert {e.key for e in sink.embedded} == {"a", "b", "c"}


async def test_last_event_of_a_file_wins_and_redelivery_is_skipped() -> None:
    processor, sink, stores, catalogue = pipeline()
    await processor.process([record("a"), record("b")])
    assert stores.only.upserts == 1
    # Redelivered: nothing re-embedded, but announced again (at-least-once).
    report = await processor.process([record("a"), record("b")])
    assert (report.embedded, report.skipped) == (0, 2)
    assert stores.only.upserts == 1
    assert len(sink.embedded) == 4
    # UPSERT then DELETE of one file in one batch: only the DELETE applies.
    report = await processor.process(
        [record("c"), record("c", events_pb2.CHANGE_TYPE_DELETE), record("a", events_pb2.CHANGE_TYPE_DELETE)]
    )
    assert (report.embedded, report.deleted) == (0, 2)
    assert list(stores.only.rows) == [str(uuid.uuid5(uuid.NAMESPACE_URL, "b"))]
    assert [e.change_type for e in sink.embedded[-2:]] == [events_pb2.CHANGE_TYPE_DELETE] * 2
    assert set(catalogue.files) == {str(uuid.uuid5(uuid.NAMESPACE_URL, "b"))}


async def test_a_vanished_index_fails_the_batch_and_is_created_again_on_redelivery() -> None:
    processor, sink, stores, _ = pipeline()
    ensured: list[str] = []
    real_upsert = stores.only.upsert

    async def ensure(schema: IndexSchema) -> None:
        ensured.append(schema.name)

    async def vanished(index: str, rows: Sequence[VectorRow]) -> None:
        stores.only.upsert = real_upsert  # type: ignore[method-assign]
        raise IndexNotFound(f"vector index {index!r} does not exist")

    stores.only.ensure_index = ensure  # type: ignore[method-assign]
    stores.only.upsert = vanished  # type: ignore[method-assign]
    with pytest.raises(IndexNotFound):
        await processor.process([record("a")])
    assert sink.letters == []  # an outage, not the files' fault
    report = await processor.process([record("a")])
    assert report.embedded == 1
    assert len(ensured) == 2  # checked again after it vanished
