"""Automatic labeling of new and changed files, from ``viewfinder.file-discovered``
and ``viewfinder.file-embedded``.

For each event of a dataset whose labeling is automatic
(``dataset_labeling_settings``), the file is labeled with the dataset's
definition and connection, unless its current content was labeled already
with that definition version (a redelivery, or a label job got there first).

Which topic drives a dataset depends on its model. A model that labels from
the image vector the embedder stored (the offline zero-shot tagger) follows
``file-embedded``: the event says the vector for that content exists, so the
image is neither fetched nor embedded a second time, and nothing needs to
wait for the embedder. Every other model (VLMs) follows ``file-discovered``
and does not wait for the embedder. The other topic's events of that dataset
are skipped. A DELETE is taken from ``file-discovered`` whatever the model: it
removes the file's AI tags (user decisions stay) and announces it.

Events of one file are handled in order; different files concurrently (up to
``max_concurrency`` model calls). A malformed event, an unknown file or a
file that cannot be labeled goes to the source topic's dead-letter topic with
the reason and the batch goes on; only an infrastructure failure (database,
broker) fails the batch, which is then redelivered — safe, because labeling
is idempotent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from viewfinder.v1 import events_pb2
from viewfinder_common.errors import DomainError
from viewfinder_common.events import MalformedEvent, decode_event
from viewfinder_common.logging import get_logger
from viewfinder_tagger.adapters.catalogue import Catalogue, FileRow, LabelingSettings
from viewfinder_tagger.adapters.events import TaggerEvents, file_tagged_event
from viewfinder_tagger.domain.definitions import TagDefinition
from viewfinder_tagger.domain.models import (
    LabelingFailed,
    LabelingModel,
    ModelUnavailable,
    labels_from_stored_vectors,
)
from viewfinder_tagger.labeling import Labeler
from viewfinder_tagger.model_registry import ModelRegistry

log = get_logger(__name__)

_REQUIRED = ("event_id", "dataset_id", "dataset_version_id", "file_id", "change_type")

FileEvent = events_pb2.FileDiscovered | events_pb2.FileEmbedded


@dataclass(frozen=True)
class ConsumedRecord:
    """One Kafka record as consumed, kept whole for the dead-letter topic."""

    value: bytes
    key: bytes | None = None
    partition: int | None = None
    offset: int | None = None


class AutoLabeler:
    """Handles batches of file-discovered records."""

    def __init__(
        self,
        catalogue: Catalogue,
        labeler: Labeler,
        models: ModelRegistry,
        events: TaggerEvents,
        *,
        max_concurrency: int,
    ) -> None:
        self._catalogue = catalogue
        self._labeler = labeler
        self._models = models
        self._events = events
        self._model_slots = asyncio.Semaphore(max_concurrency)

    async def handle_batch(self, records: Sequence[ConsumedRecord], *, file_embedded: bool = False) -> None:
        """Labels what a batch of file-discovered (or file-embedded) records asks for; dead-letters
        what cannot be done."""
        by_file: dict[str, list[tuple[ConsumedRecord, FileEvent]]] = {}
        for record in records:
            event = await self._decode(record, file_embedded)
            if event is not None:
                by_file.setdefault(event.file_id, []).append((record, event))
        if not by_file:
            return
        settings = await self._catalogue.labeling_settings(
            sorted({event.dataset_id for items in by_file.values() for _, event in items})
        )
        definitions: dict[tuple[str, int], TagDefinition] = {}

        async def handle_file(items: list[tuple[ConsumedRecord, FileEvent]]) -> None:
            for record, event in items:
                await self._handle(record, event, settings.get(event.dataset_id), definitions)

        await asyncio.gather(*(handle_file(items) for items in by_file.values()))

    async def _decode(self, record: ConsumedRecord, file_embedded: bool) -> FileEvent | None:
        kind: type[FileEvent] = events_pb2.FileEmbedded if file_embedded else events_pb2.FileDiscovered
        try:
            event = decode_event(kind, record.value, required=_REQUIRED)
            for name in ("dataset_id", "dataset_version_id", "file_id"):
                uuid.UUID(getattr(event, name))
        except MalformedEvent as exc:
            await self._dead_letter(record, str(exc), "MalformedEvent", file_embedded=file_embedded)
            return None
        except ValueError:
            await self._dead_letter(
                record,
                f"{kind.DESCRIPTOR.name} has an id that is not a UUID",
                "MalformedEvent",
                file_embedded=file_embedded,
            )
            return None
        return event

    async def _handle(
        self,
        record: ConsumedRecord,
        event: FileEvent,
        settings: LabelingSettings | None,
        definitions: dict[tuple[str, int], TagDefinition],
    ) -> None:
        file_embedded = isinstance(event, events_pb2.FileEmbedded)
        if event.change_type == events_pb2.CHANGE_TYPE_DELETE:
            if isinstance(event, events_pb2.FileDiscovered):
                await self._handle_delete(event, settings)
            return
        if settings is None or not settings.automatic or not settings.definition_id:
            return
        key = (settings.definition_id, settings.definition_version)
        how = await self._how_to_label(
            record, event.file_id, key, settings.model_connection, definitions, file_embedded=file_embedded
        )
        if how is None:
            return
        definition, model = how
        try:
            file = await self._catalogue.get_file(event.file_id)
        except DomainError as exc:
            await self._dead_letter(
                record, f"cannot label automatically: {exc}", type(exc).__name__, file_embedded=file_embedded
            )
            return
        if file.status != "active" or file.etag != event.etag:
            # A newer event describes the file's current state; it will be labeled then.
            log.info("auto_label_stale_event", file_id=file.id, status=file.status)
            return
        if await self._catalogue.has_current_run(file.id, definition.id, definition.version, file.etag):
            return
        try:
            await self._labeler.label(
                file, definition, model, model_slots=self._model_slots, trace_id=event.trace_id
            )
        except LabelingFailed as exc:
            await self._dead_letter(record, exc.reason, "LabelingFailed", file_embedded=file_embedded)
        except ModelUnavailable as exc:
            await self._dead_letter(record, str(exc), "ModelUnavailable", file_embedded=file_embedded)

    async def _how_to_label(
        self,
        record: ConsumedRecord,
        record_file_id: str,
        definition_key: tuple[str, int],
        model_connection: str,
        definitions: dict[tuple[str, int], TagDefinition],
        *,
        file_embedded: bool,
    ) -> tuple[TagDefinition, LabelingModel] | None:
        """The dataset's definition and model, or None when this topic does not drive its labeling."""
        try:
            definition = definitions.get(definition_key)
            if definition is None:
                definition = definitions[definition_key] = await self._catalogue.get_definition(
                    definition_id=definition_key[0], version=definition_key[1]
                )
            model = await self._models.get(model_connection)
        except DomainError as exc:
            if not file_embedded:  # dead-lettered once, from the topic every dataset gets
                await self._dead_letter(record, f"cannot label automatically: {exc}", type(exc).__name__)
            return None
        if labels_from_stored_vectors(model) != file_embedded:
            # The other topic drives this dataset's labeling (module docstring).
            log.debug("auto_label_other_topic", file_id=record_file_id, file_embedded=file_embedded)
            return None
        return definition, model

    async def _handle_delete(
        self, event: events_pb2.FileDiscovered, settings: LabelingSettings | None
    ) -> None:
        removed = await self._catalogue.remove_ai_labels(event.file_id)
        if removed == 0 and (settings is None or not settings.automatic):
            return
        file = FileRow(
            id=event.file_id,
            dataset_id=event.dataset_id,
            version_id=event.dataset_version_id,
            bucket=event.bucket,
            key=event.key,
            uri=event.uri,
            etag=event.etag,
            size=0,
            last_modified=None,
            status="deleted",
        )
        tags = await self._catalogue.tags_in_effect_if_exists(event.file_id)
        await self._events.file_tagged(
            file_tagged_event(
                file, tags=tags, definition=None, model_id="", trace_id=event.trace_id, deleted=True
            )
        )

    async def _dead_letter(
        self, record: ConsumedRecord, reason: str, error_type: str, *, file_embedded: bool = False
    ) -> None:
        await self._events.dead_letter_event(
            record.value,
            reason=reason,
            error_type=error_type,
            key=record.key,
            partition=record.partition,
            offset=record.offset,
            from_file_embedded=file_embedded,
        )
