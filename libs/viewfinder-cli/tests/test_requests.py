"""Request building from options (pure, no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from viewfinder.v1 import common_pb2, dataset_pb2, labeling_pb2, search_pb2
from viewfinder_cli.errors import CliError, ExitCode
from viewfinder_cli.jobs import JobService, JobSnapshot, watch_job
from viewfinder_cli.requests import (
    SearchOptions,
    build_search_request,
    parse_bucket_uri,
    parse_document,
    parse_sort,
    parse_tag_match,
    parse_time,
    parse_version_number,
    tag_definition_request,
)


def _no_image(path: str) -> bytes:
    raise AssertionError(f"no local image expected, got {path}")


def test_every_search_option_lands_in_its_request_field() -> None:
    options = SearchOptions(
        text="a red car",
        top_k=20,
        threshold=0.25,
        any_tags=["car", "truck=big"],
        all_tags=["road"],
        exclude_tags=["night"],
        tag_source="ai",
        name="IMG_",
        path_prefix="cars/2024/",
        modified_after="2024-05-01",
        modified_before="2024-06-01T12:00:00+02:00",
        image_formats=["JPEG", "PNG"],
        min_width=640,
        max_height=2000,
        min_size=1024,
        sort="modified:asc",
        page_size=50,
        page_token="tok",
        facets=True,
        preview_urls=True,
        index_name="cars_v2",
    )
    request = build_search_request("ver-1", options, _no_image)

    expected = search_pb2.SearchRequest(
        dataset_version_id="ver-1",
        text="a red car",
        top_k=20,
        score_threshold=0.25,
        tags=search_pb2.TagFilter(
            any_of=[search_pb2.TagMatch(name="car"), search_pb2.TagMatch(name="truck", value="big")],
            all_of=[search_pb2.TagMatch(name="road")],
            none_of=[search_pb2.TagMatch(name="night")],
            source=common_pb2.TAG_SOURCE_AI,
        ),
        metadata=search_pb2.MetadataFilter(
            name_contains="IMG_",
            path_prefix="cars/2024/",
            formats=["JPEG", "PNG"],
            width=common_pb2.Int64Range(min=640),
            height=common_pb2.Int64Range(max=2000),
            size=common_pb2.Int64Range(min=1024),
        ),
        sort_field=search_pb2.SORT_FIELD_LAST_MODIFIED,
        sort_direction=search_pb2.SORT_DIRECTION_ASCENDING,
        page_size=50,
        page_token="tok",
        include_facets=True,
        include_preview_urls=True,
        index_name="cars_v2",
    )
    expected.metadata.modified.start_time.FromDatetime(datetime(2024, 5, 1, tzinfo=UTC))
    expected.metadata.modified.end_time.FromDatetime(datetime(2024, 6, 1, 10, 0, tzinfo=UTC))
    assert request == expected
    assert not request.metadata.width.HasField("max")


def test_no_options_is_a_pure_filter_over_the_version() -> None:
    request = build_search_request("ver-1", SearchOptions(), _no_image)
    assert request == search_pb2.SearchRequest(dataset_version_id="ver-1")
    assert request.WhichOneof("vector_query") is None
    assert not request.HasField("score_threshold")


def test_a_bucket_image_is_sent_as_uri_and_a_local_one_as_bytes() -> None:
    by_uri = build_search_request("v", SearchOptions(image="s3://images/cars/a.jpg"), _no_image)
    assert by_uri.WhichOneof("vector_query") == "image_uri"
    assert by_uri.image_uri == "s3://images/cars/a.jpg"

    by_bytes = build_search_request("v", SearchOptions(image="/tmp/q.png"), lambda path: path.encode())
    assert by_bytes.WhichOneof("vector_query") == "image_bytes"
    assert by_bytes.image_bytes == b"/tmp/q.png"


def test_the_dsl_is_the_whole_query() -> None:
    request = build_search_request(
        "v", SearchOptions(dsl="HAS Tags.ai AND TopK=5", sort="relevance"), _no_image
    )
    assert request.query == "HAS Tags.ai AND TopK=5"
    assert request.sort_field == search_pb2.SORT_FIELD_RELEVANCE
    assert request.WhichOneof("vector_query") is None

    with pytest.raises(CliError) as raised:
        build_search_request("v", SearchOptions(dsl="HAS Tags.ai", text="car", any_tags=["x"]), _no_image)
    assert raised.value.exit_code == ExitCode.USAGE
    assert "--text" in raised.value.message
    assert "--any-tag" in raised.value.message


def test_text_and_image_together_are_refused() -> None:
    with pytest.raises(CliError, match="alternatives"):
        build_search_request("v", SearchOptions(text="car", image="s3://b/k.jpg"), _no_image)


def test_times_without_zone_are_utc_and_zones_are_kept() -> None:
    assert parse_time("2024-05-01", "--x") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_time("2024-05-01T08:30:00Z", "--x") == datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
    assert parse_time("2024-05-01T08:30:00+02:00", "--x").utcoffset() == timedelta(hours=2)
    assert parse_time("2024-05-01T08:30:00+02:00", "--x") == datetime(
        2024, 5, 1, 8, 30, tzinfo=timezone(timedelta(hours=2))
    )
    with pytest.raises(CliError, match="--modified-after"):
        parse_time("yesterday", "--modified-after")


@pytest.mark.parametrize(
    ("text", "field", "direction"),
    [
        ("relevance", search_pb2.SORT_FIELD_RELEVANCE, search_pb2.SORT_DIRECTION_UNSPECIFIED),
        ("modified", search_pb2.SORT_FIELD_LAST_MODIFIED, search_pb2.SORT_DIRECTION_UNSPECIFIED),
        ("modified:desc", search_pb2.SORT_FIELD_LAST_MODIFIED, search_pb2.SORT_DIRECTION_DESCENDING),
        ("last_modified:asc", search_pb2.SORT_FIELD_LAST_MODIFIED, search_pb2.SORT_DIRECTION_ASCENDING),
    ],
)
def test_sort_values(text: str, field: int, direction: int) -> None:
    assert parse_sort(text) == (field, direction)


@pytest.mark.parametrize("text", ["size", "modified:up", ""])
def test_bad_sort_values_are_usage_errors(text: str) -> None:
    with pytest.raises(CliError, match="--sort"):
        parse_sort(text)


def test_tag_matches_and_bucket_uris_and_versions() -> None:
    assert parse_tag_match("lane line=left", "--any-tag") == search_pb2.TagMatch(
        name="lane line", value="left"
    )
    assert parse_tag_match("car", "--any-tag") == search_pb2.TagMatch(name="car")
    with pytest.raises(CliError, match="--all-tags"):
        parse_tag_match("=x", "--all-tags")
    assert parse_bucket_uri("s3://exports/cars/2024", "--to") == ("exports", "cars/2024")
    assert parse_bucket_uri("s3://exports", "--to") == ("exports", "")
    with pytest.raises(CliError, match="--to"):
        parse_bucket_uri("/local/dir", "--to")
    assert parse_version_number("v12") == 12
    assert parse_version_number("3") == 3
    with pytest.raises(CliError, match="--version"):
        parse_version_number("latest")


TAG_DEFINITION_YAML = """
name: road-scenes
description: what a driver sees
guide_prompt: As an experienced driver, look at this road scene.
groups:
  - name: weather
    description: the weather
    selection_mode: single
tags:
  - name: lane line
    description: painted lane markings
    allowed_values: [left, right]
  - name: sunny
    description: clear sky
    group: weather
"""


def test_a_yaml_tag_definition_becomes_a_create_request() -> None:
    request = tag_definition_request(parse_document(TAG_DEFINITION_YAML, "road.yaml"), "road.yaml")
    assert request == labeling_pb2.CreateTagDefinitionRequest(
        name="road-scenes",
        description="what a driver sees",
        guide_prompt="As an experienced driver, look at this road scene.",
        groups=[
            labeling_pb2.TagGroup(
                name="weather", description="the weather", selection_mode=labeling_pb2.SELECTION_MODE_SINGLE
            )
        ],
        tags=[
            labeling_pb2.TagSpec(
                name="lane line", description="painted lane markings", allowed_values=["left", "right"]
            ),
            labeling_pb2.TagSpec(name="sunny", description="clear sky", group="weather"),
        ],
    )
    renamed = tag_definition_request(
        parse_document(TAG_DEFINITION_YAML, "road.yaml"), "road.yaml", name="other"
    )
    assert renamed.name == "other"


def test_tag_definition_mistakes_are_named() -> None:
    with pytest.raises(CliError, match="colour"):
        tag_definition_request({"name": "x", "tags": [{"name": "a", "colour": "red"}]}, "d.yaml")
    with pytest.raises(CliError, match="at least one tag"):
        tag_definition_request({"name": "x"}, "d.yaml")
    with pytest.raises(CliError, match="not valid JSON"):
        parse_document("{", "d.json")
    with pytest.raises(CliError, match="expected a mapping"):
        parse_document("- a\n- b\n", "d.yaml")


def _snapshot(state: common_pb2.JobState.ValueType, processed: int) -> JobSnapshot:
    job = common_pb2.Job(
        id="j1", state=state, progress=common_pb2.JobProgress(total_items=4, processed_items=processed)
    )
    return JobSnapshot(JobService.SYNC, dataset_pb2.SyncJob(job=job))


def test_watch_polls_until_a_terminal_state() -> None:
    script = [
        _snapshot(common_pb2.JOB_STATE_PENDING, 0),
        _snapshot(common_pb2.JOB_STATE_RUNNING, 2),
        _snapshot(common_pb2.JOB_STATE_CANCELLING, 3),
        _snapshot(common_pb2.JOB_STATE_CANCELLED, 3),
        _snapshot(common_pb2.JOB_STATE_RUNNING, 4),  # never fetched: the watch stopped
    ]
    seen: list[JobSnapshot] = []
    sleeps: list[float] = []
    final = watch_job(lambda: script.pop(0), poll_interval_s=0.5, on_update=seen.append, sleep=sleeps.append)
    assert final.job.state == common_pb2.JOB_STATE_CANCELLED
    assert not final.succeeded
    assert [snapshot.state_name for snapshot in seen] == ["pending", "running", "cancelling", "cancelled"]
    assert sleeps == [0.5, 0.5, 0.5]
    assert len(script) == 1
