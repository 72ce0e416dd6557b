"""The file-discovered pipeline: one consumed batch of events in, vectors and events out.

For a batch of ``FileDiscovered`` records:

1. decode each record; a malformed one goes to the dead-letter topic;
2. keep the last event per file (events of a file are ordered: a later
   DELETE overrides an earlier UPSERT of the same batch and vice versa);
3. DELETE: remove the file's vectors from every index of its dataset;
4. UPSERT: find the dataset's active index (created on first use) and the
   indexes that jobs are building for it (a switch of its indexing
   connections: files that arrive during the build must reach the new index
   too); per index, skip files whose vectors there were already computed
   from this ETag with this model version (a redelivered event changes
   nothing); fetch, decode and embed the others once per model; upsert their
   rows into each index and record them;
5. publish one ``FileEmbedded`` per applied file of the active index (also for
   skipped ones: a redelivery may follow a crash between the upsert and the
   publish, and consumers are idempotent).

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

from viewfinder.v1 import events_pb2
from viewfinder_common.errors import DomainError
from viewfinder_common.events import MalformedEvent, decode_event
from viewfinder_common.logging import get_logger
from viewfinder_common.timestamps import to_timestamp
from viewfinder_common.vectorstore import IndexNotFound, VectorRow, VectorStore
from viewfinder_embedder.domain.file_embedder import FileEmbedder, ImageSource
from viewfinder_embedder.domain.indexes import IndexDirectory, canonical_dataset_id
from viewfinder_embedder.domain.model import EmbeddingModel
from viewfinder_embedder.domain.ports import DeadLetter, EmbeddedFile, IndexRecord

log = get_logger(__name__)

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
    # Rows written to indexes that jobs are building (not counted in ``embedded``).
    embedded_for_builds: int = 0
    skipped: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Discovered:
    record: IncomingRecord
    event: events_pb2.FileDiscovered
    file_id: str


@dataclass(frozen=True)
class _Target:
    """One index an upsert batch writes to."""

    index: IndexRecord
    model: EmbeddingModel
    store: VectorStore
    # Files of the batch whose vectors in this index are not current.
    todo: list[_Discovered]


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
    event_time = to_timestamp(now)
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
        dataset_id = items[0].event.dataset_id
        try:
            active = await self._target(await self._directory.active_or_default(dataset_id), items)
        except DomainError as exc:
            # The dataset or its index cannot take these files (unknown dataset,
            # model version changed ...): every one of them is a dead letter.
            letters += [_letter(item.record, str(exc), type(exc).__name__) for item in items]
            return []
        targets = [active]
        for index in await self._directory.building_indexes(canonical_dataset_id(dataset_id)):
            try:
                targets.append(await self._target(index, items))
            except DomainError as exc:
                # A build whose model or store cannot be used must not hold back
                # the active index; its own job meets the same error and fails.
                log.warning("building_index_skipped", index=index.name, reason=str(exc))
        now = self._clock()
        published: list[events_pb2.FileEmbedded] = []
        pending = {item.file_id for item in active.todo}
        for item in items:
            if item.file_id not in pending:
                report.skipped += 1
                published.append(
                    file_embedded_event(
                        item.event, file_id=item.file_id, index=active.index, change_type=UPSERT, now=now
                    )
                )
        for group in _by_model(targets):
            published += await self._embed_into(group, active, report, letters)
        return published

    async def _target(self, index: IndexRecord, items: list[_Discovered]) -> _Target:
        """An index to write with its model, store and the files whose vectors there are not current."""
        model = await self._directory.model_for(index)
        store = await self._directory.store_for(index)
        current = await self._directory.catalogue.current_vectors(
            index.name, [item.file_id for item in items]
        )
        todo = []
        for item in items:
            known = current.get(item.file_id)
            if known is None or known.etag != item.event.etag or known.model_version != index.model.version:
                todo.append(item)
        return _Target(index, model, store, todo)

    async def _embed_into(
        self, group: list[_Target], active: _Target, report: BatchReport, letters: list[DeadLetter]
    ) -> list[events_pb2.FileEmbedded]:
        """Embeds once with the group's model and writes each index's rows; events for the active index."""
        wanted: dict[str, _Discovered] = {}
        for target in group:
            wanted.update({item.file_id: item for item in target.todo})
        if not wanted:
            return []
        results = await self._embedder.embed(
            group[0].model,
            [(item, ImageSource(item.event.bucket, item.event.key)) for item in wanted.values()],
            concurrency=self._concurrency,
        )
        if any(target is active for target in group):
            letters += [
                _letter(item.record, reason, "ImageNotEmbeddable") for item, reason in results.failures
            ]
        else:
            for item, reason in results.failures:
                log.warning(
                    "file_not_embeddable_for_build",
                    index=group[0].index.name,
                    file_id=item.file_id,
                    reason=reason,
                )
        vectors = {item.file_id: values for item, values in results.vectors}
        published: list[events_pb2.FileEmbedded] = []
        for target in group:
            done = [item for item in target.todo if item.file_id in vectors]
            if not done:
                continue
            rows = [
                VectorRow(
                    file_id=item.file_id,
                    dataset_version_id=item.event.dataset_version_id,
                    etag=item.event.etag,
                    vectors=vectors[item.file_id],
                )
                for item in done
            ]
            await self._store_call(target.index, target.store.upsert(target.index.name, rows))
            await self._directory.catalogue.record_embedded(
                target.index.name,
                [EmbeddedFile(row.file_id, row.dataset_version_id, row.etag) for row in rows],
                target.index.model.version,
                None,
            )
            if target is active:
                now = self._clock()
                published += [
                    file_embedded_event(
                        item.event, file_id=item.file_id, index=target.index, change_type=UPSERT, now=now
                    )
                    for item in done
                ]
                report.embedded += len(rows)
            else:
                report.embedded_for_builds += len(rows)
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


def _by_model(targets: list[_Target]) -> list[list[_Target]]:
    """Targets grouped by model connection (in order, the active index's group first)."""
    groups: dict[str, list[_Target]] = {}
    for target in targets:
        groups.setdefault(target.index.model_connection, []).append(target)
    return list(groups.values())
