"""LabelingService over gRPC on the real service (main.serve) and PostgreSQL: definitions, file tags, job validation."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from viewfinder.v1 import common_pb2, labeling_pb2


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def test_tag_definitions_are_versioned_listed_and_validated(start_tagger: Any, helpers: Any) -> None:
    async with start_tagger() as tagger:
        stub = tagger.stub
        created = (
            await stub.CreateTagDefinition(helpers.definition_request("colours"), timeout=5)
        ).tag_definition
        assert (created.name, created.version) == ("colours", 1)
        assert [t.name for t in created.tags][:2] == ["red", "green"]
        assert created.groups[0].selection_mode == labeling_pb2.SELECTION_MODE_SINGLE
        assert list(created.tags[-1].allowed_values) == ["light", "dark"]

        v2 = (
            await stub.CreateTagDefinitionVersion(
                labeling_pb2.CreateTagDefinitionVersionRequest(
                    tag_definition_id=created.id,
                    guide_prompt="Look again.",
                    tags=[labeling_pb2.TagSpec(name="red", description="mostly red")],
                ),
                timeout=5,
            )
        ).tag_definition
        assert (v2.id, v2.version, v2.guide_prompt) == (created.id, 2, "Look again.")

        latest = await stub.GetTagDefinition(labeling_pb2.GetTagDefinitionRequest(name="colours"), timeout=5)
        assert latest.tag_definition.version == 2
        first = await stub.GetTagDefinition(
            labeling_pb2.GetTagDefinitionRequest(tag_definition_id=created.id, version=1), timeout=5
        )
        assert first.tag_definition == created  # earlier versions never change

        for name in ("b-defs", "a-defs"):
            await stub.CreateTagDefinition(helpers.definition_request(name), timeout=5)
        page1 = await stub.ListTagDefinitions(labeling_pb2.ListTagDefinitionsRequest(page_size=2), timeout=5)
        assert [d.name for d in page1.tag_definitions] == ["a-defs", "b-defs"]
        page2 = await stub.ListTagDefinitions(
            labeling_pb2.ListTagDefinitionsRequest(page_size=2, page_token=page1.next_page_token), timeout=5
        )
        assert [(d.name, d.version) for d in page2.tag_definitions] == [("colours", 2)]
        assert page2.next_page_token == ""
        versions = await stub.ListTagDefinitionVersions(
            labeling_pb2.ListTagDefinitionVersionsRequest(tag_definition_id=created.id, page_size=1),
            timeout=5,
        )
        assert [d.version for d in versions.tag_definitions] == [2]
        older = await stub.ListTagDefinitionVersions(
            labeling_pb2.ListTagDefinitionVersionsRequest(
                tag_definition_id=created.id, page_size=1, page_token=versions.next_page_token
            ),
            timeout=5,
        )
        assert [d.version for d in older.tag_definitions] == [1]

        # Errors carry precise status codes and reasons.
        code, details = await _code(
            stub.CreateTagDefinition(helpers.definition_request("colours"), timeout=5)
        )
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert "'colours' exists already" in details
        duplicate = labeling_pb2.CreateTagDefinitionRequest(
            name="dup", tags=[labeling_pb2.TagSpec(name="car"), labeling_pb2.TagSpec(name="car")]
        )
        code, details = await _code(stub.CreateTagDefinition(duplicate, timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'car' is used twice" in details
        orphan = labeling_pb2.CreateTagDefinitionRequest(
            name="orphan", tags=[labeling_pb2.TagSpec(name="car", group="vehicles")]
        )
        code, details = await _code(stub.CreateTagDefinition(orphan, timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "group 'vehicles'" in details
        code, _ = await _code(
            stub.GetTagDefinition(labeling_pb2.GetTagDefinitionRequest(name="nope"), timeout=5)
        )
        assert code == grpc.StatusCode.NOT_FOUND
        code, details = await _code(
            stub.GetTagDefinition(
                labeling_pb2.GetTagDefinitionRequest(tag_definition_id=created.id, version=9), timeout=5
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
        assert "has no version 9" in details
        code, _ = await _code(
            stub.GetTagDefinition(
                labeling_pb2.GetTagDefinitionRequest(tag_definition_id="not-a-uuid"), timeout=5
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, _ = await _code(
            stub.ListTagDefinitions(labeling_pb2.ListTagDefinitionsRequest(page_token="garbage!"), timeout=5)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_user_tags_add_remove_and_list(start_tagger: Any, seeder: Any, db_pool: Any) -> None:
    seeded = await seeder.version(["red"])
    [file_id] = seeded.files
    # An AI tag as a label run would have stored it.
    await db_pool.execute(
        "INSERT INTO file_tags (file_id, tag, source, value, confidence, model) "
        "VALUES ($1, 'red', 'ai', '', 0.9, 'qwen-vl-max'), ($1, 'brightness', 'ai', 'dark', 0.8, 'qwen-vl-max')",
        uuid.UUID(file_id),
    )
    async with start_tagger() as tagger:
        stub = tagger.stub
        reply = await stub.UpdateFileTags(
            labeling_pb2.UpdateFileTagsRequest(
                file_id=file_id,
                add=[labeling_pb2.TagRef(name="favourite")],
                remove=[labeling_pb2.TagRef(name="red")],
            ),
            timeout=5,
        )
        assert [(t.name, t.source) for t in reply.tags] == [
            ("brightness", common_pb2.TAG_SOURCE_AI),
            ("favourite", common_pb2.TAG_SOURCE_USER),
        ]
        ai_only = await stub.ListFileTags(
            labeling_pb2.ListFileTagsRequest(file_id=file_id, source=common_pb2.TAG_SOURCE_AI), timeout=5
        )
        assert [(t.name, t.value, round(t.confidence, 2), t.model) for t in ai_only.tags] == [
            ("brightness", "dark", 0.8, "qwen-vl-max")
        ]
        code, details = await _code(
            stub.UpdateFileTags(
                labeling_pb2.UpdateFileTagsRequest(
                    file_id=file_id,
                    add=[labeling_pb2.TagRef(name="x")],
                    remove=[labeling_pb2.TagRef(name="x")],
                ),
                timeout=5,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "both added and removed: x" in details
        code, _ = await _code(
            stub.ListFileTags(
                labeling_pb2.ListFileTagsRequest(file_id="00000000-0000-0000-0000-000000000000"), timeout=5
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND


async def test_start_label_job_validates_its_request(start_tagger: Any, seeder: Any, helpers: Any) -> None:
    seeded = await seeder.version(["red"])
    async with start_tagger() as tagger:  # default connection: the offline zero-shot tagger
        stub = tagger.stub
        definition = (
            await stub.CreateTagDefinition(helpers.definition_request("c"), timeout=5)
        ).tag_definition

        def request(**fields: Any) -> labeling_pb2.StartLabelJobRequest:
            values = {
                "dataset_version_id": seeded.version_id,
                "tag_definition_id": definition.id,
                "mode": common_pb2.JOB_MODE_FULL,
            } | fields
            return labeling_pb2.StartLabelJobRequest(**values)

        cases = [
            (request(mode=common_pb2.JOB_MODE_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT, "mode must be"),
            (request(max_concurrency=300), grpc.StatusCode.INVALID_ARGUMENT, "between 1 and 256"),
            (
                request(model_connection="gpt-9"),
                grpc.StatusCode.NOT_FOUND,
                "unknown model connection 'gpt-9': neither configured in the tagger (offline) "
                "nor stored through ConnectionService",
            ),
            (request(tag_definition_version=7), grpc.StatusCode.NOT_FOUND, "has no version 7"),
            (
                request(dataset_version_id="00000000-0000-0000-0000-000000000000"),
                grpc.StatusCode.NOT_FOUND,
                "dataset version",
            ),
        ]
        for bad, status, reason in cases:
            code, details = await _code(stub.StartLabelJob(bad, timeout=5))
            assert (code, reason in details) == (status, True), details

        started = (await stub.StartLabelJob(request(), timeout=5)).job
        assert started.max_concurrency == 5  # the default
        assert started.model_connection == "offline"
        assert started.tag_definition_version == 1
        assert started.job.kind == common_pb2.JOB_KIND_LABEL
        code, _ = await _code(
            stub.ResumeLabelJob(labeling_pb2.ResumeLabelJobRequest(job_id=started.job.id), timeout=5)
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        code, _ = await _code(
            stub.GetLabelJob(
                labeling_pb2.GetLabelJobRequest(job_id="00000000-0000-0000-0000-000000000000"), timeout=5
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
