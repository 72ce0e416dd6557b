"""Contract tests: the protos lint clean, stay compatible with the committed
baseline image, the committed generated code is fresh, and the generated code
actually works (serialisation, descriptors, a real gRPC round trip)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from viewfinder.v1 import (
    common_pb2,
    dataset_pb2,
    dataset_pb2_grpc,
    embedding_pb2,
    events_pb2,
    export_pb2,
    labeling_pb2,
    search_pb2,
)

ROOT = Path(__file__).resolve().parents[2]
# The virtual environment running the tests also holds buf and the protoc plugins.
VENV = Path(sys.prefix)
PACKAGE = "viewfinder.v1"
PROTO_MODULES = (common_pb2, dataset_pb2, embedding_pb2, events_pb2, export_pb2, labeling_pb2, search_pb2)

EXPECTED_RPCS = {
    "DatasetService": {
        "CreateDataset",
        "GetDataset",
        "ListDatasets",
        "UpdateDataset",
        "CreateDatasetVersion",
        "GetDatasetVersion",
        "ListDatasetVersions",
        "StartSync",
        "GetJob",
        "CancelJob",
        "ResumeJob",
        "ListFiles",
        "GetFile",
    },
    "LabelingService": {
        "CreateTagDefinition",
        "CreateTagDefinitionVersion",
        "GetTagDefinition",
        "ListTagDefinitions",
        "ListTagDefinitionVersions",
        "StartLabelJob",
        "GetLabelJob",
        "CancelLabelJob",
        "ResumeLabelJob",
        "ListFileTags",
        "UpdateFileTags",
    },
    "EmbedService": {
        "EmbedText",
        "EmbedImage",
        "GetIndex",
        "ListIndexes",
        "StartIndexJob",
        "GetIndexJob",
        "CancelIndexJob",
        "ResumeIndexJob",
    },
    "SearchService": {"Search"},
    "ExportService": {
        "StartExport",
        "GetExport",
        "CancelExport",
        "ResumeExport",
        "ListLogicalDatasets",
        "GetLogicalDataset",
        "DeleteLogicalDataset",
        "ListLogicalDatasetVersions",
        "GetLogicalDatasetVersion",
        "DeleteLogicalDatasetVersion",
        "ListLogicalDatasetItems",
        "DiffLogicalDatasetVersions",
    },
}


def _tool(name: str) -> str:
    """Path of a tool from the test's virtual environment, else from PATH."""
    candidate = VENV / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (run 'make install')")
    return found


def _run(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_buf_lint_is_clean() -> None:
    result = _run([_tool("buf"), "lint"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_baseline() -> None:
    result = _run([_tool("buf"), "breaking", "proto", "--against", "proto/baseline.binpb"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_protos_are_buf_formatted() -> None:
    result = _run([_tool("buf"), "format", "--diff", "--exit-code"])
    assert result.returncode == 0, "run 'buf format -w':\n" + result.stdout + result.stderr


def test_generated_code_is_fresh() -> None:
    env = {**os.environ, "VENV": str(VENV)}
    result = _run(["bash", "scripts/proto.sh", "--check"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_freshness_check_catches_a_stale_file(tmp_path: Path) -> None:
    """The check must fail, with a diff, when committed code and protos disagree."""
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    generated = tmp_path / "libs/viewfinder/src/viewfinder/v1"
    shutil.copytree(
        ROOT / "libs/viewfinder/src/viewfinder/v1", generated, ignore=shutil.ignore_patterns("__pycache__")
    )
    stale = generated / "events_pb2.pyi"
    stale.write_text(stale.read_text().replace("trace_id", "trace_ident"))

    result = subprocess.run(
        ["bash", str(tmp_path / "scripts/proto.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "VENV": str(VENV)},
    )

    assert result.returncode == 1
    assert "trace_ident" in result.stdout
    assert "stale" in result.stderr


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_file_discovered_round_trips_through_bytes_and_json() -> None:
    event = events_pb2.FileDiscovered(
        event_id="evt-1",
        dataset_id="ds-1",
        dataset_version_id="dv-1",
        file_id="f-1",
        uri="s3://demo/cars/blue_car/toyota.jpg",
        bucket="demo",
        key="cars/blue_car/toyota.jpg",
        etag="9b2cf535f27731c974343645a3985328",
        size=123_456,
        change_type=events_pb2.CHANGE_TYPE_UPSERT,
        last_modified=_timestamp(datetime(2025, 3, 1, 12, 0, tzinfo=UTC)),
        event_time=_timestamp(datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        format="JPEG",
        width=1920,
        height=1080,
        frames=1,
        mode="RGB",
    )

    parsed = events_pb2.FileDiscovered.FromString(event.SerializeToString())

    assert parsed == event
    assert parsed.change_type == events_pb2.CHANGE_TYPE_UPSERT
    assert parsed.last_modified.ToDatetime(tzinfo=UTC) == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    as_json = json_format.MessageToJson(event)
    assert json_format.Parse(as_json, events_pb2.FileDiscovered()) == event
    assert '"changeType": "CHANGE_TYPE_UPSERT"' in as_json


def test_file_tagged_and_file_embedded_round_trip() -> None:
    tagged = events_pb2.FileTagged(
        file_id="f-1",
        etag="e1",
        change_type=events_pb2.CHANGE_TYPE_UPSERT,
        tags=[
            common_pb2.Tag(name="lane line", source=common_pb2.TAG_SOURCE_AI, confidence=0.75),
            common_pb2.Tag(name="weather", value="rainy", source=common_pb2.TAG_SOURCE_USER),
        ],
        tag_definition_id="td-1",
        tag_definition_version=3,
        model="qwen-vl-max",
    )
    embedded = events_pb2.FileEmbedded(
        file_id="f-1",
        etag="e1",
        change_type=events_pb2.CHANGE_TYPE_DELETE,
        index_name="vf_ds1_offline",
        model_id="offline-efficientnet-lite0-minilm",
        model_version="1",
    )

    tagged_back = events_pb2.FileTagged.FromString(tagged.SerializeToString())
    embedded_back = events_pb2.FileEmbedded.FromString(embedded.SerializeToString())

    assert tagged_back == tagged
    # Confidence has explicit presence: "not reported" differs from 0.
    assert tagged_back.tags[0].HasField("confidence")
    assert not tagged_back.tags[1].HasField("confidence")
    assert embedded_back == embedded
    assert list(embedded_back.vector_fields) == []


def test_events_identify_the_file_the_same_way() -> None:
    """Fields 1-13 mean the same in every event, so one helper can read any of them."""

    def head(
        message: type[events_pb2.FileDiscovered | events_pb2.FileTagged | events_pb2.FileEmbedded],
    ) -> list[tuple[int, str, int]]:
        fields = message.DESCRIPTOR.fields_by_number
        return [(n, fields[n].name, fields[n].type) for n in range(1, 14)]

    discovered = head(events_pb2.FileDiscovered)
    assert head(events_pb2.FileTagged) == discovered
    assert head(events_pb2.FileEmbedded) == discovered


def test_services_are_in_the_descriptor_pool_with_expected_rpcs() -> None:
    pool = descriptor_pool.Default()
    for service_name, rpcs in EXPECTED_RPCS.items():
        service = pool.FindServiceByName(f"{PACKAGE}.{service_name}")
        assert {method.name for method in service.methods} == rpcs, service_name
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request"
            assert method.output_type.name == f"{method.name}Response"
            assert not method.client_streaming
            assert not method.server_streaming


def test_every_enum_starts_with_an_unspecified_zero_value() -> None:
    for module in PROTO_MODULES:
        file: FileDescriptor = module.DESCRIPTOR
        assert file.package == PACKAGE
        enums = list(file.enum_types_by_name.values())
        for message in file.message_types_by_name.values():
            enums.extend(message.enum_types)
        for enum in enums:
            assert enum.values[0].number == 0
            assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.full_name


def test_list_files_page_size_and_search_request_fit_the_documented_shapes() -> None:
    request = dataset_pb2.ListFilesRequest(
        dataset_version_id="dv-1", page_size=1000, statuses=[dataset_pb2.FILE_STATUS_ACTIVE]
    )
    assert dataset_pb2.ListFilesRequest.FromString(request.SerializeToString()) == request

    search = search_pb2.SearchRequest(
        dataset_version_id="dv-1",
        text="a fallen water horse",
        top_k=100,
        score_threshold=0.2,
        tags=search_pb2.TagFilter(
            all_of=[search_pb2.TagMatch(name="lane line")], source=common_pb2.TAG_SOURCE_AI
        ),
        metadata=search_pb2.MetadataFilter(path_prefix="blue_car/", width=common_pb2.Int64Range(min=640)),
    )
    assert search.WhichOneof("vector_query") == "text"
    assert search.metadata.width.HasField("min")
    assert not search.metadata.width.HasField("max")
    export = export_pb2.StartExportRequest(
        search=search,
        manifest=export_pb2.ManifestTarget(
            bucket="exports", prefix="cars/2025-03", format=export_pb2.MANIFEST_FORMAT_CSV
        ),
    )
    back = export_pb2.StartExportRequest.FromString(export.SerializeToString())
    assert back.WhichOneof("selection") == "search"
    assert back.WhichOneof("target") == "manifest"
    assert back.search == search


def test_timestamps_are_well_known_types() -> None:
    timestamp_fields = [
        field
        for module in PROTO_MODULES
        for message in module.DESCRIPTOR.message_types_by_name.values()
        for field in message.fields
        if field.name.endswith(("_time", "last_modified"))
    ]
    assert timestamp_fields
    for field in timestamp_fields:
        assert field.type == FieldDescriptor.TYPE_MESSAGE, field.full_name
        assert field.message_type.full_name == "google.protobuf.Timestamp", field.full_name


class _FakeDatasetService(dataset_pb2_grpc.DatasetServiceServicer):
    """Answers GetFile from memory; every other rpc stays UNIMPLEMENTED."""

    async def GetFile(  # noqa: N802 - gRPC method names are PascalCase
        self, request: dataset_pb2.GetFileRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> dataset_pb2.GetFileResponse:
        if request.file_id != "f-1":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"file {request.file_id!r} not found")
        return dataset_pb2.GetFileResponse(
            file=dataset_pb2.File(
                id="f-1", uri="s3://demo/a.png", format="PNG", status=dataset_pb2.FILE_STATUS_ACTIVE
            )
        )


async def test_generated_stubs_serve_and_call_over_a_real_channel() -> None:
    server = grpc.aio.server()
    dataset_pb2_grpc.add_DatasetServiceServicer_to_server(_FakeDatasetService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            reply = await stub.GetFile(dataset_pb2.GetFileRequest(file_id="f-1"), timeout=5)
            assert reply.file.status == dataset_pb2.FILE_STATUS_ACTIVE
            assert reply.file.format == "PNG"

            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetFile(dataset_pb2.GetFileRequest(file_id="nope"), timeout=5)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

            with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
                await stub.ListDatasets(dataset_pb2.ListDatasetsRequest(), timeout=5)
            assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(grace=None)


def test_labeling_and_embedding_messages_carry_job_accounting() -> None:
    job = labeling_pb2.LabelJob(
        job=common_pb2.Job(
            id="j-1",
            kind=common_pb2.JOB_KIND_LABEL,
            mode=common_pb2.JOB_MODE_INCREMENTAL,
            state=common_pb2.JOB_STATE_RUNNING,
            progress=common_pb2.JobProgress(total_items=10, processed_items=4, succeeded_items=4),
        ),
        max_concurrency=5,
        token_usage=labeling_pb2.TokenUsage(prompt_tokens=1200, completion_tokens=80, total_tokens=1280),
        cost_estimate=labeling_pb2.CostEstimate(amount=0.0042, currency="CNY"),
    )
    assert labeling_pb2.LabelJob.FromString(job.SerializeToString()) == job

    reply = embedding_pb2.EmbedTextResponse(
        vectors=[embedding_pb2.NamedVector(field="semantic", values=[0.5, -0.25])],
        model=embedding_pb2.ModelInfo(id="offline", version="1"),
    )
    back = embedding_pb2.EmbedTextResponse.FromString(reply.SerializeToString())
    assert back.vectors[0].field == "semantic"
    assert list(back.vectors[0].values) == [0.5, -0.25]
