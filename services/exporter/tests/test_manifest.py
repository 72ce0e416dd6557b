"""Unit tests of manifest encoding (parsed back with the standard library) and checksums."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime

from viewfinder.v1 import export_pb2, search_pb2
from viewfinder_exporter.domain.manifest import (
    MANIFEST_FIELDS,
    ManifestEncoder,
    ManifestSummary,
    version_checksum,
)
from viewfinder_exporter.domain.records import ExportRecord, TagSnapshot
from viewfinder_exporter.domain.targets import ManifestFormat
from viewfinder_exporter.job_runner import summary_selection


def record(index: int, *, score: float | None = None, key: str = "") -> ExportRecord:
    return ExportRecord(
        file_id=f"00000000-0000-0000-0000-{index:012d}",
        dataset_id="d",
        dataset_version_id="v",
        uri=f"s3://b/{key or f'img/{index}.png'}",
        bucket="b",
        key=key or f"img/{index}.png",
        size=100 + index,
        etag=f"e{index}",
        last_modified=datetime(2025, 5, 1, 12, 30, tzinfo=UTC),
        format="PNG",
        width=64,
        height=48,
        frames=1,
        mode="RGB",
        tags=(
            TagSnapshot("colour", "red", "ai", 0.5, "vlm", "def-1", 3),
            TagSnapshot("keep", "", "user"),
        ),
        score=score,
        storage_connection="default",
    )


def test_jsonl_has_one_object_per_record_with_every_field() -> None:
    data = ManifestEncoder(ManifestFormat.JSONL).encode([record(1, score=0.25), record(2)])
    lines = data.decode().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert list(first) == list(MANIFEST_FIELDS)
    assert first["file_id"].endswith("000000000001")
    assert first["score"] == 0.25
    assert second["score"] is None
    assert first["last_modified"] == "2025-05-01T12:30:00Z"
    assert first["tags"] == [
        {
            "name": "colour",
            "value": "red",
            "source": "ai",
            "confidence": 0.5,
            "model": "vlm",
            "definition_id": "def-1",
            "definition_version": 3,
        },
        {"name": "keep", "value": "", "source": "user"},
    ]
    assert ManifestEncoder(ManifestFormat.JSONL).header() == b""


def test_csv_round_trips_awkward_keys_and_tags_as_json() -> None:
    encoder = ManifestEncoder(ManifestFormat.CSV)
    awkward = 'dir/with,comma "and quotes"\u00e9.png'
    data = encoder.header() + encoder.encode([record(1, key=awkward), record(2, score=0.5)])
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert len(rows) == 2
    assert rows[0]["key"] == awkward
    assert rows[0]["score"] == ""
    assert rows[1]["score"] == "0.5"
    assert json.loads(rows[0]["tags"])[0]["name"] == "colour"
    assert rows[0]["size"] == "101"


def test_summary_is_json_with_counts_and_checksum() -> None:
    manifest = ManifestEncoder(ManifestFormat.JSONL).encode([record(1)])
    summary = ManifestSummary(
        job_id="j",
        manifest_uri="s3://b/p/manifest.jsonl",
        format=ManifestFormat.JSONL,
        records=1,
        byte_count=len(manifest),
        sha256=hashlib.sha256(manifest).hexdigest(),
        dataset_id="d",
        dataset_version_id="v",
        selection={"query": {"query": "HAS Tags.ai"}},
    )
    body = json.loads(summary.to_bytes())
    assert body["records"] == 1
    assert body["bytes"] == len(manifest)
    assert body["sha256"] == hashlib.sha256(manifest).hexdigest()
    assert body["selection"] == {"query": {"query": "HAS Tags.ai"}}


def test_version_checksum_depends_on_ids_etags_and_order() -> None:
    items = [("a", "1"), ("b", "2")]
    assert version_checksum(items) == hashlib.sha256(b"a\t1\nb\t2\n").hexdigest()
    assert version_checksum(items) != version_checksum(list(reversed(items)))
    assert version_checksum(items) != version_checksum([("a", "1"), ("b", "3")])


def test_summary_records_a_query_image_by_digest_not_bytes() -> None:
    image = b"\x89PNG fake image bytes" * 100
    request = export_pb2.StartExportRequest(
        search=search_pb2.SearchRequest(dataset_version_id="v", image_bytes=image, top_k=5)
    )
    selection = summary_selection(request)
    assert selection == {
        "search": {
            "dataset_version_id": "v",
            "top_k": 5,
            "image_sha256": hashlib.sha256(image).hexdigest(),
            "image_size": len(image),
        }
    }
    files = export_pb2.StartExportRequest(
        files=export_pb2.FileSelection(dataset_version_id="v", file_ids=["a", "b"])
    )
    assert summary_selection(files) == {"files": {"dataset_version_id": "v", "file_count": 2}}
