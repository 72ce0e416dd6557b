"""`viewfinder search` and `viewfinder export` against the scripted services."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import any_pb2

from viewfinder.v1 import common_pb2, dataset_pb2, export_pb2, search_pb2
from viewfinder_cli.errors import STATUS_DETAILS_KEY, ExitCode
from viewfinder_cli.output import message_dict
from viewfinder_cli.testing import VERSION_IDS, Failure, FakeServices, InvokeCli, script_dataset

RESULTS = search_pb2.SearchResponse(
    results=[
        search_pb2.SearchResult(
            file_id="f1",
            uri="s3://images/cars/red_car.jpg",
            score=0.8125,
            tags=[common_pb2.Tag(name="car"), common_pb2.Tag(name="color", value="red")],
            file=dataset_pb2.File(id="f1", format="JPEG", width=640, height=480),
        ),
        search_pb2.SearchResult(
            file_id="f2",
            uri="s3://images/cars/blue_car.png",
            score=0.5,
            file=dataset_pb2.File(id="f2", format="PNG", width=32, height=32),
        ),
    ],
    next_page_token="next-7",
    facets=search_pb2.SearchFacets(
        matched_files=2,
        tag_counts=[search_pb2.TagCount(name="car", count=2), search_pb2.TagCount(name="red", count=1)],
    ),
)


async def test_search_flags_become_the_search_request(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.search.on("Search", RESULTS)

    result = await cli(
        "search",
        "cars",
        "--text=a red car",
        "--top-k=10",
        "--threshold=0.3",
        "--any-tag=car",
        "--any-tag=truck",
        "--all-tags=color=red",
        "--exclude-tag=night",
        "--name=car",
        "--path-prefix=cars/",
        "--modified-after=2024-01-01",
        "--modified-before=2024-02-01T00:00:00Z",
        "--sort=relevance:desc",
        "--facets",
    )

    assert result.exit_code == 0, result.output
    expected = search_pb2.SearchRequest(
        dataset_version_id=VERSION_IDS[1],
        text="a red car",
        top_k=10,
        score_threshold=0.3,
        tags=search_pb2.TagFilter(
            any_of=[search_pb2.TagMatch(name="car"), search_pb2.TagMatch(name="truck")],
            all_of=[search_pb2.TagMatch(name="color", value="red")],
            none_of=[search_pb2.TagMatch(name="night")],
        ),
        metadata=search_pb2.MetadataFilter(name_contains="car", path_prefix="cars/"),
        sort_field=search_pb2.SORT_FIELD_RELEVANCE,
        sort_direction=search_pb2.SORT_DIRECTION_DESCENDING,
        include_facets=True,
    )
    expected.metadata.modified.start_time.FromDatetime(datetime(2024, 1, 1, tzinfo=UTC))
    expected.metadata.modified.end_time.FromDatetime(datetime(2024, 2, 1, tzinfo=UTC))
    assert services.search.requests("Search") == [expected]
    # Human output: ranked rows with score, uri, image and tags, then the facets and the next page.
    assert "2 result(s)" in result.stdout
    assert "0.8125" in result.stdout
    assert "s3://images/cars/red_car.jpg" in result.stdout
    assert "JPEG 640x480" in result.stdout
    assert "car, color=red" in result.stdout
    assert "tags of the 2 matching file(s)" in result.stdout
    assert "--page-token next-7" in result.stdout


async def test_search_dsl_goes_into_the_query_field(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.search.on("Search", RESULTS)
    dsl = 'FileDir:"cars" AND HAS Tags.ai AND Content:"a red car" AND TopK=10'

    result = await cli("search", "cars", "--dsl", dsl, "--version=v1", "--json")

    assert result.exit_code == 0, result.output
    assert services.search.requests("Search") == [
        search_pb2.SearchRequest(dataset_version_id=VERSION_IDS[0], query=dsl)
    ]
    assert json.loads(result.stdout) == message_dict(RESULTS)


async def test_search_by_local_image_sends_its_bytes(
    services: FakeServices, cli: InvokeCli, tmp_path: Path
) -> None:
    script_dataset(services)
    services.search.on("Search", search_pb2.SearchResponse())
    image = tmp_path / "query.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n fake but opaque to the CLI")

    result = await cli("search", "cars", f"--image={image}", "--top-k=5")

    assert result.exit_code == 0, result.output
    (request,) = services.search.requests("Search")
    assert request.WhichOneof("vector_query") == "image_bytes"
    assert request.image_bytes == image.read_bytes()
    assert request.top_k == 5
    assert "0 result(s)" in result.stdout


async def test_search_by_bucket_image_sends_its_uri(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.search.on("Search", search_pb2.SearchResponse())

    result = await cli("search", "cars", "--image=s3://images/cars/red_car.jpg")

    assert result.exit_code == 0, result.output
    assert services.search.requests("Search")[0].image_uri == "s3://images/cars/red_car.jpg"


async def test_dsl_with_other_conditions_is_refused_before_any_call(
    services: FakeServices, cli: InvokeCli
) -> None:
    result = await cli("search", "cars", "--dsl=HAS Tags.ai", "--text=car", "--path-prefix=x/")

    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.strip() == (
        "error: --dsl is the whole query; drop --text, --path-prefix or write them into the DSL"
    )
    assert services.ingest.calls == []
    assert services.search.calls == []


async def test_a_missing_query_image_is_a_usage_error(
    services: FakeServices, cli: InvokeCli, tmp_path: Path
) -> None:
    script_dataset(services)

    result = await cli("search", "cars", f"--image={tmp_path / 'missing.jpg'}")

    assert result.exit_code == ExitCode.USAGE
    assert "error: --image: cannot read" in result.stderr
    assert services.search.calls == []


async def test_a_dsl_error_points_at_the_mistake(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    detail = any_pb2.Any()
    detail.Pack(
        search_pb2.QueryError(message="unexpected AND", line=1, column=13, expected=["a condition", "NOT"])
    )
    # google.rpc.Status{code=3, message=..., details=[detail]}, encoded by hand: fields 1, 2 and 3.
    status = _rpc_status(3, "query error at line 1, column 13: unexpected AND", [detail.SerializeToString()])
    services.search.on(
        "Search",
        Failure(
            grpc.StatusCode.INVALID_ARGUMENT,
            "query error at line 1, column 13: unexpected AND",
            ((STATUS_DETAILS_KEY, status),),
        ),
    )

    result = await cli("search", "cars", "--dsl=HAS Tags.ai AND AND TopK=3")

    assert result.exit_code == ExitCode.INVALID_ARGUMENT
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "error: INVALID_ARGUMENT: query error at line 1, column 13: unexpected AND "
        f"[search at {services.address}, Search]; expected one of: a condition, NOT"
    )
    assert lines[1:] == ["  HAS Tags.ai AND AND TopK=3", "  " + " " * 12 + "^"]
    assert "Traceback" not in result.output


def _rpc_status(code: int, text: str, details: list[bytes]) -> bytes:
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    encoded = bytes([1 << 3, code]) + field(2, text.encode())
    for detail in details:
        encoded += field(3, detail)
    return encoded


def _export_job(state: common_pb2.JobState.ValueType, **fields: object) -> export_pb2.ExportJob:
    return export_pb2.ExportJob(
        job=common_pb2.Job(
            id="exp-1", state=state, progress=common_pb2.JobProgress(total_items=2, processed_items=2)
        ),
        **fields,  # type: ignore[arg-type]
    )


async def test_export_dsl_to_a_manifest_with_progress(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.exporter.on(
        "StartExport", export_pb2.StartExportResponse(job=_export_job(common_pb2.JOB_STATE_PENDING))
    )
    done = _export_job(
        common_pb2.JOB_STATE_SUCCEEDED,
        manifest_uri="s3://exports/cars/red/manifest.csv",
        manifest_sha256="ab" * 32,
        counts=export_pb2.ExportCounts(records_written=2, bytes_written=512),
    )
    services.exporter.on(
        "GetExport",
        export_pb2.GetExportResponse(job=_export_job(common_pb2.JOB_STATE_RUNNING)),
        export_pb2.GetExportResponse(job=done),
    )

    result = await cli(
        "export",
        "cars",
        "--dsl=HAS Tags.ai",
        "--to=s3://exports/cars/red",
        "--format=csv",
        "--storage-connection=minio",
    )

    assert result.exit_code == 0, result.output
    assert services.exporter.requests("StartExport") == [
        export_pb2.StartExportRequest(
            query=export_pb2.QuerySelection(dataset_version_id=VERSION_IDS[1], query="HAS Tags.ai"),
            manifest=export_pb2.ManifestTarget(
                storage_connection="minio",
                bucket="exports",
                prefix="cars/red",
                format=export_pb2.MANIFEST_FORMAT_CSV,
            ),
        )
    ]
    assert len(services.exporter.requests("GetExport")) == 2
    assert "export job exp-1: succeeded" in result.stdout
    assert "s3://exports/cars/red/manifest.csv" in result.stdout
    assert "ab" * 32 in result.stdout
    assert "export exp-1" in result.stderr  # the progress bar's line


async def test_export_search_options_to_a_logical_dataset(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.exporter.on(
        "StartExport", export_pb2.StartExportResponse(job=_export_job(common_pb2.JOB_STATE_PENDING))
    )

    result = await cli(
        "export",
        "cars",
        "--text=a red car",
        "--top-k=50",
        "--any-tag=car",
        "--logical=red-cars",
        "--append",
        "--description=red ones",
        "--no-wait",
        "--json",
    )

    assert result.exit_code == 0, result.output
    assert services.exporter.requests("StartExport") == [
        export_pb2.StartExportRequest(
            search=search_pb2.SearchRequest(
                dataset_version_id=VERSION_IDS[1],
                text="a red car",
                top_k=50,
                tags=search_pb2.TagFilter(any_of=[search_pb2.TagMatch(name="car")]),
            ),
            logical_dataset=export_pb2.LogicalDatasetTarget(
                name="red-cars", description="red ones", append=True
            ),
        )
    ]
    assert services.exporter.requests("GetExport") == []
    assert json.loads(result.stdout)["job"]["id"] == "exp-1"


async def test_export_file_ids_and_target_rules(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.exporter.on(
        "StartExport", export_pb2.StartExportResponse(job=_export_job(common_pb2.JOB_STATE_SUCCEEDED))
    )

    picked = await cli("export", "cars", "--file-id=f1", "--file-id=f2", "--to=s3://exports/picked")
    assert picked.exit_code == 0, picked.output
    (request,) = services.exporter.requests("StartExport")
    assert request.files == export_pb2.FileSelection(dataset_version_id=VERSION_IDS[1], file_ids=["f1", "f2"])
    assert request.manifest.format == export_pb2.MANIFEST_FORMAT_JSONL
    # Already terminal when started: nothing to poll.
    assert services.exporter.requests("GetExport") == []

    both = await cli("export", "cars", "--to=s3://exports/x", "--logical=x")
    neither = await cli("export", "cars")
    mixed = await cli("export", "cars", "--file-id=f1", "--text=car", "--logical=x")
    bad_format = await cli("export", "cars", "--to=s3://exports/x", "--format=parquet")
    for refused in (both, neither, mixed, bad_format):
        assert refused.exit_code == ExitCode.USAGE
        assert refused.stderr.startswith("error: ")
    assert "--format: expected jsonl or csv" in bad_format.stderr
    assert len(services.exporter.requests("StartExport")) == 1


async def test_export_dsl_with_a_sort_travels_as_a_search(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.exporter.on(
        "StartExport", export_pb2.StartExportResponse(job=_export_job(common_pb2.JOB_STATE_SUCCEEDED))
    )

    result = await cli(
        "export", "cars", "--dsl=HAS Tags.ai", "--sort=modified:asc", "--to=s3://exports/sorted"
    )

    assert result.exit_code == 0, result.output
    (request,) = services.exporter.requests("StartExport")
    assert request.WhichOneof("selection") == "search"
    assert request.search == search_pb2.SearchRequest(
        dataset_version_id=VERSION_IDS[1],
        query="HAS Tags.ai",
        sort_field=search_pb2.SORT_FIELD_LAST_MODIFIED,
        sort_direction=search_pb2.SORT_DIRECTION_ASCENDING,
    )
