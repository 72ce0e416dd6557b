"""The SDK against a running ExportService and images in the S3 API server.

The SDK is synchronous; it runs in a worker thread so that the in-process
servers on this event loop keep answering.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from viewfinder import DatasetNotFoundError, ItemTag, load_dataset, load_manifest
from viewfinder.v1 import common_pb2, export_pb2, search_pb2
from viewfinder_exporter.testing import FileRow, RunningExporter, SourceDataset, insert_dataset, png_bytes

pytestmark = pytest.mark.stack

PALETTE = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (240, 240, 0), (0, 0, 0)]
NAMES = ["red", "green", "blue", "yellow", "black"]


@pytest.fixture
async def images(pool: asyncpg.Pool, bucket: str, s3: Any) -> SourceDataset:
    """Five catalogued images in the bucket, each tagged with its colour; the yellow one is a 'keeper'."""
    rows = []
    for index, (name, colour) in enumerate(zip(NAMES, PALETTE, strict=True)):
        key = f"photos/{index}-{name}.png"
        await s3.put_object(Bucket=bucket, Key=key, Body=png_bytes(colour, (40 + index, 30)))
        tags = [("ai", "colour", name)] + ([("user", "keeper", "")] if name == "yellow" else [])
        rows.append(FileRow(key=key, width=40 + index, height=30, tags=tags, modified_minute=index))
    async with pool.acquire() as conn:
        return await insert_dataset(conn, bucket=bucket, files=rows)


def ascending(source: SourceDataset) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(
        dataset_version_id=source.version_id,
        sort_field=search_pb2.SORT_FIELD_LAST_MODIFIED,
        sort_direction=search_pb2.SORT_DIRECTION_ASCENDING,
    )


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32) / 255.0).permute(2, 0, 1)


def colour_index(tags: tuple[ItemTag, ...]) -> int:
    return NAMES.index(next(tag.value for tag in tags if tag.name == "colour"))


async def test_a_version_loads_in_three_lines_and_yields_decoded_images(
    exporter: RunningExporter, images: SourceDataset, wait: Any
) -> None:
    request = export_pb2.StartExportRequest(
        search=ascending(images), logical_dataset=export_pb2.LogicalDatasetTarget(name="colours")
    )
    job = await wait((await exporter.stub.StartExport(request, timeout=30)).job.job.id)
    assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error

    def three_lines() -> list[tuple[Any, tuple[int, int], list[str]]]:
        dataset = load_dataset("colours", version="v1", target=exporter.address)
        return [
            (image.getpixel((5, 5)), image.size, sorted(t.name for t in tags))
            for image, tags in dataset.to_torch()
        ]

    seen = await asyncio.to_thread(three_lines)
    assert seen == [
        (colour, (40 + index, 30), ["colour", "keeper"] if NAMES[index] == "yellow" else ["colour"])
        for index, colour in enumerate(PALETTE)
    ]

    def keepers_and_batches() -> tuple[list[str], list[list[int]]]:
        dataset = load_dataset("colours", target=exporter.address)  # latest
        keepers = [item.key for item in dataset.filter("keeper", source="user")]
        loader: DataLoader[Any] = DataLoader(
            cast(TorchDataset[Any], dataset.to_torch(to_tensor, colour_index)), batch_size=2
        )
        return keepers, [labels.tolist() for _, labels in loader]

    keepers, batches = await asyncio.to_thread(keepers_and_batches)
    assert keepers == ["photos/3-yellow.png"]
    assert batches == [[0, 1], [2, 3], [4]]

    with pytest.raises(DatasetNotFoundError):
        await asyncio.to_thread(load_dataset, "colours", "v9", target=exporter.address)


async def test_an_exported_manifest_loads_and_verifies_against_its_summary(
    exporter: RunningExporter, images: SourceDataset, bucket: str, wait: Any
) -> None:
    for manifest_format, extension in (
        (export_pb2.MANIFEST_FORMAT_JSONL, "jsonl"),
        (export_pb2.MANIFEST_FORMAT_CSV, "csv"),
    ):
        request = export_pb2.StartExportRequest(
            search=ascending(images),
            manifest=export_pb2.ManifestTarget(
                bucket=bucket, prefix=f"sdk/{extension}", format=manifest_format
            ),
        )
        job = await wait((await exporter.stub.StartExport(request, timeout=30)).job.job.id)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error

        dataset = await asyncio.to_thread(load_manifest, job.manifest_uri)
        assert [item.file_id for item in dataset] == images.file_ids
        assert dataset[3].has_tag("keeper", source="user")
        first_image, first_tags = await asyncio.to_thread(dataset.to_torch().__getitem__, 0)
        assert first_image.getpixel((0, 0)) == PALETTE[0]
        assert [tag.value for tag in first_tags] == ["red"]
