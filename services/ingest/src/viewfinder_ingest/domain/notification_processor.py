"""Applying bucket change notifications to the catalogue, a batch at a time.

A notification names a bucket and key; every dataset registered on that
bucket whose prefix the key falls under gets the change in its latest
version. Per (version, key) only the newest change of a batch matters
(sequencer, else time), and it is checked against what the catalogue applied
before (``ordering.decide``), so duplicates and reordered deliveries end in
the right state. A created object is read from the store (header bytes) and
recorded as it is now. Events are published before the catalogue is written:
if the write fails, the batch is redelivered and the events go out again
(at least once), never zero times.

Notifications that cannot be used (malformed, unknown bucket, unreadable
object, version full) go to the dead-letter sink with the reason; the rest of
the batch is still applied.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from viewfinder_common.logging import get_logger
from viewfinder_ingest.domain.inspector import InspectedObject, ObjectInspector
from viewfinder_ingest.domain.models import (
    CatalogueFile,
    ChangeType,
    DiscoveredChange,
    FileStatus,
    FileWrite,
    file_id_for,
)
from viewfinder_ingest.domain.notifications import (
    MalformedNotification,
    StorageChange,
    parse_notification,
)
from viewfinder_ingest.domain.ordering import Action, decide, event_for, newest
from viewfinder_ingest.domain.ports import (
    DatasetTarget,
    DeadLetter,
    DeadLetterSink,
    EventPublisher,
    NotificationCatalogue,
    NotificationWrite,
    ObjectAccessError,
    ObjectStore,
)

log = get_logger(__name__)

ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class NotificationInput:
    """One received notification: its bytes and where it came from (for the dead-letter record)."""

    body: bytes
    source: Mapping[str, str] = field(default_factory=dict)
    trace_id: str = ""


@dataclass(slots=True)
class BatchOutcome:
    """What a batch did (returned to the webhook caller and logged)."""

    changes: int = 0
    applied: int = 0
    skipped: int = 0
    ignored: int = 0
    events: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass(slots=True)
class _Received:
    change: StorageChange
    input_index: int


@dataclass(slots=True)
class _WriteBuilder:
    """A NotificationWrite while it is being collected."""

    target: DatasetTarget
    upserts: list[FileWrite] = field(default_factory=list)
    deletions: list[tuple[CatalogueFile, str | None]] = field(default_factory=list)
    tombstones: list[tuple[str, str | None]] = field(default_factory=list)
    sequencers: list[tuple[str, str]] = field(default_factory=list)

    def build(self) -> NotificationWrite:
        dataset = self.target.dataset
        return NotificationWrite(
            dataset_id=dataset.id,
            version_id=self.target.version_id,
            bucket=dataset.bucket,
            upserts=self.upserts,
            deletions=self.deletions,
            tombstones=self.tombstones,
            sequencers=self.sequencers,
        )


@dataclass(slots=True)
class _VersionWork:
    target: DatasetTarget
    by_key: dict[str, list[_Received]] = field(default_factory=lambda: defaultdict(list))


@dataclass(frozen=True, slots=True)
class _Plan:
    """The newest change of one (version, key) and what to do with it."""

    target: DatasetTarget
    key: str
    received: _Received
    row: CatalogueFile | None
    action: Action

    @property
    def bucket_key(self) -> tuple[str, str]:
        return self.target.dataset.bucket, self.key


@dataclass(slots=True)
class _Batch:
    """The state of one batch while it is processed."""

    inputs: Sequence[NotificationInput]
    outcome: BatchOutcome = field(default_factory=BatchOutcome)
    problems: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    problem_types: dict[int, str] = field(default_factory=dict)
    writes: dict[str, _WriteBuilder] = field(default_factory=dict)
    changes: list[DiscoveredChange] = field(default_factory=list)
    # New rows wait for the version's file limit check.
    new_rows: dict[str, list[tuple[FileWrite, _Received, DiscoveredChange | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def problem(self, index: int, reason: str, error_type: str) -> None:
        self.problems[index].append(reason)
        self.problem_types.setdefault(index, error_type)

    def write_for(self, target: DatasetTarget) -> _WriteBuilder:
        return self.writes.setdefault(target.version_id, _WriteBuilder(target))

    def trace_id(self, received: _Received) -> str:
        return self.inputs[received.input_index].trace_id or uuid.uuid4().hex

    def dead_letters(self) -> list[DeadLetter]:
        return [
            DeadLetter(
                body=self.inputs[index].body,
                reason="; ".join(reasons),
                error_type=self.problem_types.get(index, "NotificationError"),
                source=self.inputs[index].source,
            )
            for index, reasons in sorted(self.problems.items())
        ]


class NotificationProcessor:
    """Turns notification batches into catalogue rows and FileDiscovered events."""

    def __init__(
        self,
        catalogue: NotificationCatalogue,
        store: ObjectStore,
        inspector: ObjectInspector,
        publisher: EventPublisher,
        dead_letters: DeadLetterSink,
    ) -> None:
        self._catalogue = catalogue
        self._store = store
        self._inspector = inspector
        self._publisher = publisher
        self._dead_letters = dead_letters

    async def process(self, inputs: Sequence[NotificationInput]) -> BatchOutcome:
        """Applies a batch; returns once events are acknowledged and rows written."""
        batch = _Batch(inputs)
        received = self._parse(batch)
        work = await self._route(batch, received)
        plans = await self._plan(batch, work)
        await self._resolve(batch, plans)
        await self._admit_new_rows(batch, work)
        if batch.changes:
            await self._publisher.publish(batch.changes)
        writes = [builder.build() for builder in batch.writes.values()]
        if writes:
            await self._catalogue.apply_notifications(writes)
        batch.outcome.events = len(batch.changes)
        batch.outcome.dead_letters = batch.dead_letters()
        if batch.outcome.dead_letters:
            await self._dead_letters.send(batch.outcome.dead_letters)
        return batch.outcome

    @staticmethod
    def _parse(batch: _Batch) -> list[_Received]:
        received: list[_Received] = []
        for index, item in enumerate(batch.inputs):
            try:
                parsed = parse_notification(item.body)
            except MalformedNotification as exc:
                batch.problem(index, str(exc), "MalformedNotification")
                continue
            batch.outcome.ignored += parsed.ignored
            for error in parsed.errors:
                batch.problem(index, error, "MalformedNotification")
            received.extend(_Received(change, index) for change in parsed.changes)
        batch.outcome.changes = len(received)
        return received

    async def _route(self, batch: _Batch, received: Sequence[_Received]) -> dict[str, _VersionWork]:
        """Groups changes by (latest version of each matching dataset, key)."""
        targets = await self._catalogue.targets_for_buckets(sorted({r.change.bucket for r in received}))
        work: dict[str, _VersionWork] = {}
        for item in received:
            bucket_targets = targets.get(item.change.bucket)
            if not bucket_targets:
                batch.problem(
                    item.input_index,
                    f"no dataset is registered on bucket {item.change.bucket!r}",
                    "UnknownBucket",
                )
                continue
            matching = [t for t in bucket_targets if item.change.key.startswith(t.dataset.prefix)]
            if not matching:
                batch.outcome.ignored += 1  # a key outside every registered prefix of the bucket
            for target in matching:
                work.setdefault(target.version_id, _VersionWork(target)).by_key[item.change.key].append(item)
        return work

    async def _plan(self, batch: _Batch, work: Mapping[str, _VersionWork]) -> list[_Plan]:
        """Decides per (version, key) with its newest change against the catalogue row."""
        plans: list[_Plan] = []
        for version in work.values():
            rows = await self._catalogue.files_by_key(version.target.version_id, list(version.by_key))
            for key, items in version.by_key.items():
                latest = newest(item.change for item in items)
                chosen = next(item for item in reversed(items) if item.change is latest)
                decision = decide(latest, rows.get(key))
                if decision.action is Action.SKIP:
                    batch.outcome.skipped += len(items)
                    log.debug("notification_skipped", key=key, reason=decision.reason)
                    continue
                batch.outcome.skipped += len(items) - 1
                plans.append(_Plan(version.target, key, chosen, rows.get(key), decision.action))
        return plans

    async def _resolve(self, batch: _Batch, plans: Sequence[_Plan]) -> None:
        """Reads and checks the store where needed, then turns each plan into writes and events."""
        reads = await _gather_by_key(
            {p.bucket_key for p in plans if p.action is Action.READ}, self._inspector.inspect_key
        )
        stats = await _gather_by_key(
            {p.bucket_key for p in plans if p.action is Action.DELETE_IF_GONE}, self._store.stat
        )
        for plan in plans:
            write = batch.write_for(plan.target)
            sequencer = plan.received.change.sequencer
            if plan.action is Action.READ:
                self._resolve_read(batch, plan, reads[plan.bucket_key])
            elif plan.action is Action.TOMBSTONE:
                if plan.row is None:
                    write.tombstones.append((plan.key, sequencer))
                elif sequencer:
                    write.sequencers.append((plan.key, sequencer))
                batch.outcome.applied += 1
            elif plan.action is Action.DELETE_IF_GONE and stats[plan.bucket_key] is not None:
                batch.outcome.skipped += 1  # still there (or unreadable): the removal is not the latest news
            else:
                assert plan.row is not None
                write.deletions.append((plan.row, sequencer))
                batch.outcome.applied += 1
                if plan.row.status is FileStatus.ACTIVE:
                    batch.changes.append(_deleted(plan.target, plan.row, batch.trace_id(plan.received)))

    def _resolve_read(
        self, batch: _Batch, plan: _Plan, result: InspectedObject | ObjectAccessError | None
    ) -> None:
        if isinstance(result, ObjectAccessError):
            batch.problem(
                plan.received.input_index,
                f"cannot read s3://{plan.target.dataset.bucket}/{plan.key}: {result}",
                "ObjectAccessError",
            )
            return
        if result is None:
            batch.outcome.skipped += 1  # gone already: a removal follows or preceded it
            return
        upsert, event = _upsert(plan, result, batch.trace_id(plan.received))
        row = plan.row
        if upsert is None:
            if plan.received.change.sequencer:
                batch.write_for(plan.target).sequencers.append((plan.key, plan.received.change.sequencer))
            batch.outcome.skipped += 1
        elif row is None or row.status is FileStatus.DELETED:
            batch.new_rows[plan.target.version_id].append((upsert, plan.received, event))
        else:
            batch.write_for(plan.target).upserts.append(upsert)
            batch.outcome.applied += 1
            if event is not None:
                batch.changes.append(event)

    async def _admit_new_rows(self, batch: _Batch, work: Mapping[str, _VersionWork]) -> None:
        """Adds new files while their version has room; the rest are dead-lettered."""
        for version_id, candidates in batch.new_rows.items():
            target = work[version_id].target
            room = target.version_file_limit - await self._catalogue.count_live_files(version_id)
            for upsert, received, event in candidates:
                if room <= 0:
                    batch.problem(
                        received.input_index,
                        f"FAILED_PRECONDITION: version v{target.version_number} of dataset "
                        f"{target.dataset.name!r} is at its limit of {target.version_file_limit} files; "
                        f"s3://{target.dataset.bucket}/{upsert.key} was not added",
                        "VersionFileLimit",
                    )
                    continue
                room -= 1
                batch.write_for(target).upserts.append(upsert)
                batch.outcome.applied += 1
                if event is not None:
                    batch.changes.append(event)


def _upsert(
    plan: _Plan, result: InspectedObject, trace_id: str
) -> tuple[FileWrite | None, DiscoveredChange | None]:
    """The row to write for an object read from the store (None: its content is recorded already)."""
    current, info = result.object, result.info
    row, change = plan.row, plan.received.change
    if (
        row is not None
        and row.status is not FileStatus.DELETED
        and row.etag == current.etag
        and row.status is info.status
    ):
        return None, None
    file_id = row.id if row is not None else file_id_for(plan.target.version_id, plan.key)
    upsert = FileWrite(
        id=file_id,
        key=plan.key,
        size=current.size,
        etag=current.etag,
        last_modified=current.last_modified,
        info=info,
        sequencer=change.sequencer or (row.sequencer if row is not None else None),
    )
    change_type = event_for(
        row.status if row is not None else None,
        row.etag if row is not None else None,
        info.status,
        current.etag,
    )
    if change_type is None:
        return upsert, None
    dataset = plan.target.dataset
    deleted = change_type is ChangeType.DELETE
    return upsert, DiscoveredChange(
        dataset_id=dataset.id,
        version_id=plan.target.version_id,
        file_id=file_id,
        bucket=dataset.bucket,
        key=plan.key,
        etag=current.etag,
        size=0 if deleted else current.size,
        change_type=change_type,
        last_modified=None if deleted else current.last_modified,
        storage_connection=dataset.storage_connection,
        trace_id=trace_id,
        info=None if deleted else info,
    )


async def _gather_by_key(
    keys: set[tuple[str, str]], read: Callable[[str, str], Awaitable[ResultT]]
) -> dict[tuple[str, str], ResultT | ObjectAccessError]:
    """Runs ``read(bucket, key)`` for every key at once; access errors become values, others raise."""
    ordered = sorted(keys)
    results = await asyncio.gather(*(read(bucket, key) for bucket, key in ordered), return_exceptions=True)
    collected: dict[tuple[str, str], ResultT | ObjectAccessError] = {}
    for bucket_key, result in zip(ordered, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, ObjectAccessError):
            raise result
        collected[bucket_key] = result
    return collected


def _deleted(target: DatasetTarget, row: CatalogueFile, trace_id: str) -> DiscoveredChange:
    return DiscoveredChange(
        dataset_id=target.dataset.id,
        version_id=target.version_id,
        file_id=row.id,
        bucket=row.bucket,
        key=row.key,
        etag=row.etag,
        size=0,
        change_type=ChangeType.DELETE,
        last_modified=None,
        storage_connection=target.dataset.storage_connection,
        trace_id=trace_id,
    )
