"""Running sync jobs: list a dataset prefix page by page into a version.

The prefix is split into key partitions (objects directly under it, and one
per common prefix) listed concurrently, each with the next page fetched while
the current one is processed. A page is compared with the catalogue rows of
its key range, new and changed objects are inspected, the page's events are
published and acknowledged, and only then are its rows, counters and the
partition's checkpoint written in one transaction. So a crash or cancel loses
at most the pages in flight: a resumed job starts each partition after its
last written key, and an event is never lost (at worst published twice).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from viewfinder_common.logging import get_logger, redact_text
from viewfinder_ingest.domain.inspector import InspectedObject, ObjectInspector
from viewfinder_ingest.domain.models import (
    CatalogueFile,
    ChangeType,
    Dataset,
    DiscoveredChange,
    FileStatus,
    FileWrite,
    ItemError,
    JobState,
    ListedObject,
    PartitionProgress,
    SyncCounts,
    SyncJob,
    file_id_for,
)
from viewfinder_ingest.domain.ordering import event_for
from viewfinder_ingest.domain.ports import (
    EventPublisher,
    ListingPage,
    ObjectAccessError,
    ObjectStore,
    SyncCatalogue,
    SyncPageWrite,
)
from viewfinder_ingest.domain.sync_plan import DIRECT_PARTITION, page_range, plan_page, same_object

log = get_logger(__name__)

INTERRUPTED = "interrupted: the ingest service stopped while the job ran; resume the job to continue"


class JobCancelled(Exception):
    """Cancellation was requested; the pages written so far stay."""


class VersionLimitExceeded(Exception):
    """The version would hold more files than its limit; nothing past the limit is written."""


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """Tuning of the sync runner (from the service settings)."""

    listing_concurrency: int = 8
    page_size: int = 1000
    heartbeat_s: float = 10.0


@dataclass(slots=True)
class _JobContext:
    job: SyncJob
    dataset: Dataset
    live_files: int
    partitions: dict[str, PartitionProgress]
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def uri_prefix(self) -> str:
        return f"s3://{self.dataset.bucket}/"


class SyncRunner:
    """Runs sync jobs in this process, one asyncio task per job."""

    def __init__(
        self,
        catalogue: SyncCatalogue,
        store: ObjectStore,
        inspector: ObjectInspector,
        publisher: EventPublisher,
        options: SyncOptions,
    ) -> None:
        self._catalogue = catalogue
        self._store = store
        self._inspector = inspector
        self._publisher = publisher
        self._options = options
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def launch(self, job_id: str) -> None:
        """Starts a PENDING job in the background (no-op if it already runs here)."""
        if job_id in self._tasks:
            return
        task = asyncio.create_task(self.run(job_id), name=f"sync-job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def close(self) -> None:
        """Stops every running job; each is recorded as FAILED (interrupted) and can be resumed."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, job_id: str) -> None:
        """Runs one job to a terminal state."""
        job = await self._catalogue.claim_sync_job(job_id)
        if job is None:
            log.info("sync_job_not_pending", job_id=job_id)
            return
        bound = log.bind(job_id=job_id, dataset_id=job.dataset_id, version_id=job.version_id, mode=job.mode)
        try:
            dataset = await self._catalogue.get_dataset(job.dataset_id)
            context = _JobContext(
                job=job,
                dataset=dataset,
                live_files=await self._catalogue.count_live_files(job.version_id),
                partitions=dict(job.partitions),
            )
        except Exception as exc:
            await self._catalogue.finish_job(job_id, JobState.FAILED, redact_text(f"could not start: {exc}"))
            log.error("sync_job_not_started", job_id=job_id, exc_info=exc)
            return
        bound.info("sync_job_started", resumed=job.resume_count, partitions=len(context.partitions))
        heartbeat = asyncio.create_task(self._heartbeat(context))
        try:
            await self._list_partitions(context)
        except asyncio.CancelledError:
            await asyncio.shield(self._catalogue.finish_job(job_id, JobState.FAILED, INTERRUPTED))
            raise
        except BaseException as exc:
            await self._record_failure(job_id, _first_cause(exc))
        else:
            await self._catalogue.finish_job(job_id, JobState.SUCCEEDED)
            bound.info("sync_job_succeeded")
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _record_failure(self, job_id: str, exc: BaseException) -> None:
        if isinstance(exc, JobCancelled):
            await self._catalogue.finish_job(job_id, JobState.CANCELLED)
            log.info("sync_job_cancelled", job_id=job_id)
        elif isinstance(exc, VersionLimitExceeded):
            await self._catalogue.finish_job(job_id, JobState.FAILED, str(exc))
            log.warning("sync_job_over_limit", job_id=job_id, reason=str(exc))
        elif isinstance(exc, Exception):
            # The reason is shown to users: credentials inside an exception text are masked.
            await self._catalogue.finish_job(
                job_id, JobState.FAILED, redact_text(f"{type(exc).__name__}: {exc}")
            )
            log.error("sync_job_failed", job_id=job_id, exc_info=exc)
        else:
            raise exc

    async def _heartbeat(self, context: _JobContext) -> None:
        while True:
            await asyncio.sleep(self._options.heartbeat_s)
            if await self._catalogue.heartbeat(context.job.id):
                context.cancelled.set()

    async def _list_partitions(self, context: _JobContext) -> None:
        slots = asyncio.Semaphore(self._options.listing_concurrency)
        scheduled: set[str] = set()
        async with asyncio.TaskGroup() as group:

            def schedule(partition: str) -> None:
                if partition in scheduled or context.partitions.get(partition, PartitionProgress()).done:
                    return
                scheduled.add(partition)
                group.create_task(self._list_partition(context, partition, slots, schedule))

            context.partitions.setdefault(DIRECT_PARTITION, PartitionProgress())
            for partition in list(context.partitions):
                schedule(partition)

    async def _list_partition(
        self,
        context: _JobContext,
        partition: str,
        slots: asyncio.Semaphore,
        schedule: Callable[[str], None],
    ) -> None:
        async with slots:
            after = context.partitions[partition].after
            direct = partition == DIRECT_PARTITION
            pages = self._store.list_pages(
                context.dataset.bucket,
                context.dataset.prefix if direct else partition,
                delimiter="/" if direct else None,
                start_after=after,
                page_size=self._options.page_size,
            )
            async for listed_at, page in _prefetched(pages):
                if context.cancelled.is_set():
                    raise JobCancelled
                discovered = []
                if direct:
                    discovered = [p for p in page.common_prefixes if p not in context.partitions]
                    for prefix in discovered:
                        context.partitions[prefix] = PartitionProgress()
                        schedule(prefix)
                after = await self._process_page(
                    context, partition, after, page, listed_at=listed_at, discovered=discovered
                )

    async def _process_page(
        self,
        context: _JobContext,
        partition: str,
        after: str | None,
        page: ListingPage,
        *,
        listed_at: datetime,
        discovered: list[str],
    ) -> str | None:
        """Inspects, publishes and writes one page; returns the partition's new resume key."""
        job, dataset = context.job, context.dataset
        if not page.objects and not page.is_last:
            if discovered:
                await self._catalogue.add_partitions(job.id, discovered)
            return after
        key_range = page_range(partition, dataset.prefix, after, page.objects, page.is_last)
        existing = await self._catalogue.files_in_range(job.version_id, key_range)
        plan = plan_page(page.objects, existing, job.mode)
        results = await asyncio.gather(
            *(self._inspect(dataset.bucket, obj) for obj, _ in plan.to_inspect), return_exceptions=True
        )
        batch = _PageBatch(context)
        batch.counts["listed"] = len(page.objects)
        batch.counts["unchanged"] = plan.unchanged
        for (listed, row), result in zip(plan.to_inspect, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, ObjectAccessError):
                    raise result
                batch.fail(listed.key, str(result), row.id if row else "")
            elif result is None:
                # Gone between listing and reading: a vanished object.
                if row is not None and row.status is not FileStatus.DELETED:
                    batch.delete(row)
            else:
                batch.record(listed, row, result)
        for row in plan.vanished:
            batch.delete(row)
        self._reserve_capacity(context, batch.new_live_files - len(batch.deletions))
        if batch.changes:
            await self._publisher.publish(batch.changes)
        batch.counts["events_published"] = len(batch.changes)
        new_after = page.objects[-1].key if page.objects else after
        cancel_requested = await self._catalogue.commit_sync_page(
            SyncPageWrite(
                job_id=job.id,
                dataset_id=job.dataset_id,
                version_id=job.version_id,
                bucket=dataset.bucket,
                writes=batch.writes,
                deletions=batch.deletions,
                listed_at=listed_at,
                counts=SyncCounts(**batch.counts),
                partition=partition,
                progress=PartitionProgress(after=new_after, done=page.is_last),
                new_partitions=discovered,
                errors=batch.errors,
            )
        )
        context.partitions[partition] = PartitionProgress(after=new_after, done=page.is_last)
        if cancel_requested:
            context.cancelled.set()
            raise JobCancelled
        return new_after

    async def _inspect(self, bucket: str, listed: ListedObject) -> InspectedObject | None:
        return await self._inspector.inspect(bucket, listed)

    def _reserve_capacity(self, context: _JobContext, added: int) -> None:
        limit = context.dataset.version_file_limit
        if added > 0 and context.live_files + added > limit:
            raise VersionLimitExceeded(
                f"FAILED_PRECONDITION: version {context.job.version_id} of dataset {context.dataset.name!r} "
                f"would hold more than its limit of {limit} files; nothing past the limit was written. "
                "Narrow the dataset prefix or create a dataset with a higher limit."
            )
        context.live_files += added


class _PageBatch:
    """What one page writes and publishes, collected while its results come in."""

    def __init__(self, context: _JobContext) -> None:
        self._context = context
        self.writes: list[FileWrite] = []
        self.deletions: list[CatalogueFile] = []
        self.changes: list[DiscoveredChange] = []
        self.errors: list[ItemError] = []
        self.new_live_files = 0
        self.counts: dict[str, int] = dict.fromkeys(SyncCounts.__dataclass_fields__, 0)

    def _uri(self, key: str) -> str:
        return self._context.uri_prefix + key

    def fail(self, key: str, reason: str, file_id: str) -> None:
        self.counts["failed"] += 1
        self.errors.append(ItemError(self._uri(key), reason, datetime.now(UTC), file_id))

    def delete(self, row: CatalogueFile) -> None:
        self.deletions.append(row)
        self.counts["deleted"] += 1
        if row.status is FileStatus.ACTIVE:
            self._announce(row.id, row.key, row.etag, size=0, last_modified=None, result=None, delete=True)

    def record(self, listed: ListedObject, row: CatalogueFile | None, result: InspectedObject) -> None:
        current, info = result.object, result.info
        if row is None or row.status is FileStatus.DELETED:
            self.counts["added"] += 1
            self.new_live_files += 1
        elif same_object(current, row) and _same_info(row, result):
            self.counts["unchanged"] += 1  # FULL mode: inspected again, nothing new
            return
        else:
            self.counts["changed"] += 1
        file_id = row.id if row is not None else file_id_for(self._context.job.version_id, listed.key)
        self.writes.append(
            FileWrite(
                id=file_id,
                key=listed.key,
                size=current.size,
                etag=current.etag,
                last_modified=current.last_modified,
                info=info,
                sequencer=row.sequencer if row is not None else None,
            )
        )
        if info.status is FileStatus.UNSUPPORTED:
            self.counts["unsupported"] += 1
        elif info.status is FileStatus.CORRUPT:
            self.counts["corrupt"] += 1
            self.errors.append(
                ItemError(self._uri(listed.key), info.error or "corrupt", datetime.now(UTC), file_id)
            )
        change = event_for(
            row.status if row is not None else None,
            row.etag if row is not None else None,
            info.status,
            current.etag,
        )
        if change is not None:
            self._announce(
                file_id,
                listed.key,
                current.etag,
                size=current.size,
                last_modified=current.last_modified,
                result=result,
                delete=change is ChangeType.DELETE,
            )

    def _announce(
        self,
        file_id: str,
        key: str,
        etag: str,
        *,
        size: int,
        last_modified: datetime | None,
        result: InspectedObject | None,
        delete: bool,
    ) -> None:
        job, dataset = self._context.job, self._context.dataset
        self.changes.append(
            DiscoveredChange(
                dataset_id=job.dataset_id,
                version_id=job.version_id,
                file_id=file_id,
                bucket=dataset.bucket,
                key=key,
                etag=etag,
                size=0 if delete else size,
                change_type=ChangeType.DELETE if delete else ChangeType.UPSERT,
                last_modified=None if delete else last_modified,
                storage_connection=dataset.storage_connection,
                trace_id=job.trace_id,
                sync_job_id=job.id,
                info=None if delete or result is None else result.info,
            )
        )


def _same_info(row: CatalogueFile, result: InspectedObject) -> bool:
    info = result.info
    return (
        row.status is info.status
        and row.format == info.format
        and row.width == info.width
        and row.height == info.height
        and row.frames == info.frames
        and row.mode == info.mode
        and (row.error or None) == (info.error or None)
    )


async def _prefetched(pages: AsyncIterator[ListingPage]) -> AsyncIterator[tuple[datetime, ListingPage]]:
    """Yields (time the request was sent, page) while the next page is already being fetched."""

    async def fetch() -> tuple[datetime, ListingPage] | None:
        started = datetime.now(UTC)
        try:
            return started, await anext(pages)
        except StopAsyncIteration:
            return None

    pending = asyncio.create_task(fetch())
    try:
        while True:
            item = await pending
            if item is None:
                return
            pending = asyncio.create_task(fetch())
            yield item
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await pending
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


def _first_cause(exc: BaseException) -> BaseException:
    """The exception that matters inside a task group's exception group."""
    if isinstance(exc, BaseExceptionGroup):
        causes = [_first_cause(inner) for inner in exc.exceptions]
        for kind in (VersionLimitExceeded, JobCancelled):
            for cause in causes:
                if isinstance(cause, kind):
                    return cause
        for cause in causes:
            if not isinstance(cause, asyncio.CancelledError):
                return cause
        return causes[0]
    return exc
