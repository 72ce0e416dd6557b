"""Translation between the ingest records and the protobuf messages of dataset.proto."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from viewfinder.v1 import common_pb2, dataset_pb2
from viewfinder_common.timestamps import to_timestamp
from viewfinder_ingest.domain.models import (
    CatalogueFile,
    Dataset,
    DatasetVersion,
    FileStatus,
    JobState,
    SyncJob,
    SyncMode,
)

_FILE_STATUS = {
    FileStatus.ACTIVE: dataset_pb2.FILE_STATUS_ACTIVE,
    FileStatus.DELETED: dataset_pb2.FILE_STATUS_DELETED,
    FileStatus.UNSUPPORTED: dataset_pb2.FILE_STATUS_UNSUPPORTED,
    FileStatus.CORRUPT: dataset_pb2.FILE_STATUS_CORRUPT,
}
FILE_STATUS_FROM_PROTO = {proto: status for status, proto in _FILE_STATUS.items()}
_JOB_STATE = {
    JobState.PENDING: common_pb2.JOB_STATE_PENDING,
    JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}
JOB_MODE_FROM_PROTO = {
    common_pb2.JOB_MODE_FULL: SyncMode.FULL,
    common_pb2.JOB_MODE_INCREMENTAL: SyncMode.INCREMENTAL,
}
_JOB_MODE = {mode: proto for proto, mode in JOB_MODE_FROM_PROTO.items()}


def settings_to_dict(message: Message) -> dict[str, Any]:
    """A settings sub-message as stored (proto field names, defaults left out)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def dataset_to_proto(dataset: Dataset) -> dataset_pb2.Dataset:
    """The API form of a dataset."""
    message = dataset_pb2.Dataset(
        id=dataset.id,
        name=dataset.name,
        description=dataset.description,
        storage_connection=dataset.storage_connection,
        bucket=dataset.bucket,
        prefix=dataset.prefix,
        content_type=dataset_pb2.CONTENT_TYPE_IMAGE,
        latest_version=dataset.latest_version,
        create_time=to_timestamp(dataset.created_at),
        update_time=to_timestamp(dataset.updated_at),
    )
    json_format.ParseDict(dataset.labeling, message.labeling, ignore_unknown_fields=True)
    json_format.ParseDict(dataset.indexing, message.indexing, ignore_unknown_fields=True)
    return message


def version_to_proto(version: DatasetVersion) -> dataset_pb2.DatasetVersion:
    """The API form of a dataset version."""
    return dataset_pb2.DatasetVersion(
        id=version.id,
        dataset_id=version.dataset_id,
        number=version.number,
        name=version.name,
        description=version.description,
        active_file_count=version.active_file_count,
        file_count=version.file_count,
        last_sync_job_id=version.last_sync_job_id,
        create_time=to_timestamp(version.created_at),
        update_time=to_timestamp(version.updated_at),
    )


def file_to_proto(row: CatalogueFile) -> dataset_pb2.File:
    """The API form of a catalogue file."""
    return dataset_pb2.File(
        id=row.id,
        dataset_id=row.dataset_id,
        dataset_version_id=row.version_id,
        uri=row.uri,
        bucket=row.bucket,
        key=row.key,
        size=row.size,
        etag=row.etag,
        last_modified=to_timestamp(row.last_modified),
        format=row.format or "",
        width=row.width or 0,
        height=row.height or 0,
        frames=row.frames or 0,
        mode=row.mode or "",
        status=_FILE_STATUS[row.status],
        error=row.error or "",
        create_time=to_timestamp(row.created_at),
        update_time=to_timestamp(row.updated_at),
    )


def sync_job_to_proto(job: SyncJob) -> dataset_pb2.SyncJob:
    """The API form of a sync job: shared job fields plus sync counts.

    Progress items are listed objects: failed = corrupt or unreadable,
    skipped = unchanged or unsupported, succeeded = the rest.
    """
    counts = job.counts
    state = _JOB_STATE[job.state]
    if job.state is JobState.RUNNING and job.cancel_requested:
        state = common_pb2.JOB_STATE_CANCELLING
    failed = counts.corrupt + counts.failed
    skipped = counts.unchanged + counts.unsupported
    progress = common_pb2.JobProgress(
        total_items=counts.listed if job.state is JobState.SUCCEEDED else 0,
        processed_items=counts.listed,
        succeeded_items=max(counts.listed - failed - skipped, 0),
        failed_items=failed,
        skipped_items=skipped,
    )
    shared = common_pb2.Job(
        id=job.id,
        kind=common_pb2.JOB_KIND_SYNC,
        mode=_JOB_MODE[job.mode],
        state=state,
        dataset_id=job.dataset_id,
        dataset_version_id=job.version_id,
        progress=progress,
        error=job.error or "",
        recent_errors=[
            common_pb2.ItemError(
                file_id=item.file_id,
                uri=item.uri,
                reason=item.reason,
                occur_time=to_timestamp(item.occurred_at),
            )
            for item in job.recent_errors
        ],
        create_time=to_timestamp(job.created_at),
        start_time=to_timestamp(job.started_at),
        update_time=to_timestamp(job.updated_at),
        end_time=to_timestamp(job.finished_at)
        if job.state not in {JobState.PENDING, JobState.RUNNING}
        else None,
        resume_count=job.resume_count,
    )
    return dataset_pb2.SyncJob(
        job=shared,
        counts=dataset_pb2.SyncCounts(
            listed=counts.listed,
            added=counts.added,
            changed=counts.changed,
            unchanged=counts.unchanged,
            deleted=counts.deleted,
            unsupported=counts.unsupported,
            corrupt=counts.corrupt,
            events_published=counts.events_published,
        ),
    )
