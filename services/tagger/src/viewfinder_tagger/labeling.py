"""Labeling one file: image → model → validation → catalogue → FileTagged.

Label jobs and automatic labeling both come through here, so a file is
labeled the same way whoever asked. The image is fetched and downscaled
*before* a model slot is taken, so the slots (a job's max concurrency) are
spent on model calls only; storing the tags and publishing FileTagged happen
after the slot is released, in one transaction. A model that labels from the
image vector the embedder stored (the zero-shot tagger) is asked that first:
no image is fetched unless it has no current vector for the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass

from viewfinder_common.logging import get_logger
from viewfinder_tagger.adapters.catalogue import Catalogue, FileRow, TagRow
from viewfinder_tagger.adapters.events import TaggerEvents, file_tagged_event
from viewfinder_tagger.adapters.objects import ObjectReader
from viewfinder_tagger.domain.answers import ValidationOutcome, validate_answer
from viewfinder_tagger.domain.definitions import TagDefinition
from viewfinder_tagger.domain.images import UnreadableImage, prepare_image
from viewfinder_tagger.domain.models import (
    ImagePayload,
    ImageTransport,
    LabelingFailed,
    LabelingModel,
    LabelTarget,
    ModelAnswer,
    StoredVectorModel,
)

log = get_logger(__name__)


@dataclass(frozen=True)
class LabeledFile:
    """The outcome of labeling one file."""

    tags_in_effect: list[TagRow]
    validation: ValidationOutcome
    answer: ModelAnswer


@contextlib.asynccontextmanager
async def _no_slot() -> AsyncIterator[None]:
    yield


class Labeler:
    """Labels single files against a definition with a model."""

    def __init__(
        self,
        catalogue: Catalogue,
        objects: ObjectReader,
        events: TaggerEvents,
        *,
        executor: Executor | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._objects = objects
        self._events = events
        self._executor = executor

    async def image_for(self, file: FileRow, model: LabelingModel) -> ImagePayload:
        """The file's image as ``model`` wants it: downscaled bytes or a presigned URL."""
        if model.image_transport is ImageTransport.URL:
            return ImagePayload(mime_type="", url=await self._objects.presigned_url(file.bucket, file.key))
        data = await self._objects.read(file.bucket, file.key)
        prepare = functools.partial(
            prepare_image, data, max_side=model.max_image_side, max_bytes=model.max_image_bytes
        )
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(self._executor, prepare)
        except UnreadableImage as exc:
            raise LabelingFailed(f"{file.uri}: {exc}") from None
        return ImagePayload(mime_type=prepared.mime_type, data=prepared.data)

    async def label(
        self,
        file: FileRow,
        definition: TagDefinition,
        model: LabelingModel,
        *,
        model_slots: asyncio.Semaphore | None = None,
        stop: asyncio.Event | None = None,
        label_job_id: str = "",
        trace_id: str = "",
    ) -> LabeledFile | None:
        """Labels, stores and announces one file; None if ``stop`` was set before the model call.

        Raises LabelingFailed (this file cannot be labeled) or ModelUnavailable.
        """
        target = LabelTarget(
            dataset_id=file.dataset_id,
            file_id=file.id,
            uri=file.uri,
            dataset_version_id=file.version_id,
            etag=file.etag,
        )
        answer: ModelAnswer | None = None
        if isinstance(model, StoredVectorModel) and model.labels_from_stored_vectors:
            async with model_slots if model_slots is not None else _no_slot():
                if stop is not None and stop.is_set():
                    return None
                answer = await model.label_stored(definition, target)
        if answer is None:
            image = await self.image_for(file, model)
            async with model_slots if model_slots is not None else _no_slot():
                if stop is not None and stop.is_set():
                    return None
                answer = await model.label(definition, image, target)
        validation = validate_answer(definition, answer.proposed)
        if validation.unknown_tags or validation.disallowed_values:
            log.info(
                "model_answer_outside_definition",
                file_id=file.id,
                definition_id=definition.id,
                unknown_tags=list(validation.unknown_tags)[:20],
                disallowed_values=list(validation.disallowed_values)[:20],
            )

        async def announce(tags: list[TagRow]) -> None:
            await self._events.file_tagged(
                file_tagged_event(
                    file,
                    tags=tags,
                    definition=definition,
                    model_id=model.model_id,
                    label_job_id=label_job_id,
                    trace_id=trace_id,
                )
            )

        tags = await self._catalogue.store_labels(
            file, definition, model.model_id, validation.tags, before_commit=announce
        )
        return LabeledFile(tags, validation, answer)
