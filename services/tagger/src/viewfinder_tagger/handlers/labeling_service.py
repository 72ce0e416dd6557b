"""gRPC LabelingService: translates protobuf to domain calls and back.

Validation lives in the domain (definitions, jobs); errors are DomainErrors
that the shared interceptor maps to status codes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import grpc
from typing_extensions import override

from viewfinder.v1 import common_pb2, labeling_pb2, labeling_pb2_grpc
from viewfinder_common.errors import InvalidArgument
from viewfinder_common.timestamps import to_timestamp
from viewfinder_tagger.adapters.catalogue import (
    SOURCE_AI,
    SOURCE_USER,
    Catalogue,
    JobRecord,
    decode_page_token,
    encode_page_token,
)
from viewfinder_tagger.adapters.events import tag_message
from viewfinder_tagger.domain.definitions import (
    MAX_NAME_CHARS,
    DefinitionContent,
    SelectionMode,
    TagDefinition,
    TagGroup,
    TagSpec,
    validate_content,
    validate_definition_name,
)
from viewfinder_tagger.domain.jobs import (
    JobMode,
    JobParams,
    JobState,
    LabelJobCounts,
    resolve_max_concurrency,
)
from viewfinder_tagger.job_runner import LabelJobRunner
from viewfinder_tagger.model_registry import ModelRegistry

SERVICE_NAME = labeling_pb2.DESCRIPTOR.services_by_name["LabelingService"].full_name
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_MODES = {common_pb2.JOB_MODE_FULL: JobMode.FULL, common_pb2.JOB_MODE_INCREMENTAL: JobMode.INCREMENTAL}
_MODE_MESSAGES = {
    JobMode.FULL: common_pb2.JOB_MODE_FULL,
    JobMode.INCREMENTAL: common_pb2.JOB_MODE_INCREMENTAL,
}
_STATES = {
    JobState.PENDING: common_pb2.JOB_STATE_PENDING,
    JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}
_SELECTIONS = {
    labeling_pb2.SELECTION_MODE_UNSPECIFIED: SelectionMode.MULTIPLE,
    labeling_pb2.SELECTION_MODE_MULTIPLE: SelectionMode.MULTIPLE,
    labeling_pb2.SELECTION_MODE_SINGLE: SelectionMode.SINGLE,
}
_SELECTION_MESSAGES = {
    SelectionMode.MULTIPLE: labeling_pb2.SELECTION_MODE_MULTIPLE,
    SelectionMode.SINGLE: labeling_pb2.SELECTION_MODE_SINGLE,
}


def _page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= requested <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}; got {requested}")
    return requested


def content_from_request(
    description: str,
    guide_prompt: str,
    tags: Sequence[labeling_pb2.TagSpec],
    groups: Sequence[labeling_pb2.TagGroup],
) -> DefinitionContent:
    """The domain content of a create request, validated (INVALID_ARGUMENT with the reason)."""
    for group in groups:
        if group.selection_mode not in _SELECTIONS:
            raise InvalidArgument(
                f"group {group.name!r} has an unknown selection_mode {group.selection_mode}"
            )
    content = DefinitionContent(
        description=description,
        guide_prompt=guide_prompt,
        tags=tuple(TagSpec(t.name, t.description, tuple(t.allowed_values), t.group) for t in tags),
        groups=tuple(TagGroup(g.name, g.description, _SELECTIONS[g.selection_mode]) for g in groups),
    )
    validate_content(content)
    return content


def definition_message(definition: TagDefinition) -> labeling_pb2.TagDefinition:
    """A stored definition version as protobuf."""
    content = definition.content
    return labeling_pb2.TagDefinition(
        id=definition.id,
        name=definition.name,
        version=definition.version,
        description=content.description,
        guide_prompt=content.guide_prompt,
        tags=[
            labeling_pb2.TagSpec(
                name=t.name, description=t.description, allowed_values=list(t.allowed_values), group=t.group
            )
            for t in content.tags
        ],
        groups=[
            labeling_pb2.TagGroup(
                name=g.name, description=g.description, selection_mode=_SELECTION_MESSAGES[g.selection]
            )
            for g in content.groups
        ],
        create_time=to_timestamp(definition.created_at),
    )


def job_message(job: JobRecord) -> labeling_pb2.LabelJob:
    """A label job row as protobuf; a running job with a cancel request reads CANCELLING."""
    counts = job.counts
    state = _STATES[job.state]
    if job.cancel_requested and job.state in {JobState.RUNNING, JobState.PENDING}:
        state = common_pb2.JOB_STATE_CANCELLING
    return labeling_pb2.LabelJob(
        job=common_pb2.Job(
            id=job.id,
            kind=common_pb2.JOB_KIND_LABEL,
            mode=_MODE_MESSAGES[job.mode],
            state=state,
            dataset_id=job.dataset_id,
            dataset_version_id=job.version_id,
            progress=common_pb2.JobProgress(
                total_items=counts.total_items,
                processed_items=counts.processed_items,
                succeeded_items=counts.files_labeled,
                failed_items=counts.files_failed,
                skipped_items=counts.files_skipped,
            ),
            error=job.error,
            recent_errors=[
                common_pb2.ItemError(
                    file_id=e.file_id, uri=e.uri, reason=e.reason, occur_time=to_timestamp(e.occurred_at)
                )
                for e in counts.recent_errors
            ],
            create_time=to_timestamp(job.created_at),
            start_time=to_timestamp(job.started_at),
            update_time=to_timestamp(job.updated_at),
            end_time=to_timestamp(job.finished_at),
            resume_count=counts.resume_count,
        ),
        tag_definition_id=job.params.definition_id,
        tag_definition_version=job.params.definition_version,
        model_connection=job.params.model_connection,
        max_concurrency=job.params.max_concurrency,
        counts=labeling_pb2.LabelCounts(
            files_labeled=counts.files_labeled,
            files_failed=counts.files_failed,
            files_skipped=counts.files_skipped,
            tags_written=counts.tags_written,
            tags_dropped=counts.tags_dropped,
            retries=counts.retries,
        ),
        token_usage=labeling_pb2.TokenUsage(
            prompt_tokens=counts.usage.prompt_tokens,
            completion_tokens=counts.usage.completion_tokens,
            total_tokens=counts.usage.total_tokens,
        ),
        cost_estimate=labeling_pb2.CostEstimate(amount=counts.cost_amount, currency=counts.currency),
    )


def _tag_refs(what: str, refs: Sequence[labeling_pb2.TagRef]) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = []
    for index, ref in enumerate(refs):
        if not ref.name.strip():
            raise InvalidArgument(f"{what}[{index}].name must not be empty")
        if len(ref.name) > MAX_NAME_CHARS or len(ref.value) > MAX_NAME_CHARS:
            raise InvalidArgument(
                f"{what}[{index}]: names and values have at most {MAX_NAME_CHARS} characters"
            )
        result.append((ref.name, ref.value))
    return result


class LabelingServicer(labeling_pb2_grpc.LabelingServiceServicer):
    """The LabelingService implementation."""

    def __init__(self, catalogue: Catalogue, models: ModelRegistry, runner: LabelJobRunner) -> None:
        self._catalogue = catalogue
        self._models = models
        self._runner = runner

    @override
    async def CreateTagDefinition(
        self,
        request: labeling_pb2.CreateTagDefinitionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> labeling_pb2.CreateTagDefinitionResponse:
        """Creates a definition at version 1."""
        validate_definition_name(request.name)
        content = content_from_request(
            request.description, request.guide_prompt, request.tags, request.groups
        )
        definition = await self._catalogue.create_definition(request.name, content)
        return labeling_pb2.CreateTagDefinitionResponse(tag_definition=definition_message(definition))

    @override
    async def CreateTagDefinitionVersion(
        self,
        request: labeling_pb2.CreateTagDefinitionVersionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> labeling_pb2.CreateTagDefinitionVersionResponse:
        """Creates the next version of a definition."""
        if not request.tag_definition_id:
            raise InvalidArgument("tag_definition_id is required")
        content = content_from_request(
            request.description, request.guide_prompt, request.tags, request.groups
        )
        definition = await self._catalogue.create_definition_version(request.tag_definition_id, content)
        return labeling_pb2.CreateTagDefinitionVersionResponse(tag_definition=definition_message(definition))

    @override
    async def GetTagDefinition(
        self, request: labeling_pb2.GetTagDefinitionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> labeling_pb2.GetTagDefinitionResponse:
        """One version (default the latest) by id or name."""
        lookup = request.WhichOneof("lookup")
        definition = await self._catalogue.get_definition(
            definition_id=request.tag_definition_id if lookup == "tag_definition_id" else None,
            name=request.name if lookup == "name" else None,
            version=request.version,
        )
        return labeling_pb2.GetTagDefinitionResponse(tag_definition=definition_message(definition))

    @override
    async def ListTagDefinitions(
        self,
        request: labeling_pb2.ListTagDefinitionsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> labeling_pb2.ListTagDefinitionsResponse:
        """Definitions at their latest versions, by name."""
        size = _page_size(request.page_size)
        after = (
            str(decode_page_token(request.page_token).get("after_name", "")) if request.page_token else None
        )
        definitions = await self._catalogue.list_definitions(page_size=size + 1, after_name=after)
        page, more = definitions[:size], len(definitions) > size
        return labeling_pb2.ListTagDefinitionsResponse(
            tag_definitions=[definition_message(d) for d in page],
            next_page_token=encode_page_token({"after_name": page[-1].name}) if more else "",
        )

    @override
    async def ListTagDefinitionVersions(
        self,
        request: labeling_pb2.ListTagDefinitionVersionsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> labeling_pb2.ListTagDefinitionVersionsResponse:
        """Every version of one definition, newest first."""
        size = _page_size(request.page_size)
        before: int | None = None
        if request.page_token:
            token = decode_page_token(request.page_token)
            if not isinstance(token.get("before_version"), int):
                raise InvalidArgument("page_token is not a token this service issued")
            before = token["before_version"]
        versions = await self._catalogue.list_definition_versions(
            request.tag_definition_id, page_size=size + 1, before_version=before
        )
        page, more = versions[:size], len(versions) > size
        return labeling_pb2.ListTagDefinitionVersionsResponse(
            tag_definitions=[definition_message(d) for d in page],
            next_page_token=encode_page_token({"before_version": page[-1].version}) if more else "",
        )

    @override
    async def StartLabelJob(
        self, request: labeling_pb2.StartLabelJobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> labeling_pb2.StartLabelJobResponse:
        """Accepts a job (PENDING) and wakes the runner."""
        mode = _MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode must be JOB_MODE_FULL or JOB_MODE_INCREMENTAL")
        concurrency = resolve_max_concurrency(request.max_concurrency)
        if not request.tag_definition_id:
            raise InvalidArgument("tag_definition_id is required")
        dataset_id = await self._catalogue.dataset_of_version(request.dataset_version_id)
        definition = await self._catalogue.get_definition(
            definition_id=request.tag_definition_id, version=request.tag_definition_version
        )
        dataset_settings = (await self._catalogue.labeling_settings([dataset_id])).get(dataset_id)
        connection = await self._models.resolve(
            request.model_connection, dataset_settings.model_connection if dataset_settings else ""
        )
        params = JobParams(
            definition_id=definition.id,
            definition_version=definition.version,
            model_connection=connection,
            max_concurrency=concurrency,
            trace_id=uuid.uuid4().hex,
        )
        job = await self._catalogue.insert_job(
            dataset_id=dataset_id,
            version_id=request.dataset_version_id,
            mode=mode,
            params=params,
            counts=LabelJobCounts(currency=self._models.prices(connection).currency),
        )
        self._runner.wake()
        return labeling_pb2.StartLabelJobResponse(job=job_message(job))

    @override
    async def GetLabelJob(
        self, request: labeling_pb2.GetLabelJobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> labeling_pb2.GetLabelJobResponse:
        """The job with its progress and counts."""
        return labeling_pb2.GetLabelJobResponse(
            job=job_message(await self._catalogue.get_job(request.job_id))
        )

    @override
    async def CancelLabelJob(
        self, request: labeling_pb2.CancelLabelJobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> labeling_pb2.CancelLabelJobResponse:
        """Flags the job; a local worker stops at once, a remote one at its next heartbeat."""
        job = await self._catalogue.request_cancel(request.job_id)
        self._runner.cancel_local(job.id)
        return labeling_pb2.CancelLabelJobResponse(job=job_message(job))

    @override
    async def ResumeLabelJob(
        self, request: labeling_pb2.ResumeLabelJobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> labeling_pb2.ResumeLabelJobResponse:
        """FAILED/CANCELLED → PENDING; finished files are not labeled again."""
        job = await self._catalogue.resume_job(request.job_id)
        self._runner.wake()
        return labeling_pb2.ResumeLabelJobResponse(job=job_message(job))

    @override
    async def ListFileTags(
        self, request: labeling_pb2.ListFileTagsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> labeling_pb2.ListFileTagsResponse:
        """The file's tags in effect, optionally of one source."""
        source = {common_pb2.TAG_SOURCE_AI: SOURCE_AI, common_pb2.TAG_SOURCE_USER: SOURCE_USER}.get(
            request.source
        )
        tags = await self._catalogue.tags_in_effect(request.file_id, source)
        return labeling_pb2.ListFileTagsResponse(tags=[tag_message(t) for t in tags])

    @override
    async def UpdateFileTags(
        self, request: labeling_pb2.UpdateFileTagsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> labeling_pb2.UpdateFileTagsResponse:
        """Stores a person's decisions as USER rows."""
        add = _tag_refs("add", request.add)
        remove = _tag_refs("remove", request.remove)
        both = {name for name, _ in add} & {name for name, _ in remove}
        if both:
            raise InvalidArgument(f"tags both added and removed: {', '.join(sorted(both))}")
        tags = await self._catalogue.update_user_tags(request.file_id, add, remove)
        return labeling_pb2.UpdateFileTagsResponse(tags=[tag_message(t) for t in tags])
