"""Starting, inspecting, cancelling and resuming index jobs (EmbedService's job rpcs)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from viewfinder_common.errors import FailedPrecondition, InvalidArgument, NotFound
from viewfinder_embedder.domain.index_jobs import IndexJob, IndexJobRunner, IndexJobStore, JobMode, JobState
from viewfinder_embedder.domain.indexes import IndexDirectory
from viewfinder_embedder.domain.ports import IndexRecord, IndexState

MAX_CONCURRENCY = 256


class VersionLookup(Protocol):
    """Which dataset a version belongs to."""

    async def dataset_of_version(self, dataset_version_id: str) -> str | None:
        """The version's dataset id, or None if the version does not exist."""


@dataclass(frozen=True)
class StartIndexJob:
    """A validated StartIndexJob request."""

    dataset_version_id: str
    index_name: str
    model_connection: str
    vector_store_connection: str
    mode: JobMode
    max_concurrency: int
    activate_on_success: bool


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgument(f"{what} {value!r} is not a UUID") from None


class IndexJobService:
    """The job rpcs' logic."""

    def __init__(
        self, jobs: IndexJobStore, runner: IndexJobRunner, directory: IndexDirectory, versions: VersionLookup
    ) -> None:
        self._jobs = jobs
        self._runner = runner
        self._directory = directory
        self._versions = versions

    async def start(self, request: StartIndexJob) -> IndexJob:
        """Validates, finds or creates the index, and queues a PENDING job."""
        version_id = _uuid(request.dataset_version_id, "dataset_version_id")
        if request.max_concurrency < 0 or request.max_concurrency > MAX_CONCURRENCY:
            raise InvalidArgument(
                f"max_concurrency must be 0 (default) to {MAX_CONCURRENCY}, got {request.max_concurrency}"
            )
        dataset_id = await self._versions.dataset_of_version(version_id)
        if dataset_id is None:
            raise NotFound(f"dataset version {version_id} does not exist")
        index = await self._index_for(dataset_id, request)
        if await self._jobs.active_job_for_index(index.name) is not None:
            raise FailedPrecondition(f"index {index.name!r} already has a pending or running index job")
        if request.activate_on_success and not index.active:
            await self._supersede_switches(dataset_id, index.name)
        job = await self._jobs.create(
            IndexJob(
                id="",
                mode=request.mode,
                state=JobState.PENDING,
                dataset_id=dataset_id,
                dataset_version_id=version_id,
                index_name=index.name,
                model_connection=index.model_connection,
                model_id=index.model.id,
                model_version=index.model.version,
                max_concurrency=request.max_concurrency or self._runner.default_concurrency,
                activate_on_success=request.activate_on_success,
            )
        )
        self._runner.wake()
        return job

    async def _supersede_switches(self, dataset_id: str, index_name: str) -> None:
        """The newest switch wins: other jobs that would activate another index of the dataset are cancelled.

        Without this, two builds could finish in either order and the older
        one could become active last.
        """
        for other in await self._jobs.activation_jobs(dataset_id):
            if other.index_name != index_name:
                await self.cancel(other.id)

    async def _index_for(self, dataset_id: str, request: StartIndexJob) -> IndexRecord:
        model_connection, store_connection = await self._directory.connections_for(dataset_id)
        if not request.index_name:
            index = await self._directory.active_or_default(dataset_id)
        else:
            existing = await self._directory.catalogue.get_index(request.index_name)
            if existing is not None:
                if existing.dataset_id != dataset_id:
                    raise InvalidArgument(f"index {request.index_name!r} belongs to another dataset")
                index = existing
            else:
                return await self._directory.create(
                    dataset_id,
                    request.index_name,
                    model_connection=request.model_connection or model_connection,
                    store_connection=request.vector_store_connection or store_connection,
                    state=IndexState.BUILDING,
                )
        if request.model_connection and request.model_connection != index.model_connection:
            raise InvalidArgument(
                f"index {index.name!r} is built with model connection {index.model_connection!r}; "
                f"to embed with {request.model_connection!r}, name a new index"
            )
        if (
            request.vector_store_connection
            and request.vector_store_connection != index.vector_store_connection
        ):
            raise InvalidArgument(
                f"index {index.name!r} lives in vector store {index.vector_store_connection!r}, "
                f"not {request.vector_store_connection!r}"
            )
        # Refuse now rather than failing the job later.
        await self._directory.model_for(index)
        return index

    async def get(self, job_id: str) -> IndexJob:
        """An index job, or NOT_FOUND."""
        job = await self._jobs.get(_uuid(job_id, "job_id"))
        if job is None:
            raise NotFound(f"index job {job_id} does not exist")
        return job

    async def cancel(self, job_id: str) -> IndexJob:
        """Cancels a pending job, asks a running one to stop; a finished job is returned as it is."""
        job = await self._jobs.request_cancel(_uuid(job_id, "job_id"))
        if job is None:
            raise NotFound(f"index job {job_id} does not exist")
        if job.state is JobState.CANCELLED:
            # A pending job never ran, so no worker will stop feeding its index.
            await self._directory.abandon_build(job.index_name)
        return job

    async def resume(self, job_id: str) -> IndexJob:
        """Requeues a FAILED or CANCELLED job from its checkpoint."""
        current = await self.get(job_id)
        if current.state not in (JobState.FAILED, JobState.CANCELLED):
            raise FailedPrecondition(
                f"index job {job_id} is {current.state.value}; only failed or cancelled jobs can be resumed"
            )
        index = await self._directory.catalogue.get_index(current.index_name)
        # The pipeline stopped writing to an abandoned build: it becomes a
        # build again and the job rescans the version, skipping current files.
        rescan = index is not None and index.state is IndexState.FAILED
        if rescan:
            await self._directory.catalogue.set_index_state(current.index_name, IndexState.BUILDING)
        job = await self._jobs.resume(current.id, rescan=rescan)
        if job is None:
            raise FailedPrecondition(f"index job {job_id} changed state; try again")
        self._runner.wake()
        return job
