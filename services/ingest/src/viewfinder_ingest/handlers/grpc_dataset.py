# ruff: noqa: N802 - method names are the rpc names of dataset.proto
"""The DatasetService gRPC servicer: validates, translates, delegates.

Domain errors raised here or below (InvalidArgument, NotFound, …) become gRPC
status codes in the shared server interceptor.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from viewfinder.v1 import dataset_pb2, dataset_pb2_grpc
from viewfinder_common.connections.models import ConnectionKind, StoredConnection
from viewfinder_common.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from viewfinder_ingest.adapters.catalogue import Catalogue
from viewfinder_ingest.adapters.embedder import ActiveIndex
from viewfinder_ingest.domain import requests
from viewfinder_ingest.domain.models import Dataset, FileStatus
from viewfinder_ingest.handlers.convert import (
    FILE_STATUS_FROM_PROTO,
    JOB_MODE_FROM_PROTO,
    dataset_to_proto,
    file_to_proto,
    settings_to_dict,
    sync_job_to_proto,
    version_to_proto,
)

# The storage connection every dataset uses unless it names another (the
# service's own S3 settings).
DEFAULT_CONNECTION = "default"

# Stored connection kinds each indexing setting accepts. A name that is not
# stored is one the embedder configures itself (e.g. "offline", "pgvector",
# "milvus"); the embedder decides on those when the switch job starts.
EMBEDDING_MODEL_KINDS = frozenset(
    {
        ConnectionKind.DASHSCOPE_EMBEDDING,
        ConnectionKind.PAI_EAS,
        ConnectionKind.LOCAL_MODEL_DIRECTORY,
        ConnectionKind.OFFLINE_DEFAULT,
    }
)
VECTOR_DATABASE_KINDS = frozenset(
    {
        ConnectionKind.MILVUS,
        ConnectionKind.OPENSEARCH,
        ConnectionKind.ELASTICSEARCH,
        ConnectionKind.LINDORM,
        ConnectionKind.HOLOGRES,
        ConnectionKind.PGVECTOR,
    }
)
# Indexing fields the services set, never the caller.
_INDEXING_OUTPUT_FIELDS = ("active_index", "switch_job_id")


class BucketChecker(Protocol):
    """Confirms a bucket exists and can be read on the storage connection."""

    async def check_bucket(self, bucket: str) -> None:
        """Raises a DomainError when the bucket cannot be used."""
        ...


class SyncLauncher(Protocol):
    """Starts accepted sync jobs in the background."""

    def launch(self, job_id: str) -> None:
        """Starts a PENDING job."""
        ...


class ConnectionLookup(Protocol):
    """Connections stored through ConnectionService."""

    async def get_by_name(self, name: str) -> StoredConnection:
        """The connection named ``name``; NotFound if none is stored."""
        ...


class IndexSwitcher(Protocol):
    """The embedder's side of switching a dataset's indexing connections."""

    async def active_index(self, dataset_id: str) -> ActiveIndex | None:
        """The index search uses for the dataset, if it has one."""
        ...

    async def start_switch(
        self, *, dataset_version_id: str, index_name: str, model_connection: str, vector_store_connection: str
    ) -> str:
        """Starts building a new index that becomes active when complete; returns the job id."""
        ...

    async def cancel_job(self, job_id: str) -> bool:
        """Cancels an index job; returns whether it had already succeeded."""
        ...


class DatasetServicer(dataset_pb2_grpc.DatasetServiceServicer):
    """DatasetService over the catalogue, the bucket, the sync runner and the embedder."""

    def __init__(
        self,
        catalogue: Catalogue,
        buckets: BucketChecker,
        runner: SyncLauncher,
        *,
        version_file_limit: int,
        storage_connections: frozenset[str] = frozenset({DEFAULT_CONNECTION}),
        stored_connections: ConnectionLookup | None = None,
        indexes: IndexSwitcher | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._buckets = buckets
        self._runner = runner
        self._version_file_limit = version_file_limit
        self._connections = storage_connections
        self._stored_connections = stored_connections
        self._indexes = indexes

    async def CreateDataset(
        self, request: dataset_pb2.CreateDatasetRequest, context: Any
    ) -> dataset_pb2.CreateDatasetResponse:
        """Registers a bucket prefix as a dataset with an empty v1."""
        name = requests.validate_dataset_name(request.name)
        bucket = requests.validate_bucket(request.bucket)
        prefix = requests.validate_prefix(request.prefix)
        connection = request.storage_connection or DEFAULT_CONNECTION
        if connection not in self._connections:
            raise InvalidArgument(
                f"storage_connection {connection!r} is not configured; known: {', '.join(sorted(self._connections))}"
            )
        if request.content_type not in {dataset_pb2.CONTENT_TYPE_UNSPECIFIED, dataset_pb2.CONTENT_TYPE_IMAGE}:
            raise InvalidArgument("content_type must be CONTENT_TYPE_IMAGE")
        _check_labeling(request.labeling)
        indexing = _without_output_fields(settings_to_dict(request.indexing))
        await self._check_indexing_connections(indexing)
        await self._buckets.check_bucket(bucket)
        dataset, version = await self._catalogue.create_dataset(
            name=name,
            description=request.description,
            storage_connection=connection,
            bucket=bucket,
            prefix=prefix,
            version_file_limit=self._version_file_limit,
            labeling=settings_to_dict(request.labeling),
            indexing=indexing,
        )
        return dataset_pb2.CreateDatasetResponse(
            dataset=dataset_to_proto(dataset), version=version_to_proto(version)
        )

    async def GetDataset(
        self, request: dataset_pb2.GetDatasetRequest, context: Any
    ) -> dataset_pb2.GetDatasetResponse:
        """One dataset by id or name."""
        lookup = request.WhichOneof("lookup")
        if lookup == "dataset_id":
            dataset = await self._catalogue.get_dataset(
                requests.validate_id(request.dataset_id, "dataset_id")
            )
        elif lookup == "name" and request.name:
            dataset = await self._catalogue.get_dataset_by_name(request.name)
        else:
            raise InvalidArgument("set dataset_id or name")
        return dataset_pb2.GetDatasetResponse(dataset=dataset_to_proto(dataset))

    async def ListDatasets(
        self, request: dataset_pb2.ListDatasetsRequest, context: Any
    ) -> dataset_pb2.ListDatasetsResponse:
        """Datasets by name, one page at a time."""
        size = requests.page_size(request.page_size)
        position = requests.decode_page_token(request.page_token, ["after_name"])
        datasets = await self._catalogue.list_datasets(
            after_name=position["after_name"] if position else None, limit=size + 1
        )
        token = ""
        if len(datasets) > size:
            datasets = datasets[:size]
            token = requests.encode_page_token({"after_name": datasets[-1].name})
        return dataset_pb2.ListDatasetsResponse(
            datasets=[dataset_to_proto(d) for d in datasets], next_page_token=token
        )

    async def UpdateDataset(
        self, request: dataset_pb2.UpdateDatasetRequest, context: Any
    ) -> dataset_pb2.UpdateDatasetResponse:
        """Changes description, labeling or indexing settings named in the mask.

        Changing the indexing connections so that they differ from the active
        index's starts an index job into a new index (its id is
        ``indexing.switch_job_id``); search keeps using the active index until
        the job succeeds and makes the new one active.
        """
        dataset_id = requests.validate_id(request.dataset.id, "dataset.id")
        paths = requests.validate_update_mask(request.update_mask.paths)
        _check_labeling(request.dataset.labeling)
        current = await self._catalogue.get_dataset(dataset_id)
        updated = requests.apply_update_mask(
            paths,
            {"description": current.description, "labeling": current.labeling, "indexing": current.indexing},
            {
                "description": request.dataset.description,
                "labeling": settings_to_dict(request.dataset.labeling),
                "indexing": settings_to_dict(request.dataset.indexing),
            },
        )
        updated["indexing"] = _without_output_fields(updated["indexing"])
        for name in _INDEXING_OUTPUT_FIELDS:
            if current.indexing.get(name):
                updated["indexing"][name] = current.indexing[name]
        if _indexing_connections(updated["indexing"]) == _indexing_connections(current.indexing):
            dataset = await self._save(dataset_id, updated)
        else:
            await self._check_indexing_connections(updated["indexing"])
            dataset = await self._switch_indexing(current, updated)
        return dataset_pb2.UpdateDatasetResponse(dataset=dataset_to_proto(dataset))

    async def _save(self, dataset_id: str, fields: dict[str, Any]) -> Dataset:
        return await self._catalogue.update_dataset(
            dataset_id,
            description=fields["description"],
            labeling=fields["labeling"],
            indexing=fields["indexing"],
        )

    async def _check_indexing_connections(self, indexing: dict[str, Any]) -> None:
        """INVALID_ARGUMENT for a stored connection of the wrong kind (a model named as the vector store ...)."""
        for setting, kinds, what in (
            ("model_connection", EMBEDDING_MODEL_KINDS, "an embedding model service"),
            ("vector_store_connection", VECTOR_DATABASE_KINDS, "a vector database"),
        ):
            name = indexing.get(setting, "")
            if not name or self._stored_connections is None:
                continue
            try:
                stored = await self._stored_connections.get_by_name(name)
            except NotFound:
                continue  # one the embedder configures itself; it says whether it knows the name
            if stored.spec.kind not in kinds:
                raise InvalidArgument(
                    f"indexing.{setting} {name!r} is a {stored.spec.kind.value} connection; it must name "
                    f"{what} ({', '.join(sorted(kind.value for kind in kinds))})"
                )

    async def _switch_indexing(self, current: Dataset, updated: dict[str, Any]) -> Dataset:
        """Saves new indexing connections and starts (or cancels) the build of the index they need.

        Nothing is saved unless the embedder took the change: if it cannot be
        reached, or refuses the connections, the update fails (UNAVAILABLE, or
        its INVALID_ARGUMENT / FAILED_PRECONDITION) and the dataset is as before.
        """
        if self._indexes is None:
            raise Unavailable("this ingest process has no embedder to build the dataset's new index with")
        indexing = updated["indexing"]
        active = await self._indexes.active_index(current.id)
        previous_job = str(current.indexing.get("switch_job_id") or "")
        indexing.pop("switch_job_id", None)
        dataset = await self._save(current.id, updated)
        try:
            needs_index = _needs_new_index(indexing, current.indexing, active)
            if not needs_index and previous_job:
                # Back to the active index's connections: the build is not wanted any more.
                # If it won the race and is already active, build the wanted one again.
                needs_index = await self._indexes.cancel_job(previous_job)
            if needs_index:
                job_id = await self._indexes.start_switch(
                    dataset_version_id=await self._catalogue.latest_version_id(current.id),
                    index_name=_new_index_name(current.id),
                    model_connection=str(indexing.get("model_connection") or ""),
                    vector_store_connection=str(indexing.get("vector_store_connection") or ""),
                )
        except DomainError:
            await self._save(
                current.id,
                {
                    "description": current.description,
                    "labeling": current.labeling,
                    "indexing": current.indexing,
                },
            )
            raise
        if not needs_index:
            return dataset
        indexing["switch_job_id"] = job_id
        return await self._save(current.id, updated)

    async def CreateDatasetVersion(
        self, request: dataset_pb2.CreateDatasetVersionRequest, context: Any
    ) -> dataset_pb2.CreateDatasetVersionResponse:
        """The next version, empty or seeded with a base version's files."""
        dataset_id = requests.validate_id(request.dataset_id, "dataset_id")
        base = (
            requests.validate_id(request.base_version_id, "base_version_id")
            if request.base_version_id
            else None
        )
        version = await self._catalogue.create_version(
            dataset_id, description=request.description, base_version_id=base
        )
        return dataset_pb2.CreateDatasetVersionResponse(version=version_to_proto(version))

    async def GetDatasetVersion(
        self, request: dataset_pb2.GetDatasetVersionRequest, context: Any
    ) -> dataset_pb2.GetDatasetVersionResponse:
        """One version with its counts."""
        version_id = requests.validate_id(request.dataset_version_id, "dataset_version_id")
        return dataset_pb2.GetDatasetVersionResponse(
            version=version_to_proto(await self._catalogue.get_version(version_id))
        )

    async def ListDatasetVersions(
        self, request: dataset_pb2.ListDatasetVersionsRequest, context: Any
    ) -> dataset_pb2.ListDatasetVersionsResponse:
        """Versions newest first."""
        dataset_id = requests.validate_id(request.dataset_id, "dataset_id")
        size = requests.page_size(request.page_size)
        position = requests.decode_page_token(request.page_token, ["before_number"])
        await self._catalogue.get_dataset(dataset_id)  # NOT_FOUND for an unknown dataset
        versions = await self._catalogue.list_versions(
            dataset_id, before_number=int(position["before_number"]) if position else None, limit=size + 1
        )
        token = ""
        if len(versions) > size:
            versions = versions[:size]
            token = requests.encode_page_token({"before_number": versions[-1].number})
        return dataset_pb2.ListDatasetVersionsResponse(
            versions=[version_to_proto(v) for v in versions], next_page_token=token
        )

    async def StartSync(
        self, request: dataset_pb2.StartSyncRequest, context: Any
    ) -> dataset_pb2.StartSyncResponse:
        """Accepts a sync job and starts it in the background."""
        dataset_id = requests.validate_id(request.dataset_id, "dataset_id")
        mode = JOB_MODE_FROM_PROTO.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode must be JOB_MODE_FULL or JOB_MODE_INCREMENTAL")
        dataset = await self._catalogue.get_dataset(dataset_id)
        if request.dataset_version_id:
            version = await self._catalogue.get_version(
                requests.validate_id(request.dataset_version_id, "dataset_version_id")
            )
            if version.dataset_id != dataset.id:
                raise InvalidArgument(f"version {version.id} belongs to another dataset")
            version_id = version.id
        else:
            version_id = await self._catalogue.latest_version_id(dataset.id)
        live = await self._catalogue.count_live_files(version_id)
        if live > dataset.version_file_limit:
            raise FailedPrecondition(
                f"the version already holds {live} files, more than its limit of {dataset.version_file_limit}"
            )
        job = await self._catalogue.create_sync_job(dataset.id, version_id, mode, trace_id=uuid.uuid4().hex)
        self._runner.launch(job.id)
        return dataset_pb2.StartSyncResponse(job=sync_job_to_proto(job))

    async def GetJob(self, request: dataset_pb2.GetJobRequest, context: Any) -> dataset_pb2.GetJobResponse:
        """A sync job with state, progress and counts."""
        job = await self._catalogue.get_sync_job(requests.validate_id(request.job_id, "job_id"))
        return dataset_pb2.GetJobResponse(job=sync_job_to_proto(job))

    async def CancelJob(
        self, request: dataset_pb2.CancelJobRequest, context: Any
    ) -> dataset_pb2.CancelJobResponse:
        """Asks a job to stop after its current pages; finished pages stay."""
        job = await self._catalogue.cancel_sync_job(requests.validate_id(request.job_id, "job_id"))
        return dataset_pb2.CancelJobResponse(job=sync_job_to_proto(job))

    async def ResumeJob(
        self, request: dataset_pb2.ResumeJobRequest, context: Any
    ) -> dataset_pb2.ResumeJobResponse:
        """Continues a failed or cancelled job after its last finished page."""
        job = await self._catalogue.resume_sync_job(requests.validate_id(request.job_id, "job_id"))
        self._runner.launch(job.id)
        return dataset_pb2.ResumeJobResponse(job=sync_job_to_proto(job))

    async def ListFiles(
        self, request: dataset_pb2.ListFilesRequest, context: Any
    ) -> dataset_pb2.ListFilesResponse:
        """Files of a version ordered by key, filtered by status and key prefix."""
        version_id = requests.validate_id(request.dataset_version_id, "dataset_version_id")
        size = requests.page_size(request.page_size)
        position = requests.decode_page_token(request.page_token, ["after_key"])
        statuses: list[FileStatus] = []
        for value in request.statuses:
            if value not in FILE_STATUS_FROM_PROTO:
                raise InvalidArgument(f"statuses contains an unknown status ({value})")
            statuses.append(FILE_STATUS_FROM_PROTO[value])
        await self._catalogue.get_version(version_id)  # NOT_FOUND for an unknown version
        files = await self._catalogue.list_files(
            version_id,
            statuses=statuses or list(FileStatus),
            key_prefix=request.key_prefix,
            after_key=position["after_key"] if position else None,
            limit=size + 1,
        )
        token = ""
        if len(files) > size:
            files = files[:size]
            token = requests.encode_page_token({"after_key": files[-1].key})
        return dataset_pb2.ListFilesResponse(files=[file_to_proto(f) for f in files], next_page_token=token)

    async def GetFile(self, request: dataset_pb2.GetFileRequest, context: Any) -> dataset_pb2.GetFileResponse:
        """One catalogue file."""
        row = await self._catalogue.get_file(requests.validate_id(request.file_id, "file_id"))
        return dataset_pb2.GetFileResponse(file=file_to_proto(row))


def _check_labeling(labeling: dataset_pb2.LabelingSettings) -> None:
    if labeling.tag_definition_id:
        requests.validate_id(labeling.tag_definition_id, "labeling.tag_definition_id")
    if labeling.tag_definition_version < 0:
        raise InvalidArgument("labeling.tag_definition_version must not be negative")


def _without_output_fields(indexing: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in indexing.items() if name not in _INDEXING_OUTPUT_FIELDS}


def _indexing_connections(indexing: dict[str, Any]) -> tuple[str, str]:
    return str(indexing.get("model_connection") or ""), str(indexing.get("vector_store_connection") or "")


def _needs_new_index(wanted: dict[str, Any], before: dict[str, Any], active: ActiveIndex | None) -> bool:
    """Whether the wanted connections differ from those the active index was built with.

    An empty setting means the embedder's default, which only the embedder
    knows: clearing a setting counts as a change (the embedder resolves the
    default for the new index), keeping it empty does not.
    """
    if active is None:
        return True
    for setting, built_with in (
        ("model_connection", active.model_connection),
        ("vector_store_connection", active.vector_store_connection),
    ):
        value = str(wanted.get(setting) or "")
        if value and value != built_with:
            return True
        if not value and before.get(setting):
            return True
    return False


def _new_index_name(dataset_id: str) -> str:
    """``ds_<dataset hex>_<8 random hex>``: a fresh table / collection (the embedder's naming)."""
    return f"ds_{uuid.UUID(dataset_id).hex}_{uuid.uuid4().hex[:8]}"
