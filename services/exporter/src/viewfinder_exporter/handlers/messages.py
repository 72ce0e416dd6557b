"""Records of the exporter as protobuf messages."""

from __future__ import annotations

from viewfinder.v1 import common_pb2, dataset_pb2, export_pb2
from viewfinder_common.timestamps import to_timestamp
from viewfinder_exporter.adapters.jobs import ExportJobRecord
from viewfinder_exporter.adapters.logical import ItemRecord, LogicalDatasetRecord, LogicalVersionRecord
from viewfinder_exporter.domain.jobs import JobState
from viewfinder_exporter.domain.records import ExportRecord, TagSnapshot

_JOB_STATES = {
    JobState.PENDING: common_pb2.JOB_STATE_PENDING,
    JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}
_TAG_SOURCES = {"ai": common_pb2.TAG_SOURCE_AI, "user": common_pb2.TAG_SOURCE_USER}


def job_state(job: ExportJobRecord) -> common_pb2.JobState.ValueType:
    """The proto state; a RUNNING job asked to stop is CANCELLING."""
    if job.state is JobState.RUNNING and job.cancel_requested:
        return common_pb2.JOB_STATE_CANCELLING
    return _JOB_STATES[job.state]


def export_job_message(job: ExportJobRecord) -> export_pb2.ExportJob:
    """The ExportJob of a stored job."""
    counts = job.counts
    message = export_pb2.ExportJob(
        job=common_pb2.Job(
            id=job.id,
            kind=common_pb2.JOB_KIND_EXPORT,
            mode=common_pb2.JOB_MODE_FULL,
            state=job_state(job),
            dataset_id=job.dataset_id,
            dataset_version_id=job.dataset_version_id,
            progress=common_pb2.JobProgress(
                total_items=counts.total_items,
                processed_items=counts.processed_items,
                succeeded_items=counts.records_written,
                failed_items=0,
                skipped_items=counts.skipped_items,
            ),
            error=job.error,
            create_time=to_timestamp(job.created_at),
            start_time=to_timestamp(job.started_at),
            update_time=to_timestamp(job.updated_at),
            end_time=to_timestamp(job.finished_at) if job.state.terminal else None,
            resume_count=job.resume_count,
        ),
        counts=export_pb2.ExportCounts(
            records_written=counts.records_written, bytes_written=counts.bytes_written
        ),
        manifest_uri=job.outputs.manifest_uri,
        summary_uri=job.outputs.summary_uri,
        manifest_sha256=job.outputs.manifest_sha256,
        logical_dataset_version_id=job.outputs.logical_dataset_version_id,
    )
    request = job.request
    selection = request.WhichOneof("selection")
    if selection == "search":
        message.search.CopyFrom(request.search)
    elif selection == "query":
        message.query.CopyFrom(request.query)
    elif selection == "files":
        message.files.CopyFrom(request.files)
    target = request.WhichOneof("target")
    if target == "manifest":
        message.manifest.CopyFrom(request.manifest)
    elif target == "logical_dataset":
        message.logical_dataset.CopyFrom(request.logical_dataset)
    return message


def logical_dataset_message(record: LogicalDatasetRecord) -> export_pb2.LogicalDataset:
    """The LogicalDataset of a record."""
    return export_pb2.LogicalDataset(
        id=record.id,
        name=record.name,
        description=record.description,
        latest_version=record.latest_version,
        version_count=record.version_count,
        create_time=to_timestamp(record.created_at),
        update_time=to_timestamp(record.updated_at),
    )


def logical_version_message(record: LogicalVersionRecord) -> export_pb2.LogicalDatasetVersion:
    """The LogicalDatasetVersion of a record."""
    return export_pb2.LogicalDatasetVersion(
        id=record.id,
        logical_dataset_id=record.logical_dataset_id,
        number=record.number,
        name=record.name,
        description=record.description,
        item_count=record.item_count,
        export_job_id=record.export_job_id,
        checksum=record.checksum,
        create_time=to_timestamp(record.created_at),
    )


def tag_message(tag: TagSnapshot) -> common_pb2.Tag:
    """The Tag of a snapshot."""
    message = common_pb2.Tag(
        name=tag.name,
        value=tag.value,
        source=_TAG_SOURCES.get(tag.source, common_pb2.TAG_SOURCE_UNSPECIFIED),
        model=tag.model,
        tag_definition_id=tag.definition_id,
        tag_definition_version=tag.definition_version,
    )
    if tag.confidence is not None:
        message.confidence = tag.confidence
    return message


def file_message(record: ExportRecord) -> dataset_pb2.File:
    """The File of a snapshot: the metadata as of export (the file was ACTIVE then)."""
    return dataset_pb2.File(
        id=record.file_id,
        dataset_id=record.dataset_id,
        dataset_version_id=record.dataset_version_id,
        uri=record.uri,
        bucket=record.bucket,
        key=record.key,
        size=record.size,
        etag=record.etag,
        last_modified=to_timestamp(record.last_modified),
        format=record.format,
        width=record.width,
        height=record.height,
        frames=record.frames,
        mode=record.mode,
        status=dataset_pb2.FILE_STATUS_ACTIVE,
    )


def item_message(item: ItemRecord) -> export_pb2.LogicalDatasetItem:
    """The LogicalDatasetItem of an item."""
    record = item.record
    message = export_pb2.LogicalDatasetItem(
        file=file_message(record),
        tags=[tag_message(tag) for tag in record.tags],
        storage_connection=record.storage_connection,
    )
    if record.score is not None:
        message.score = record.score
    return message
