"""viewfinder client package: the gRPC and event contracts, and the Python SDK.

The generated contracts are in :mod:`viewfinder.v1` (e.g. ``from viewfinder.v1 import dataset_pb2``).
The SDK loads exported datasets::

    from viewfinder import load_dataset

    cars = load_dataset("cars", version="v2")
    for image, tags in cars.filter(tag="lane line").to_torch():
        ...

``load_manifest("s3://bucket/prefix/manifest.jsonl")`` reads an exported manifest file instead.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from viewfinder.client import DatasetNotFoundError, ExportClient, load_dataset
    from viewfinder.datasets import (
        Dataset,
        DatasetItem,
        ImageDataset,
        ItemTag,
        ManifestError,
        collate_as_lists,
        load_manifest,
    )
    from viewfinder.storage import ObjectReader, StorageOptions

# The SDK is imported on first use, so that services importing only the
# contracts (viewfinder.v1) do not load Pillow and the SDK.
_SDK = {
    "DatasetNotFoundError": "viewfinder.client",
    "ExportClient": "viewfinder.client",
    "load_dataset": "viewfinder.client",
    "Dataset": "viewfinder.datasets",
    "DatasetItem": "viewfinder.datasets",
    "ImageDataset": "viewfinder.datasets",
    "ItemTag": "viewfinder.datasets",
    "ManifestError": "viewfinder.datasets",
    "collate_as_lists": "viewfinder.datasets",
    "load_manifest": "viewfinder.datasets",
    "ObjectReader": "viewfinder.storage",
    "StorageOptions": "viewfinder.storage",
}

__all__ = [
    "Dataset",
    "DatasetItem",
    "DatasetNotFoundError",
    "ExportClient",
    "ImageDataset",
    "ItemTag",
    "ManifestError",
    "ObjectReader",
    "StorageOptions",
    "collate_as_lists",
    "load_dataset",
    "load_manifest",
]


def __getattr__(name: str) -> Any:
    module = _SDK.get(name)
    if module is None:
        raise AttributeError(f"module 'viewfinder' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
