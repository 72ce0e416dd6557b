"""EmbedService (embedding.proto): a thin translation between protobuf and the domain."""

from __future__ import annotations

from typing import Any

from viewfinder.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc
from viewfinder_common.errors import InvalidArgument, NotFound
from viewfinder_common.timestamps import to_timestamp
from viewfinder_embedder.domain.index_jobs import IndexJob, JobMode, JobState
from viewfinder_embedder.domain.indexes import IndexDirectory, canonical_dataset_id
from viewfinder_embedder.domain.job_requests import IndexJobService, StartIndexJob
from viewfinder_embedder.domain.model import ModelIdentity, QueryKind
from viewfinder_embedder.domain.ports import IndexRecord
from viewfinder_embedder.domain.queries import QueryEmbedder, QueryVectors

_QUERY_KINDS = {
    QueryKind.TEXT: embedding_pb2.QUERY_KIND_TEXT,
    QueryKind.IMAGE: embedding_pb2.QUERY_KIND_IMAGE,
}
_METRICS = {
    "cosine": embedding_pb2.DISTANCE_METRIC_COSINE,
    "inner_product": embedding_pb2.DISTANCE_METRIC_INNER_PRODUCT,
    "l2": embedding_pb2.DISTANCE_METRIC_L2,
}
_MODES = {common_pb2.JOB_MODE_FULL: JobMode.FULL, common_pb2.JOB_MODE_INCREMENTAL: JobMode.INCREMENTAL}
_MODES_OUT = {mode: proto for proto, mode in _MODES.items()}
_STATES = {
    JobState.PENDING: common_pb2.JOB_STATE_PENDING,
    JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}


def _model(identity: ModelIdentity) -> embedding_pb2.ModelInfo:
    return embedding_pb2.ModelInfo(id=identity.id, version=identity.version)


def _vectors(result: QueryVectors) -> list[embedding_pb2.NamedVector]:
    return [embedding_pb2.NamedVector(field=name, values=values) for name, values in result.vectors.items()]


def index_to_proto(index: IndexRecord, row_count: int) -> embedding_pb2.Index:
    """The API form of an index."""
    return embedding_pb2.Index(
        name=index.name,
        dataset_id=index.dataset_id,
        model=_model(index.model),
        model_connection=index.model_connection,
        vector_store_connection=index.vector_store_connection,
        fields=[
            embedding_pb2.VectorField(
                name=f.name,
                dimension=f.dimension,
                metric=_METRICS.get(f.metric, embedding_pb2.DISTANCE_METRIC_UNSPECIFIED),
                query_kinds=[_QUERY_KINDS[kind] for kind in sorted(f.query_kinds, key=lambda k: k.value)],
            )
            for f in index.fields
        ],
        row_count=row_count,
        active=index.active,
        create_time=to_timestamp(index.create_time),
    )


def job_to_proto(job: IndexJob) -> embedding_pb2.IndexJob:
    """The API form of an index job (RUNNING with cancel requested is CANCELLING)."""
    state = _STATES[job.state]
    if job.state is JobState.RUNNING and job.cancel_requested:
        state = common_pb2.JOB_STATE_CANCELLING
    counts = job.counts
    return embedding_pb2.IndexJob(
        job=common_pb2.Job(
            id=job.id,
            kind=common_pb2.JOB_KIND_INDEX,
            mode=_MODES_OUT[job.mode],
            state=state,
            dataset_id=job.dataset_id,
            dataset_version_id=job.dataset_version_id,
            progress=common_pb2.JobProgress(
                total_items=counts.total,
                processed_items=counts.processed,
                succeeded_items=counts.embedded,
                failed_items=counts.failed,
                skipped_items=counts.skipped,
            ),
            error=job.error,
            recent_errors=[
                common_pb2.ItemError(
                    file_id=f.file_id, uri=f.uri, reason=f.reason, occur_time=to_timestamp(f.occur_time)
                )
                for f in job.recent_errors
            ],
            create_time=to_timestamp(job.create_time),
            start_time=to_timestamp(job.start_time),
            update_time=to_timestamp(job.update_time),
            end_time=to_timestamp(job.end_time),
            resume_count=job.resume_count,
        ),
        index_name=job.index_name,
        model=embedding_pb2.ModelInfo(id=job.model_id, version=job.model_version),
        max_concurrency=job.max_concurrency,
        counts=embedding_pb2.IndexCounts(
            embedded=counts.embedded, deleted=counts.deleted, failed=counts.failed, skipped=counts.skipped
        ),
        model_connection=job.model_connection,
    )


class EmbedServicer(embedding_pb2_grpc.EmbedServiceServicer):
    """EmbedService over the embedder's domain objects."""

    def __init__(self, queries: QueryEmbedder, directory: IndexDirectory, jobs: IndexJobService) -> None:
        self._queries = queries
        self._directory = directory
        self._jobs = jobs

    async def EmbedText(  # noqa: N802 (gRPC method name)
        self, request: embedding_pb2.EmbedTextRequest, context: Any
    ) -> embedding_pb2.EmbedTextResponse:
        """Vectors of a query text in the fields that answer text queries."""
        result = await self._queries.embed_text(request.dataset_id, request.index_name, request.text)
        return embedding_pb2.EmbedTextResponse(
            vectors=_vectors(result), model=_model(result.model), index_name=result.index_name
        )

    async def EmbedImage(  # noqa: N802 (gRPC method name)
        self, request: embedding_pb2.EmbedImageRequest, context: Any
    ) -> embedding_pb2.EmbedImageResponse:
        """Vectors of a query image (bytes or s3:// URI) in the fields that answer image queries."""
        result = await self._queries.embed_image(
            request.dataset_id,
            request.index_name,
            data=request.image_bytes,
            uri=request.image_uri,
            vector_fields=list(request.vector_fields),
        )
        return embedding_pb2.EmbedImageResponse(
            vectors=_vectors(result), model=_model(result.model), index_name=result.index_name
        )

    async def _with_count(self, index: IndexRecord) -> embedding_pb2.Index:
        store = await self._directory.store_for(index)
        return index_to_proto(index, await store.count(index.name))

    async def GetIndex(  # noqa: N802 (gRPC method name)
        self, request: embedding_pb2.GetIndexRequest, context: Any
    ) -> embedding_pb2.GetIndexResponse:
        """An index with its row count."""
        if not request.index_name:
            raise InvalidArgument("index_name is required")
        index = await self._directory.catalogue.get_index(request.index_name)
        if index is None:
            raise NotFound(f"index {request.index_name!r} does not exist")
        return embedding_pb2.GetIndexResponse(index=await self._with_count(index))

    async def ListIndexes(  # noqa: N802 (gRPC method name)
        self, request: embedding_pb2.ListIndexesRequest, context: Any
    ) -> embedding_pb2.ListIndexesResponse:
        """A dataset's indexes, the active one first."""
        dataset_id = canonical_dataset_id(request.dataset_id)
        indexes = await self._directory.catalogue.list_indexes(dataset_id)
        return embedding_pb2.ListIndexesResponse(indexes=[await self._with_count(index) for index in indexes])

    async def StartIndexJob(  # noqa: N802 (gRPC method name)
        self, request: embedding_pb2.StartIndexJobRequest, context: Any
    ) -> embedding_pb2.StartIndexJobResponse:
        """Queues a FULL or INCREMENTAL index job and returns it at once."""
        mode = _MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode must be JOB_MODE_FULL or JOB_MODE_INCREMENTAL")
        job = await self._jobs.start(
            StartIndexJob(
                dataset_version_id=request.dataset_version_id,
                index_name=request.index_name,
                model_connection=request.model_connection,
                vector_store_connection=request.vector_store_connection,
                mode=mode,
                max_concurrency=request.max_concurrency,
                activate_on_success=request.activate_on_success,
            )
        )
        return embedding_pb2.StartIndexJobResponse(job=job_to_proto(job))

    async def GetIndexJob(  # noqa: N802 (gRPC method name)
        self, request: embedding_pb2.GetIndexJobRequest, context: Any
    ) -> embedding_pb2.GetIndexJobResponse:
        """An index job with its progress."""
        return embedding_pb2.GetIndexJobResponse(job=job_to_proto(await self._jobs.get(request.job_id)))

    async def CancelIndexJob(  # noqa: N802 (gRPC method name)
        self, request: embedding_pb2.CancelIndexJobRequest, context: Any
    ) -> embedding_pb2.CancelIndexJobResponse:
        """Cancels (or asks to stop) an index job."""
        return embedding_pb2.CancelIndexJobResponse(job=job_to_proto(await self._jobs.cancel(request.job_id)))

    async def ResumeIndexJob(  # noqa: N802 (gRPC method name)
        self, request: embedding_pb2.ResumeIndexJobRequest, context: Any
    ) -> embedding_pb2.ResumeIndexJobResponse:
        """Requeues a failed or cancelled index job from its checkpoint."""
        return embedding_pb2.ResumeIndexJobResponse(job=job_to_proto(await self._jobs.resume(request.job_id)))
