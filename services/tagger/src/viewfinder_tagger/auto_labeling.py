"""Automatic labeling of new and changed files, from ``viewfinder.file-discovered``.

For each FileDiscovered of a dataset whose labeling is automatic
(``dataset_labeling_settings``), the file is labeled with the dataset's
definition and connection, unless its current content was labeled already
with that definition version (a redelivery, or a label job got there first).
A DELETE removes the file's AI tags (user decisions stay) and announces it.

Events of one file are handled in order; different files concurrently (up to
``max_concurrency`` model calls). A malformed event, an unknown file or a
file that cannot be labeled goes to the dead-letter topic with the reason and
the batch goes on; only an infrastructure failure (database, broker) fails
the batch, which is then redelivered — safe, because labeling is idempotent.
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
from viewfinder_tagger.domain.models import LabelingFailed, ModelUnavailable
from viewfinder_tagger.labeling import Labeler
from viewfinder_tagger.model_registry import ModelRegistry

log = get_logger(__name__)

_REQUIRED = ("event_id", "dataset_id", "dataset_version_id", "file_id", "change_type")


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

    async def handle_batch(self, records: Sequence[ConsumedRecord]) -> None:
        """Labels what the batch asks for; dead-letters what cannot be done."""
        by_file: dict[str, list[tuple[ConsumedRecord, events_pb2.FileDiscovered]]] = {}
        for record in records:
            event = await self._decode(record)
            if event is not None:
                by_file.setdefault(event.file_id, []).append((record, event))
        if not by_file:
            return
        settings = await self._catalogue.labeling_settings(
            sorted({event.dataset_id for items in by_file.values() for _, event in items})
        )
        definitions: dict[tuple[str, int], TagDefinition] = {}

        async def handle_file(items: list[tuple[ConsumedRecord, events_pb2.FileDiscovered]]) -> None:
            for record, event in items:
                await self._handle(record, event, settings.get(event.dataset_id), definitions)

        await asyncio.gather(*(handle_file(items) for items in by_file.values()))

    async def _decode(self, record: ConsumedRecord) -> events_pb2.FileDiscovered | None:
        try:
            event = decode_event(events_pb2.FileDiscovered, record.value, required=_REQUIRED)
            for name in ("dataset_id", "dataset_version_id", "file_id"):
                uuid.UUID(getattr(event, name))
        except MalformedEvent as exc:
            await self._dead_letter(record, str(exc), "MalformedEvent")
            return None
        except ValueError:
            await self._dead_letter(record, "FileDiscovered has an id that is not a UUID", "MalformedEvent")
            return None
        return event

    async def _handle(
        self,
        record: ConsumedRecord,
        event: events_pb2.FileDiscovered,
        settings: LabelingSettings | None,
        definitions: dict[tuple[str, int], TagDefinition],
    ) -> None:
        if event.change_type == events_pb2.CHANGE_TYPE_DELETE:
            await self._handle_delete(event, settings)
            return
        if settings is None or not settings.automatic or not settings.definition_id:
            return
        try:
            key = (settings.definition_id, settings.definition_version)
            definition = definitions.get(key)
            if definition is None:
                definition = definitions[key] = await self._catalogue.get_definition(
                    definition_id=settings.definition_id, version=settings.definition_version
                )
            model = self._models.get(settings.model_connection)
            file = await self._catalogue.get_file(event.file_id)
        except DomainError as exc:
            await self._dead_letter(record, f"cannot label automatically: {exc}", type(exc).__name__)
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
            await self._dead_letter(record, exc.reason, "LabelingFailed")
        except ModelUnavailable as exc:
            await self._dead_letter(record, str(exc), "ModelUnavailable")

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

    async def _dead_letter(self, record: ConsumedRecord, reason: str, error_type: str) -> None:
        await self._events.dead_letter_event(
            record.value,
            reason=reason,
            error_type=error_type,
            key=record.key,
            partition=record.partition,
            offset=record.offset,
        )
