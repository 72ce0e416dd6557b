"""What the tagger publishes: FileTagged events and dead-letter records.

FileTagged goes to ``viewfinder.file-tagged`` keyed by file id. A file whose
labeling failed for good goes to the dead-letter topic of the topic its event
came from (``viewfinder.file-discovered.dlq.tagger`` or
``viewfinder.file-embedded.dlq.tagger``) with the original bytes; a label
job's file (which came from no event) goes to the file-discovered one as a
FileDiscovered describing the file, so that replaying the dead-letter topic
into its source topic retries exactly those files. The reason is in the
``x-dlq-reason`` header either way.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from faststream.kafka import KafkaBroker
from google.protobuf.timestamp_pb2 import Timestamp

from viewfinder.v1 import common_pb2, events_pb2
from viewfinder_common.events import encode_event, event_headers
from viewfinder_common.kafka import send_to_dead_letter
from viewfinder_tagger.adapters.catalogue import SOURCE_AI, FileRow, TagRow
from viewfinder_tagger.domain.definitions import TagDefinition

HEADER_LABEL_JOB_ID = "x-label-job-id"
HEADER_FILE_ID = "x-file-id"


def tag_message(tag: TagRow) -> common_pb2.Tag:
    """A catalogue tag as the protobuf Tag."""
    message = common_pb2.Tag(
        name=tag.name,
        value=tag.value,
        source=common_pb2.TAG_SOURCE_AI if tag.source == SOURCE_AI else common_pb2.TAG_SOURCE_USER,
        model=tag.model,
        tag_definition_id=tag.definition_id,
        tag_definition_version=tag.definition_version,
    )
    if tag.confidence is not None:
        message.confidence = tag.confidence
    return message


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def file_tagged_event(
    file: FileRow,
    *,
    tags: Sequence[TagRow],
    definition: TagDefinition | None,
    model_id: str,
    label_job_id: str = "",
    trace_id: str = "",
    deleted: bool = False,
) -> events_pb2.FileTagged:
    """The FileTagged event of one labeled (or deleted) file."""
    event = events_pb2.FileTagged(
        event_id=uuid.uuid4().hex,
        dataset_id=file.dataset_id,
        dataset_version_id=file.version_id,
        file_id=file.id,
        uri=file.uri,
        bucket=file.bucket,
        key=file.key,
        etag=file.etag,
        size=0 if deleted else file.size,
        change_type=events_pb2.CHANGE_TYPE_DELETE if deleted else events_pb2.CHANGE_TYPE_UPSERT,
        event_time=_now(),
        trace_id=trace_id,
        tags=[tag_message(t) for t in tags],
        tag_definition_id=definition.id if definition else "",
        tag_definition_version=definition.version if definition else 0,
        model=model_id,
        label_job_id=label_job_id,
    )
    if file.last_modified is not None and not deleted:
        event.last_modified.FromDatetime(file.last_modified)
    return event


def file_discovered_for(file: FileRow, *, trace_id: str, sync_job_id: str = "") -> events_pb2.FileDiscovered:
    """A FileDiscovered describing a file as the catalogue has it (for dead-lettering job files)."""
    event = events_pb2.FileDiscovered(
        event_id=uuid.uuid4().hex,
        dataset_id=file.dataset_id,
        dataset_version_id=file.version_id,
        file_id=file.id,
        uri=file.uri,
        bucket=file.bucket,
        key=file.key,
        etag=file.etag,
        size=file.size,
        change_type=events_pb2.CHANGE_TYPE_UPSERT,
        event_time=_now(),
        trace_id=trace_id,
        sync_job_id=sync_job_id,
    )
    if file.last_modified is not None:
        event.last_modified.FromDatetime(file.last_modified)
    return event


class TaggerEvents:
    """Publishes the tagger's events through the service's broker."""

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        service: str,
        file_tagged_topic: str,
        file_discovered_topic: str,
        file_embedded_topic: str = "viewfinder.file-embedded",
    ) -> None:
        self._broker = broker
        self._service = service
        self._file_tagged_topic = file_tagged_topic
        self._file_discovered_topic = file_discovered_topic
        self._file_embedded_topic = file_embedded_topic

    async def file_tagged(self, event: events_pb2.FileTagged) -> None:
        """Publishes FileTagged keyed by the file id."""
        await self._broker.publish(
            encode_event(event),
            self._file_tagged_topic,
            key=event.file_id.encode(),
            headers=event_headers(event),
        )

    async def dead_letter_event(
        self,
        value: bytes,
        *,
        reason: str,
        error_type: str,
        key: bytes | None,
        partition: int | None,
        offset: int | None,
        from_file_embedded: bool = False,
    ) -> None:
        """Dead-letters a consumed file-discovered (or file-embedded) record with its original bytes."""
        await send_to_dead_letter(
            self._broker,
            service=self._service,
            source_topic=self._file_embedded_topic if from_file_embedded else self._file_discovered_topic,
            value=value,
            reason=reason,
            error_type=error_type,
            key=key,
            partition=partition,
            offset=offset,
        )

    async def dead_letter_file(
        self, file: FileRow, *, reason: str, error_type: str, label_job_id: str, trace_id: str
    ) -> None:
        """Dead-letters a label job's file as a replayable FileDiscovered."""
        event = file_discovered_for(file, trace_id=trace_id)
        await send_to_dead_letter(
            self._broker,
            service=self._service,
            source_topic=self._file_discovered_topic,
            value=encode_event(event),
            reason=reason,
            error_type=error_type,
            key=file.id.encode(),
            extra_headers={
                HEADER_LABEL_JOB_ID: label_job_id,
                HEADER_FILE_ID: file.id,
                **event_headers(event),
            },
        )
