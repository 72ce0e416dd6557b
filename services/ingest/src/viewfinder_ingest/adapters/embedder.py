"""The embedder's EmbedService as DatasetService uses it: a dataset's active index and switch jobs.

Every call has a deadline. The embedder's own refusals keep their meaning
(INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION); anything else — it is
down, slow or broken — is UNAVAILABLE, so that an update that needs a new
index never succeeds without one.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from viewfinder.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc
from viewfinder_common.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable

_REFUSALS: dict[grpc.StatusCode, type[DomainError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


@dataclass(frozen=True)
class ActiveIndex:
    """The index search uses for a dataset, with the connections it was built with."""

    name: str
    model_connection: str
    vector_store_connection: str


class EmbedderIndexes:
    """EmbedService calls behind switching a dataset's indexing connections."""

    def __init__(self, channel: grpc.aio.Channel, *, target: str, deadline_s: float) -> None:
        self._stub = embedding_pb2_grpc.EmbedServiceStub(channel)
        self._target = target
        self._deadline_s = deadline_s

    def _error(self, action: str, err: grpc.aio.AioRpcError) -> DomainError:
        refusal = _REFUSALS.get(err.code())
        if refusal is not None:
            return refusal(f"the embedder refused to {action}: {err.details()}")
        return Unavailable(
            f"the embedder at {self._target} could not {action} ({err.code().name}): {err.details()}"
        )

    async def active_index(self, dataset_id: str) -> ActiveIndex | None:
        """The dataset's active index, or None before its first index exists."""
        try:
            response = await self._stub.ListIndexes(
                embedding_pb2.ListIndexesRequest(dataset_id=dataset_id), timeout=self._deadline_s
            )
        except grpc.aio.AioRpcError as err:
            raise self._error("list the dataset's indexes", err) from err
        for index in response.indexes:
            if index.active:
                return ActiveIndex(index.name, index.model_connection, index.vector_store_connection)
        return None

    async def start_switch(
        self, *, dataset_version_id: str, index_name: str, model_connection: str, vector_store_connection: str
    ) -> str:
        """Starts building ``index_name`` with these connections (empty: the dataset's settings, then
        the embedder's defaults); it becomes active when the job succeeds. Returns the job id.

        INCREMENTAL into a new index embeds every file once and skips those
        the pipeline already wrote there during the build.
        """
        try:
            response = await self._stub.StartIndexJob(
                embedding_pb2.StartIndexJobRequest(
                    dataset_version_id=dataset_version_id,
                    index_name=index_name,
                    model_connection=model_connection,
                    vector_store_connection=vector_store_connection,
                    mode=common_pb2.JOB_MODE_INCREMENTAL,
                    activate_on_success=True,
                ),
                timeout=self._deadline_s,
            )
        except grpc.aio.AioRpcError as err:
            raise self._error(f"start an index job into {index_name}", err) from err
        return response.job.job.id

    async def cancel_job(self, job_id: str) -> bool:
        """Cancels an index job; returns whether it had already SUCCEEDED (its index is active then)."""
        try:
            response = await self._stub.CancelIndexJob(
                embedding_pb2.CancelIndexJobRequest(job_id=job_id), timeout=self._deadline_s
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return False  # nothing left to stop
            raise self._error(f"cancel index job {job_id}", err) from err
        return response.job.job.state == common_pb2.JOB_STATE_SUCCEEDED
