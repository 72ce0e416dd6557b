"""The file-discovered pipeline: one consumed batch of events in, vectors and events out.

For a batch of ``FileDiscovered`` records:

1. decode each record; a malformed one goes to the dead-letter topic;
2. keep the last event per file (events of a file are ordered: a later
   DELETE overrides an earlier UPSERT of the same batch and vice versa);
3. DELETE: remove the file's vectors from every index of its dataset;
4. UPSERT: find the dataset's active index (created on first use); skip files
   whose vectors there were already computed from this ETag with this model
   version (a redelivered event changes nothing); fetch, decode and embed the
   others; upsert their rows and record them;
5. publish one ``FileEmbedded`` per applied file (also for skipped ones: a
   redelivery may follow a crash between the upsert and the publish, and
   consumers are idempotent).

Per-file problems (object gone, not decodable, model rejects it, unknown
dataset, index built with another model version) become dead letters with a
reason and the batch goes on. Failures of the vector store, the database,
the broker or the bucket endpoint raise, so the batch is not committed and is
delivered again.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from viewfinder.v1 import events_pb2
from viewfinder_common.errors import DomainError
from viewfinder_common.events import MalformedEvent, decode_event
from viewfinder_common.vectorstore import IndexNotFound, VectorRow
from viewfinder_embedder.domain.file_embedder import FileEmbedder, ImageSource
from viewfinder_embedder.domain.indexes import IndexDirectory
from viewfinder_embedder.domain.ports import DeadLetter, EmbeddedFile, IndexRecord

UPSERT = events_pb2.CHANGE_TYPE_UPSERT
DELETE = events_pb2.CHANGE_TYPE_DELETE


@dataclass(frozen=True)
class IncomingRecord:
    """One consumed Kafka record."""

    value: bytes
    key: bytes | None = None
    partition: int | None = None
    offset: int | None = None


class EventSink(Protocol):
    """Where the pipeline's output events go."""

    async def publish_embedded(self, events: Sequence[events_pb2.FileEmbedded]) -> None:
        """Publishes FileEmbedded events (keyed by file id), all acknowledged on return."""

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Publishes records the embedder gives up on, with their reasons."""


@dataclass
class BatchReport:
    """What one batch did."""

    embedded: int = 0
    skipped: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Discovered:
    record: IncomingRecord
    event: events_pb2.FileDiscovered
    file_id: str


def _now() -> datetime:
    return datetime.now(UTC)


def _required_for(event: events_pb2.FileDiscovered) -> list[str]:
    names = ["dataset_id", "dataset_version_id", "file_id"]
    if event.change_type == UPSERT:
        names += ["bucket", "key", "etag"]
    return [name for name in names if not getattr(event, name)]


def file_embedded_event(
    discovered: events_pb2.FileDiscovered,
    *,
    file_id: str,
    index: IndexRecord,
    change_type: int,
    now: datetime,
    job_id: str = "",
) -> events_pb2.FileEmbedded:
    """The FileEmbedded event for a file whose vectors were written or removed."""
    event_time = Timestamp()
    event_time.FromDatetime(now)
    event = events_pb2.FileEmbedded(
        event_id=str(uuid.uuid4()),
        dataset_id=discovered.dataset_id,
        dataset_version_id=discovered.dataset_version_id,
        file_id=file_id,
        uri=discovered.uri,
        bucket=discovered.bucket,
        key=discovered.key,
        etag=discovered.etag,
        size=discovered.size if change_type == UPSERT else 0,
        change_type=change_type,  # type: ignore[arg-type]
        event_time=event_time,
        trace_id=discovered.trace_id,
        index_name=index.name,
        vector_fields=[f.name for f in index.fields] if change_type == UPSERT else [],
        model_id=index.model.id,
        model_version=index.model.version,
        index_job_id=job_id,
    )
    if change_type == UPSERT and discovered.HasField("last_modified"):
        event.last_modified.CopyFrom(discovered.last_modified)
    return event


class DiscoveredPipeline:
    """Applies batches of FileDiscovered events to the vector indexes."""

    def __init__(
        self,
        directory: IndexDirectory,
        embedder: FileEmbedder,
        sink: EventSink,
        *,
        concurrency: int,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._directory = directory
        self._embedder = embedder
        self._sink = sink
        self._concurrency = concurrency
        self._clock = clock

    async def process(self, records: Sequence[IncomingRecord]) -> BatchReport:
        """Applies one consumed batch; returns when its effects are durable (then commit)."""
        report = BatchReport()
        letters: list[DeadLetter] = []
        latest: dict[str, _Discovered] = {}
        for record in records:
            parsed = self._parse(record)
            if isinstance(parsed, DeadLetter):
                letters.append(parsed)
                continue
            latest.pop(parsed.file_id, None)  # keep the order of each file's last event
            latest[parsed.file_id] = parsed

        by_dataset: dict[str, list[_Discovered]] = {}
        for item in latest.values():
            by_dataset.setdefault(item.event.dataset_id, []).append(item)
        published: list[events_pb2.FileEmbedded] = []
        for items in by_dataset.values():
            deletes = [item for item in items if item.event.change_type == DELETE]
            upserts = [item for item in items if item.event.change_type == UPSERT]
            # Only problems of the dataset or its index are dead letters; a failing
            # vector store, database or bucket endpoint fails the whole batch.
            if deletes:
                published += await self._delete(deletes, report, letters)
            if upserts:
                published += await self._upsert(upserts, report, letters)
        if published:
            await self._sink.publish_embedded(published)
        if letters:
            await self._sink.dead_letter(letters)
        report.dead_lettered = len(letters)
        report.reasons = [letter.reason for letter in letters]
        return report

    def _parse(self, record: IncomingRecord) -> _Discovered | DeadLetter:
        try:
            event = decode_event(events_pb2.FileDiscovered, record.value)
        except MalformedEvent as exc:
            return _letter(record, str(exc), "MalformedEvent")
        if event.change_type not in (UPSERT, DELETE):
            return _letter(record, f"FileDiscovered {event.file_id!r} has no change type", "MalformedEvent")
        missing = _required_for(event)
        if missing:
            return _letter(
                record, f"FileDiscovered is missing required field(s): {', '.join(missing)}", "MalformedEvent"
            )
        try:
            file_id = str(uuid.UUID(event.file_id))
            uuid.UUID(event.dataset_id)
            uuid.UUID(event.dataset_version_id)
        except ValueError:
            return _letter(
                record, "FileDiscovered ids (file, dataset, dataset version) must be UUIDs", "MalformedEvent"
            )
        return _Discovered(record, event, file_id)

    async def _delete(
        self, items: list[_Discovered], report: BatchReport, letters: list[DeadLetter]
    ) -> list[events_pb2.FileEmbedded]:
        dataset_id = str(uuid.UUID(items[0].event.dataset_id))
        try:
            targets = [
                (index, await self._directory.store_for(index))
                for index in await self._directory.catalogue.list_indexes(dataset_id)
            ]
        except DomainError as exc:
            letters += [_letter(item.record, str(exc), type(exc).__name__) for item in items]
            return []
        file_ids = [item.file_id for item in items]
        now = self._clock()
        published: list[events_pb2.FileEmbedded] = []
        for index, store in targets:
            await self._store_call(index, store.delete(index.name, file_ids))
            await self._directory.catalogue.forget(index.name, file_ids)
            if index.active:
                published += [
                    file_embedded_event(
                        item.event, file_id=item.file_id, index=index, change_type=DELETE, now=now
                    )
                    for item in items
                ]
        report.deleted += len(items)
        return published

    async def _upsert(
        self, items: list[_Discovered], report: BatchReport, letters: list[DeadLetter]
    ) -> list[events_pb2.FileEmbedded]:
        try:
            index = await self._directory.active_or_default(items[0].event.dataset_id)
            model = await self._directory.model_for(index)
            store = await self._directory.store_for(index)
        except DomainError as exc:
            # The dataset or its index cannot take these files (unknown dataset,
            # model version changed ...): every one of them is a dead letter.
            letters += [_letter(item.record, str(exc), type(exc).__name__) for item in items]
            return []
        current = await self._directory.catalogue.current_vectors(
            index.name, [item.file_id for item in items]
        )
        now = self._clock()
        published: list[events_pb2.FileEmbedded] = []
        to_embed: list[_Discovered] = []
        for item in items:
            known = current.get(item.file_id)
            if (
                known is not None
                and known.etag == item.event.etag
                and known.model_version == index.model.version
            ):
                report.skipped += 1
                published.append(
                    file_embedded_event(
                        item.event, file_id=item.file_id, index=index, change_type=UPSERT, now=now
                    )
                )
            else:
                to_embed.append(item)
        if not to_embed:
            return published
        results = await self._embedder.embed(
            model,
            [(item, ImageSource(item.event.bucket, item.event.key)) for item in to_embed],
            concurrency=self._concurrency,
        )
        letters += [_letter(item.record, reason, "ImageNotEmbeddable") for item, reason in results.failures]
        if results.vectors:
            rows = [
                VectorRow(
                    file_id=item.file_id,
                    dataset_version_id=item.event.dataset_version_id,
                    etag=item.event.etag,
                    vectors=vectors,
                )
                for item, vectors in results.vectors
            ]
            await self._store_call(index, store.upsert(index.name, rows))
            await self._directory.catalogue.record_embedded(
                index.name,
                [EmbeddedFile(row.file_id, row.dataset_version_id, row.etag) for row in rows],
                index.model.version,
                None,
            )
            now = self._clock()
            published += [
                file_embedded_event(
                    item.event, file_id=item.file_id, index=index, change_type=UPSERT, now=now
                )
                for item, _ in results.vectors
            ]
            report.embedded += len(rows)
        return published

    async def _store_call(self, index: IndexRecord, call: Awaitable[None]) -> None:
        """A vector store write; any failure fails the batch (it is delivered again).

        A vanished index table / collection is created again on the next
        delivery rather than dead-lettering every file of the dataset.
        """
        try:
            await call
        except IndexNotFound:
            self._directory.forget_ensured(index.name)
            raise


def _letter(record: IncomingRecord, reason: str, error_type: str) -> DeadLetter:
    return DeadLetter(
        value=record.value,
        key=record.key,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
        error_type=error_type,
    )
