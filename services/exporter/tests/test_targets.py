"""Unit tests of manifest target checks, logical dataset names and version names."""

from __future__ import annotations

import re

import pytest

from viewfinder_common.errors import InvalidArgument
from viewfinder_exporter.domain.errors import PermissionDenied
from viewfinder_exporter.domain.targets import (
    ManifestFormat,
    check_key_prefix,
    check_logical_dataset_name,
    manifest_location,
    parse_version_name,
)

ALLOWED = frozenset({"default"})


def location(prefix: str = "exports/cars", bucket: str = "exports", connection: str = "") -> object:
    return manifest_location(
        storage_connection=connection,
        bucket=bucket,
        prefix=prefix,
        format=ManifestFormat.JSONL,
        allowed_connections=ALLOWED,
        allowed_buckets=("exports", "team-*"),
    )


def test_keys_of_a_location_stay_under_the_prefix() -> None:
    loc = manifest_location(
        storage_connection="",
        bucket="exports",
        prefix="runs/2025/",
        format=ManifestFormat.CSV,
        allowed_connections=ALLOWED,
        allowed_buckets=("exports",),
    )
    assert loc.prefix == "runs/2025"
    assert loc.manifest_key == "runs/2025/manifest.csv"
    assert loc.summary_key == "runs/2025/_SUCCESS"
    assert loc.temporary_key("job-1") == "runs/2025/_temporary/job-1.csv"
    assert loc.uri(loc.manifest_key) == "s3://exports/runs/2025/manifest.csv"
    assert loc.storage_connection == "default"


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        ("../other", "'..'"),
        ("exports/../../etc", "'..'"),
        ("exports/..", "'..'"),
        ("./exports", "'.'"),
        ("exports//cars", "empty"),
        ("/absolute/path", "relative"),
        ("exports\\..\\x", "'\\'"),
        ("exports/\ncars", "U+000A"),
        ("exports/\x00", "U+0000"),
        ("exports/\x7f", "U+007F"),
        ("exports/\u202ecod.exe", "U+202E"),
        ("exports/\u2028", "U+2028"),
        ("", "required"),
        ("/", "relative"),
        ("a" * 1000, "too long"),
    ],
)
def test_unsafe_prefixes_are_invalid_arguments(prefix: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(reason)):
        check_key_prefix(prefix)


def test_plain_prefixes_with_dots_in_names_are_fine() -> None:
    assert check_key_prefix("exports/v1.2/cars..old") == "exports/v1.2/cars..old"
    assert check_key_prefix("ünïcode/名前") == "ünïcode/名前"


def test_buckets_must_be_allowed_by_name_or_pattern() -> None:
    location(bucket="exports")
    location(bucket="team-vision")
    with pytest.raises(PermissionDenied, match="'other' is not an allowed export target"):
        location(bucket="other")


def test_no_bucket_is_allowed_by_default() -> None:
    with pytest.raises(PermissionDenied):
        manifest_location(
            storage_connection="",
            bucket="exports",
            prefix="x",
            format=ManifestFormat.JSONL,
            allowed_connections=ALLOWED,
            allowed_buckets=(),
        )


def test_unknown_storage_connections_are_refused() -> None:
    with pytest.raises(PermissionDenied, match="storage connection 'prod-oss'"):
        location(connection="prod-oss")


def test_malformed_bucket_names_are_invalid_before_permission() -> None:
    with pytest.raises(InvalidArgument, match="not a valid bucket name"):
        location(bucket="Bad_Bucket")


def test_prefix_is_checked_before_the_bucket_permission() -> None:
    # A traversal attempt is a malformed request whatever the bucket.
    with pytest.raises(InvalidArgument):
        location(prefix="../x", bucket="other")


@pytest.mark.parametrize("name", ["cars", "cars-2025.v1", "a", "0_x"])
def test_valid_logical_dataset_names(name: str) -> None:
    assert check_logical_dataset_name(name) == name


@pytest.mark.parametrize("name", ["", "Cars", "-x", "a/b", "a" * 129, "a b"])
def test_invalid_logical_dataset_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_logical_dataset_name(name)


def test_version_names() -> None:
    assert parse_version_name("v1") == 1
    assert parse_version_name("v12") == 12
    assert parse_version_name("latest") is None
    assert parse_version_name("") is None
    for bad in ("2", "v0", "V2", "v-1", "v01", "version2"):
        with pytest.raises(InvalidArgument):
            parse_version_name(bad)
