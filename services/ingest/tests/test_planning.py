"""Sync planning, request validation and derived ids: pure logic, no servers."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest

from viewfinder_common.errors import InvalidArgument
from viewfinder_ingest.adapters.catalogue import prefix_upper_bound
from viewfinder_ingest.domain import requests
from viewfinder_ingest.domain.models import CatalogueFile, FileStatus, ListedObject, SyncMode, file_id_for
from viewfinder_ingest.domain.sync_plan import DIRECT_PARTITION, in_partition, page_range, plan_page

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def listed(key: str, etag: str = "e", size: int = 5) -> ListedObject:
    return ListedObject(key=key, size=size, etag=etag, last_modified=T0)


def row(key: str, etag: str = "e", status: FileStatus = FileStatus.ACTIVE) -> CatalogueFile:
    return CatalogueFile(
        id=key,
        dataset_id="d",
        version_id="v",
        bucket="b",
        key=key,
        uri=f"s3://b/{key}",
        size=5,
        etag=etag,
        last_modified=T0.replace(microsecond=123000),
        status=status,
    )


def test_incremental_plan_inspects_only_new_and_changed_and_finds_vanished() -> None:
    existing = {
        r.key: r for r in [row("a"), row("b", etag="old"), row("c"), row("d", status=FileStatus.DELETED)]
    }
    plan = plan_page([listed("a"), listed("b"), listed("d"), listed("e")], existing, SyncMode.INCREMENTAL)
    assert [obj.key for obj, _ in plan.to_inspect] == ["b", "d", "e"]
    assert plan.unchanged == 1
    assert [r.key for r in plan.vanished] == ["c"]


def test_full_plan_inspects_everything_listed() -> None:
    plan = plan_page([listed("a"), listed("b")], {"a": row("a")}, SyncMode.FULL)
    assert [obj.key for obj, _ in plan.to_inspect] == ["a", "b"]
    assert plan.unchanged == 0


def test_page_ranges_chain_and_the_last_page_runs_to_the_partition_end() -> None:
    first = page_range("p/x/", "p/", None, [listed("p/x/1"), listed("p/x/2")], is_last=False)
    assert (first.after, first.through) == (None, "p/x/2")
    last = page_range("p/x/", "p/", "p/x/2", [listed("p/x/3")], is_last=True)
    assert (last.after, last.through) == ("p/x/2", None)


def test_partition_membership() -> None:
    assert in_partition("p/a.jpg", DIRECT_PARTITION, "p/")
    assert not in_partition("p/x/a.jpg", DIRECT_PARTITION, "p/")
    assert in_partition("p/x/a.jpg", "p/x/", "p/")


def test_prefix_upper_bound_in_code_point_order() -> None:
    assert prefix_upper_bound("p/x/") == "p/x0"
    assert prefix_upper_bound("") is None
    bound = prefix_upper_bound("a\U0010ffff")
    assert bound == "b"


def test_file_ids_are_derived_from_version_and_key() -> None:
    version = str(uuid.uuid4())
    assert file_id_for(version, "k.jpg") == file_id_for(version, "k.jpg")
    assert file_id_for(version, "k.jpg") != file_id_for(version, "k2.jpg")
    # PostgreSQL computes the same id as md5(version || '/' || key)::uuid.
    assert file_id_for(version, "k.jpg") == str(
        uuid.UUID(hashlib.md5(f"{version}/k.jpg".encode()).hexdigest())
    )


@pytest.mark.parametrize("name", ["Cats", "-x", "a" * 129, "a b", ""])
def test_bad_dataset_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        requests.validate_dataset_name(name)


@pytest.mark.parametrize("bucket", ["ab", "Upper", "a..b", "192.168.0.1", "-ab", ""])
def test_bad_buckets(bucket: str) -> None:
    with pytest.raises(InvalidArgument, match="bucket"):
        requests.validate_bucket(bucket)


def test_prefix_and_page_size_rules() -> None:
    with pytest.raises(InvalidArgument, match="must not start with '/'"):
        requests.validate_prefix("/images")
    assert requests.validate_prefix("images/") == "images/"
    assert requests.page_size(0) == 100
    assert requests.page_size(1000) == 1000
    with pytest.raises(InvalidArgument, match="between 1 and 1000"):
        requests.page_size(1001)


def test_page_tokens_round_trip_and_reject_forgeries() -> None:
    token = requests.encode_page_token({"after_key": "a/b"})
    assert requests.decode_page_token(token, ["after_key"]) == {"after_key": "a/b"}
    assert requests.decode_page_token("", ["after_key"]) is None
    with pytest.raises(InvalidArgument, match="page_token"):
        requests.decode_page_token("!!!", ["after_key"])
    with pytest.raises(InvalidArgument, match="page_token"):
        requests.decode_page_token(token, ["after_name"])


def test_update_mask_paths() -> None:
    assert requests.validate_update_mask(["description", "labeling.automatic"]) == [
        "description",
        "labeling.automatic",
    ]
    with pytest.raises(InvalidArgument, match="'bucket' cannot be updated"):
        requests.validate_update_mask(["bucket"])
    with pytest.raises(InvalidArgument, match="update_mask is required"):
        requests.validate_update_mask([])
    updated = requests.apply_update_mask(
        ["labeling.automatic", "description"],
        {"description": "old", "labeling": {"automatic": False, "model_connection": "m"}, "indexing": {}},
        {"description": "new", "labeling": {"automatic": True, "model_connection": "ignored"}},
    )
    assert updated == {
        "description": "new",
        "labeling": {"automatic": True, "model_connection": "m"},
        "indexing": {},
    }
