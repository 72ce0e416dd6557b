"""Exported datasets in Python: items you can iterate, index and filter by tag, and a
PyTorch-style map dataset that reads images lazily from the bucket.

Two ways in::

    from viewfinder import load_dataset, load_manifest

    cars = load_dataset("cars", version="v2")            # a logical dataset version (ExportService)
    rows = load_manifest("s3://exports/cars/manifest.jsonl")  # a manifest file (JSONL or CSV)

    for image, tags in cars.filter(tag="lane line").to_torch():
        ...

``to_torch()`` needs no torch: it returns a map-style dataset (``__len__`` and
``__getitem__``) that ``torch.utils.data.DataLoader`` accepts as it is, and a
plain ``for`` loop as well. Items carry what was exported (location, size,
ETag, format, dimensions, tags with their source, score); nothing is read
from the bucket until an image is asked for.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, overload

from PIL import Image

from viewfinder.storage import DEFAULT_CACHE_BYTES, ObjectReader, StorageOptions, split_s3_uri

SUMMARY_NAME = "_SUCCESS"


class ManifestError(ValueError):
    """A manifest cannot be trusted: not finished, altered, or not a manifest at all."""


@dataclass(frozen=True, slots=True)
class ItemTag:
    """One tag of an item, as it was at export time."""

    name: str
    value: str = ""
    # "ai" (a labeling model) or "user" (a person).
    source: str = ""
    confidence: float | None = None
    model: str = ""


@dataclass(frozen=True, slots=True)
class DatasetItem:
    """One exported file: where it is and what was known about it at export time."""

    file_id: str
    uri: str
    bucket: str
    key: str
    size: int = 0
    etag: str = ""
    last_modified: datetime | None = None
    format: str = ""
    width: int = 0
    height: int = 0
    # Similarity score when the export came from a vector search.
    score: float | None = None
    tags: tuple[ItemTag, ...] = ()
    dataset_id: str = ""
    dataset_version_id: str = ""
    storage_connection: str = "default"

    @property
    def tag_names(self) -> frozenset[str]:
        """Names of the item's tags."""
        return frozenset(tag.name for tag in self.tags)

    def has_tag(self, name: str, value: str | None = None, source: str | None = None) -> bool:
        """Whether the item carries tag ``name`` (with that value, from that source, when given)."""
        return any(
            tag.name == name
            and (value is None or tag.value == value)
            and (source is None or tag.source == source)
            for tag in self.tags
        )


def collate_as_lists(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """A DataLoader ``collate_fn`` for (image, tags) samples: two lists instead of stacked tensors."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


class ImageDataset:
    """Map-style dataset of (image, target): images decoded on demand, tags as the target.

    ``transform`` turns the PIL image into what the model needs (e.g. a
    tensor), ``target_transform`` turns the item's tags into a label. Both
    must be picklable (module-level functions) for DataLoader workers.

    It does not subclass ``torch.utils.data.Dataset`` (torch stays optional);
    DataLoader only needs ``__len__`` and ``__getitem__``, though a type
    checker will ask for a ``cast`` at the call.
    """

    def __init__(
        self,
        items: Sequence[DatasetItem],
        reader: ObjectReader,
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[tuple[ItemTag, ...]], Any] | None = None,
        image_mode: str | None = "RGB",
    ) -> None:
        self.items = items
        self.reader = reader
        self.transform = transform
        self.target_transform = target_transform
        self.image_mode = image_mode

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for index in range(len(self.items)):
            yield self[index]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not -len(self.items) <= index < len(self.items):
            # IndexError ends a plain ``for`` loop over the dataset.
            raise IndexError(f"index {index} is out of range for {len(self.items)} items")
        item = self.items[index]
        image: Any = decode_image(self.reader.read(item.bucket, item.key), self.image_mode)
        if self.transform is not None:
            image = self.transform(image)
        target: Any = item.tags
        if self.target_transform is not None:
            target = self.target_transform(item.tags)
        return image, target


def decode_image(data: bytes, mode: str | None = "RGB") -> Image.Image:
    """Decodes image bytes fully (so a bad file fails here, not later), in ``mode`` when given."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return opened.convert(mode) if mode and opened.mode != mode else opened.copy()


class Dataset(Sequence[DatasetItem]):
    """Exported items in export order: iterate, index, slice, filter by tag, read images."""

    def __init__(
        self,
        items: Iterable[DatasetItem],
        *,
        name: str = "",
        version: str = "",
        storage: StorageOptions | None = None,
        reader: ObjectReader | None = None,
    ) -> None:
        self._items = list(items)
        self.name = name
        self.version = version
        self._reader = reader or ObjectReader(storage)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> DatasetItem: ...

    @overload
    def __getitem__(self, index: slice) -> Dataset: ...

    def __getitem__(self, index: int | slice) -> DatasetItem | Dataset:
        if isinstance(index, slice):
            return self._derived(self._items[index])
        return self._items[index]

    def __iter__(self) -> Iterator[DatasetItem]:
        return iter(self._items)

    def __repr__(self) -> str:
        label = f"{self.name} {self.version}".strip() or "manifest"
        return f"<viewfinder.Dataset {label}: {len(self)} items>"

    def filter(
        self,
        tag: str | None = None,
        *,
        value: str | None = None,
        source: str | None = None,
        where: Callable[[DatasetItem], bool] | None = None,
    ) -> Dataset:
        """The items that carry ``tag`` (with ``value``, from ``source``) and satisfy ``where``."""
        kept = [
            item
            for item in self._items
            if (tag is None or item.has_tag(tag, value, source)) and (where is None or where(item))
        ]
        return self._derived(kept)

    def tag_counts(self) -> Counter[str]:
        """How many items carry each tag name."""
        return Counter(name for item in self._items for name in item.tag_names)

    def read_bytes(self, index: int) -> bytes:
        """The object bytes of one item (cached)."""
        item = self._items[index]
        return self._reader.read(item.bucket, item.key)

    def image(self, index: int, mode: str | None = "RGB") -> Image.Image:
        """The decoded image of one item."""
        return decode_image(self.read_bytes(index), mode)

    def to_torch(
        self,
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[tuple[ItemTag, ...]], Any] | None = None,
        *,
        image_mode: str | None = "RGB",
    ) -> ImageDataset:
        """A map-style dataset of (image, tags) for ``torch.utils.data.DataLoader`` (torch is not required)."""
        return ImageDataset(
            self._items,
            self._reader,
            transform=transform,
            target_transform=target_transform,
            image_mode=image_mode,
        )

    def _derived(self, items: list[DatasetItem]) -> Dataset:
        return Dataset(items, name=self.name, version=self.version, reader=self._reader)


# ── manifests ───────────────────────────────────────────────────────────


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _item_tag(body: dict[str, Any]) -> ItemTag:
    confidence = body.get("confidence")
    return ItemTag(
        name=str(body["name"]),
        value=str(body.get("value", "")),
        source=str(body.get("source", "")),
        confidence=float(confidence) if confidence is not None else None,
        model=str(body.get("model", "")),
    )


def item_from_record(record: dict[str, Any]) -> DatasetItem:
    """An item from one manifest record (JSONL object, or CSV row with ``tags`` as JSON text)."""
    tags = record.get("tags") or []
    if isinstance(tags, str):
        tags = json.loads(tags)
    score = record.get("score")
    return DatasetItem(
        file_id=str(record["file_id"]),
        uri=str(record["uri"]),
        bucket=str(record["bucket"]),
        key=str(record["key"]),
        size=int(record.get("size") or 0),
        etag=str(record.get("etag") or ""),
        last_modified=_parse_time(record.get("last_modified")),
        format=str(record.get("format") or ""),
        width=int(record.get("width") or 0),
        height=int(record.get("height") or 0),
        score=float(score) if score not in (None, "") else None,
        tags=tuple(_item_tag(tag) for tag in tags),
        dataset_id=str(record.get("dataset_id") or ""),
        dataset_version_id=str(record.get("dataset_version_id") or ""),
        storage_connection=str(record.get("storage_connection") or "default"),
    )


class _HashingReader(io.RawIOBase):
    """Passes a binary stream through, hashing and counting what goes by."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        self.digest.update(data)
        self.size += len(data)
        buffer[: len(data)] = data
        return len(data)


def _records(text: IO[str], csv_format: bool) -> Iterator[dict[str, Any]]:
    if csv_format:
        yield from csv.DictReader(text)
        return
    for number, line in enumerate(text, start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(f"line {number} is not JSON: {error}") from None


def _open(location: str, reader: ObjectReader) -> Any:
    """A binary stream of a local file or an s3:// object (streamed, not read into memory)."""
    if location.startswith("s3://"):
        bucket, key = split_s3_uri(location)
        return reader._s3().get_object(Bucket=bucket, Key=key)["Body"]
    return open(location, "rb")


def _summary_location(location: str) -> str:
    head, _, _ = location.rpartition("/")
    return f"{head}/{SUMMARY_NAME}" if head else SUMMARY_NAME


def _read_summary(location: str, reader: ObjectReader) -> dict[str, Any]:
    from botocore.exceptions import ClientError  # noqa: PLC0415 (boto3 is only loaded when needed)

    summary_location = _summary_location(location)
    stream = None
    try:
        stream = _open(summary_location, reader)
    except FileNotFoundError:
        pass
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in {"NoSuchKey", "404"}:
            raise
    if stream is None:
        raise ManifestError(
            f"{summary_location} does not exist: the export has not finished "
            "(or pass verify=False to read a manifest without its summary)"
        )
    with stream:
        summary: dict[str, Any] = json.loads(stream.read())
    return summary


def load_manifest(
    location: str | os.PathLike[str],
    *,
    storage: StorageOptions | None = None,
    verify: bool = True,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Dataset:
    """Reads an exported manifest (``s3://bucket/prefix/manifest.jsonl`` or ``.csv``, or a local copy).

    With ``verify`` (the default) the ``_SUCCESS`` summary next to the
    manifest must exist (the export finished) and its record count and
    SHA-256 must match what was read; ``ManifestError`` otherwise.
    """
    location = os.fspath(location)
    if not location.endswith((".jsonl", ".csv")):
        raise ManifestError(f"{location} is not a manifest: expected a .jsonl or .csv file")
    reader = ObjectReader(storage, cache_bytes=cache_bytes)
    summary = _read_summary(location, reader) if verify else None
    with _open(location, reader) as raw:
        hashing = _HashingReader(raw)
        text = io.TextIOWrapper(io.BufferedReader(hashing), encoding="utf-8", newline="")
        items = [item_from_record(record) for record in _records(text, location.endswith(".csv"))]
    if summary is not None:
        if summary.get("records") != len(items):
            raise ManifestError(
                f"the summary counts {summary.get('records')} records, the manifest has {len(items)}"
            )
        if summary.get("sha256") != hashing.digest.hexdigest():
            raise ManifestError(
                "the manifest's SHA-256 differs from its summary: it was altered or is incomplete"
            )
    name = os.path.basename(os.path.dirname(location.removeprefix("s3://")))
    return Dataset(items, name=name, reader=reader)


def checksum_of(items: Iterable[DatasetItem]) -> str:
    """A logical dataset version's checksum: SHA-256 over "<file id>\\t<etag>\\n" of its items in order."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.file_id}\t{item.etag}\n".encode())
    return digest.hexdigest()
