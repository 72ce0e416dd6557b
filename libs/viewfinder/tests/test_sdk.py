"""The SDK over manifests in a bucket of the S3 API server: iterate, index, filter, decode,
a plain ``for`` loop over the map dataset, and torch's DataLoader (torch is a test dependency,
so these tests fail rather than skip when it is missing).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import boto3  # type: ignore[import-untyped]
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from viewfinder import (
    DatasetItem,
    ImageDataset,
    ItemTag,
    ManifestError,
    ObjectReader,
    StorageOptions,
    collate_as_lists,
    load_manifest,
)
from viewfinder.storage import split_s3_uri

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 200)}


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, colour)
    # An adaptive palette keeps the one colour exact.
    (image.quantize(colors=2) if mode == "P" else image).save(buffer, format="PNG")
    return buffer.getvalue()


def record(index: int, bucket: str, colour: str, **extra: Any) -> dict[str, Any]:
    tags = [{"name": "colour", "value": colour, "source": "ai", "confidence": 0.9, "model": "vlm"}]
    if index % 2 == 0:
        tags.append({"name": "keep", "value": "", "source": "user"})
    return {
        "file_id": f"00000000-0000-0000-0000-{index:012d}",
        "uri": f"s3://{bucket}/img/{index}.png",
        "bucket": bucket,
        "key": f"img/{index}.png",
        "size": 100,
        "etag": f"e{index}",
        "last_modified": "2025-05-01T12:00:00Z",
        "format": "PNG",
        "width": 32,
        "height": 24,
        "score": None,
        "tags": tags,
        "dataset_id": "d",
        "dataset_version_id": "v",
        "storage_connection": "default",
        **extra,
    }


@pytest.fixture
def s3() -> Any:
    options = StorageOptions.from_env()
    return boto3.client(
        "s3",
        endpoint_url=options.endpoint_url,
        region_name=options.region,
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
    )


@pytest.fixture
def bucket(s3: Any, unique_name: str) -> Iterator[str]:
    name = f"vf-sdk-{unique_name}"
    s3.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for item in s3.list_objects_v2(Bucket=name).get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
        s3.delete_bucket(Bucket=name)


@pytest.fixture
def colours(s3: Any, bucket: str) -> list[str]:
    """Six images in the bucket: red, green, blue, red, green, blue (one of them a palette PNG)."""
    names = list(COLOURS) * 2
    for index, name in enumerate(names):
        mode = "P" if index == 1 else "RGB"
        s3.put_object(Bucket=bucket, Key=f"img/{index}.png", Body=png(COLOURS[name], mode=mode))
    return names


def write_export(
    s3: Any, bucket: str, key: str, body: bytes, records: int, sha256: str | None = None
) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    summary = {"records": records, "sha256": sha256 or hashlib.sha256(body).hexdigest(), "bytes": len(body)}
    s3.put_object(Bucket=bucket, Key=key.rsplit("/", 1)[0] + "/_SUCCESS", Body=json.dumps(summary).encode())


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


pytestmark = pytest.mark.stack


def test_manifest_items_iterate_index_slice_and_filter(s3: Any, bucket: str, colours: list[str]) -> None:
    records = [record(i, bucket, colour) for i, colour in enumerate(colours)]
    records[2]["score"] = 0.75
    write_export(s3, bucket, "exports/run/manifest.jsonl", jsonl(records), len(records))

    dataset = load_manifest(f"s3://{bucket}/exports/run/manifest.jsonl")
    assert len(dataset) == 6
    assert dataset.name == "run"
    assert [item.key for item in dataset] == [f"img/{i}.png" for i in range(6)]
    first = dataset[0]
    assert isinstance(first, DatasetItem)
    assert first.tags[0] == ItemTag("colour", "red", "ai", 0.9, "vlm")
    assert first.last_modified is not None
    assert first.last_modified.isoformat() == "2025-05-01T12:00:00+00:00"
    assert dataset[2].score == 0.75
    assert dataset[-1].key == "img/5.png"
    assert [item.key for item in dataset[1:3]] == ["img/1.png", "img/2.png"]

    reds = dataset.filter("colour", value="red")
    assert [item.key for item in reds] == ["img/0.png", "img/3.png"]
    assert len(dataset.filter("keep", source="user")) == 3
    assert len(dataset.filter("keep", source="ai")) == 0
    assert len(dataset.filter(where=lambda item: item.score is not None)) == 1
    assert dataset.tag_counts() == {"colour": 6, "keep": 3}


def test_map_dataset_decodes_images_lazily_in_a_plain_for_loop(
    s3: Any, bucket: str, colours: list[str]
) -> None:
    records = [record(i, bucket, colour) for i, colour in enumerate(colours)]
    write_export(s3, bucket, "exports/run/manifest.jsonl", jsonl(records), len(records))
    dataset = load_manifest(f"s3://{bucket}/exports/run/manifest.jsonl")
    images = dataset.to_torch()
    assert isinstance(images, ImageDataset)
    assert len(images) == 6
    assert images.reader.cached_objects == 0  # nothing read before it is asked for

    seen = []
    for image, tags in images:
        assert isinstance(image, Image.Image)
        assert (image.size, image.mode) == ((32, 24), "RGB")  # the palette PNG is converted too
        seen.append((image.getpixel((3, 3)), next(t.value for t in tags if t.name == "colour")))
    assert seen == [(COLOURS[name], name) for name in colours]
    assert images.reader.cached_objects == 6
    # The second pass is served by the cache: the objects could even be gone.
    for index in range(6):
        s3.delete_object(Bucket=bucket, Key=f"img/{index}.png")
    assert images[4][0].getpixel((0, 0)) == COLOURS["green"]
    with pytest.raises(IndexError):
        images[6]


def test_csv_manifest_and_local_copies(s3: Any, bucket: str, colours: list[str], tmp_path: Path) -> None:
    buffer = io.StringIO()
    import csv  # noqa: PLC0415

    fields = list(record(0, bucket, "red"))
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    for i, colour in enumerate(colours):
        row = record(i, bucket, colour, score=0.5 if i == 0 else None)
        row["tags"] = json.dumps(row["tags"])
        writer.writerow(["" if row[f] is None else row[f] for f in fields])
    body = buffer.getvalue().encode()
    write_export(s3, bucket, "csv/manifest.csv", body, len(colours))

    dataset = load_manifest(f"s3://{bucket}/csv/manifest.csv")
    assert [item.tags[0].value for item in dataset] == colours
    assert (dataset[0].score, dataset[1].score) == (0.5, None)
    assert (dataset[0].width, dataset[0].size) == (32, 100)

    (tmp_path / "manifest.csv").write_bytes(body)
    (tmp_path / "_SUCCESS").write_text(json.dumps({"records": 6, "sha256": hashlib.sha256(body).hexdigest()}))
    local = load_manifest(tmp_path / "manifest.csv")
    assert [item.file_id for item in local] == [item.file_id for item in dataset]
    # Images are still read from the bucket.
    assert local.image(2).getpixel((0, 0)) == COLOURS["blue"]


def test_unfinished_or_altered_manifests_are_refused(s3: Any, bucket: str, colours: list[str]) -> None:
    body = jsonl([record(i, bucket, colour) for i, colour in enumerate(colours)])
    s3.put_object(Bucket=bucket, Key="unfinished/manifest.jsonl", Body=body)
    with pytest.raises(ManifestError, match="has not finished"):
        load_manifest(f"s3://{bucket}/unfinished/manifest.jsonl")
    assert len(load_manifest(f"s3://{bucket}/unfinished/manifest.jsonl", verify=False)) == 6

    write_export(s3, bucket, "altered/manifest.jsonl", body, 6, sha256="0" * 64)
    with pytest.raises(ManifestError, match="SHA-256"):
        load_manifest(f"s3://{bucket}/altered/manifest.jsonl")
    write_export(s3, bucket, "short/manifest.jsonl", body, 7)
    with pytest.raises(ManifestError, match="counts 7 records"):
        load_manifest(f"s3://{bucket}/short/manifest.jsonl")
    with pytest.raises(ManifestError, match="not a manifest"):
        load_manifest(f"s3://{bucket}/img/0.png")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 → CHW float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def colour_label(tags: tuple[ItemTag, ...]) -> int:
    return list(COLOURS).index(next(tag.value for tag in tags if tag.name == "colour"))


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_dataloader_batches_images_and_labels(
    s3: Any, bucket: str, colours: list[str], workers: int
) -> None:
    records = [record(i, bucket, colour) for i, colour in enumerate(colours)]
    write_export(s3, bucket, "t/manifest.jsonl", jsonl(records), len(records))
    dataset = load_manifest(f"s3://{bucket}/t/manifest.jsonl").to_torch(to_tensor, colour_label)

    loader: DataLoader[Any] = DataLoader(cast(TorchDataset[Any], dataset), batch_size=4, num_workers=workers)
    batches = list(loader)
    assert [tuple(images.shape) for images, _ in batches] == [(4, 3, 24, 32), (2, 3, 24, 32)]
    labels = torch.cat([labels for _, labels in batches]).tolist()
    assert labels == [0, 1, 2, 0, 1, 2]
    red = batches[0][0][0]
    assert red[:, 0, 0].tolist() == pytest.approx([220 / 255, 30 / 255, 30 / 255])

    # Untransformed samples (PIL image, tags) batch as lists with collate_as_lists.
    plain: DataLoader[Any] = DataLoader(
        cast(TorchDataset[Any], load_manifest(f"s3://{bucket}/t/manifest.jsonl").to_torch()),
        batch_size=3,
        collate_fn=collate_as_lists,
    )
    images, tags = next(iter(plain))
    assert [image.size for image in images] == [(32, 24)] * 3
    assert tags[0][0].name == "colour"


def test_datasets_pickle_for_worker_processes(s3: Any, bucket: str, colours: list[str]) -> None:
    write_export(s3, bucket, "p/manifest.jsonl", jsonl([record(0, bucket, "red")]), 1)
    images = load_manifest(f"s3://{bucket}/p/manifest.jsonl").to_torch()
    images[0]
    copy = pickle.loads(pickle.dumps(images))
    assert copy.reader.cached_objects == 0  # caches and clients stay in their process
    assert copy[0][0].getpixel((0, 0)) == COLOURS["red"]


class CountingClient:
    """Stands in for boto3 inside ObjectReader to count reads (unit test of the cache only)."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.reads: list[str] = []

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 (boto3's names)
        self.reads.append(Key)
        return {"Body": io.BytesIO(b"x" * self.sizes[Key])}


def test_cache_is_bounded_by_bytes_and_least_recently_used() -> None:
    reader = ObjectReader(StorageOptions(), cache_bytes=100)
    client = CountingClient({"a": 40, "b": 40, "c": 40, "huge": 500})
    reader._client = client
    reader.read("bk", "a")
    reader.read("bk", "b")
    reader.read("bk", "a")  # a is now the most recent
    reader.read("bk", "c")  # evicts b
    reader.read("bk", "a")
    reader.read("bk", "b")
    reader.read("bk", "huge")  # larger than the cache: never kept
    reader.read("bk", "huge")
    assert client.reads == ["a", "b", "c", "b", "huge", "huge"]


def test_options_keep_secrets_out_of_repr_and_uris_are_checked() -> None:
    options = StorageOptions(access_key_id="AKIA", secret_access_key="very-secret")
    assert "very-secret" not in repr(options)
    env = StorageOptions.from_env(
        {"VIEWFINDER_S3_ENDPOINT_URL": "http://h:9000", "VIEWFINDER_S3_REGION": "r"}
    )
    assert (env.endpoint_url, env.region, env.access_key_id) == ("http://h:9000", "r", None)
    assert split_s3_uri("s3://b/k/x.jsonl") == ("b", "k/x.jsonl")
    for bad in ("http://b/k", "s3://b", "s3:///k"):
        with pytest.raises(ValueError, match="not an s3"):
            split_s3_uri(bad)


def test_importing_the_contracts_does_not_load_the_sdk() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import sys, viewfinder.v1.export_pb2; "
        "assert 'PIL' not in sys.modules and 'viewfinder.datasets' not in sys.modules; "
        "from viewfinder import load_dataset; assert 'viewfinder.client' in sys.modules; "
        "assert not any(name.startswith('viewfinder_') for name in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
