"""Test helpers of the search service: a fixture catalogue with known files, tags
and vectors, and an in-process EmbedService answering with vectors a test chose
(our own service's contract, so no model is involved).

Used by ``services/search/tests`` and the benchmark; not imported by the service.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc

from viewfinder.v1 import embedding_pb2, embedding_pb2_grpc, search_pb2, search_pb2_grpc
from viewfinder_common.vectorstore import VectorStore

DIM = 8
FIELD = "visual"


def unit(*values: float) -> list[float]:
    """A DIM-dimensional vector with the leading values given (rest zero)."""
    padded = [*values, *([0.0] * (DIM - len(values)))]
    return padded[:DIM]


@dataclass(frozen=True)
class FileSpec:
    """One fixture file: catalogue metadata, tags (source, name, value, removed) and a vector."""

    key: str
    size: int
    modified: datetime | None
    format: str | None
    width: int | None
    height: int | None
    tags: Sequence[tuple[str, str, str, bool]] = ()
    vector: Sequence[float] = field(default_factory=lambda: unit(1.0))
    status: str = "active"
    version: int = 1


def day(month: int, dom: int) -> datetime:
    return datetime(2025, month, dom, 12, tzinfo=UTC)


LANE = ("ai", "lane line", "", False)
GATE = ("ai", "barrier gate", "", False)

# The fixture dataset. Expected results in the tests are written against these rows.
FILES: dict[str, FileSpec] = {
    "honda": FileSpec(
        "data/blue_car/honda.jpg", 1000, day(3, 15), "JPEG", 640, 480, (LANE, GATE), unit(1, 0.1)
    ),
    "toyota": FileSpec(
        "data/blue_car/toyota.jpg", 2000, day(4, 1), "JPEG", 1920, 1080, (LANE, GATE), unit(1, 0.2)
    ),
    "old": FileSpec("data/blue_car/old.jpg", 3000, day(1, 1), "JPEG", 800, 600, (LANE, GATE), unit(1, 0.3)),
    "rainy": FileSpec(
        "data/blue_car/rainy.png",
        4000,
        day(4, 10),
        "PNG",
        1024,
        768,
        (LANE, ("user", "rainy days", "", False)),
        unit(1, 0.4),
    ),
    "dry": FileSpec(
        "data/blue_car/dry.png", 5000, day(4, 11), "PNG", 300, 300, (("ai", "sky", "", False),), unit(0.5, 1)
    ),
    "noai": FileSpec(
        "data/blue_car/noai.png", 6000, day(4, 12), "PNG", 300, 200, (("user", "sky", "", False),), unit(0, 1)
    ),
    # The AI's "lane line" is hidden by a person's removal: not in effect anywhere.
    "hidden": FileSpec(
        "data/blue_car/hidden.png",
        7000,
        day(4, 13),
        "PNG",
        50,
        50,
        (LANE, ("user", "lane line", "", True)),
        unit(0, 0, 1),
    ),
    "red": FileSpec(
        "data/red_car/Red_Honda.JPG",
        8000,
        day(4, 1),
        "JPEG",
        4000,
        3000,
        (("ai", "weather", "sunny", False),),
        unit(0, 0, 0, 1),
    ),
    "deleted": FileSpec(
        "data/blue_car/deleted.jpg", 9000, day(4, 2), "JPEG", 640, 480, (LANE, GATE), unit(1, 0.15), "deleted"
    ),
    "top": FileSpec("top.gif", 10, None, None, None, None, (), unit(0, 0, 0, 0, 1)),
    "other_version": FileSpec(
        "data/blue_car/v2.jpg", 100, day(4, 3), "JPEG", 640, 480, (LANE, GATE), unit(1, 0.12), version=2
    ),
}
ACTIVE_V1 = {name for name, spec in FILES.items() if spec.status == "active" and spec.version == 1}


@dataclass(frozen=True)
class Catalogue:
    """Ids of the fixture rows."""

    dataset_id: str
    version_ids: Mapping[int, str]
    file_ids: Mapping[str, str]
    bucket: str

    @property
    def version_id(self) -> str:
        return self.version_ids[1]

    def names(self, file_ids: Sequence[str]) -> list[str]:
        """Fixture names of file ids (in the same order)."""
        by_id = {file_id: name for name, file_id in self.file_ids.items()}
        return [by_id[file_id] for file_id in file_ids]


async def insert_catalogue(conn: Any, files: Mapping[str, FileSpec], bucket: str) -> Catalogue:
    """Writes datasets, dataset_versions, files and file_tags rows directly."""
    dataset_id = await conn.fetchval(
        "INSERT INTO datasets (name, bucket) VALUES ($1, $2) RETURNING id",
        f"ds-{uuid.uuid4().hex[:8]}",
        bucket,
    )
    version_ids = {}
    for number in sorted({spec.version for spec in files.values()}):
        version_ids[number] = str(
            await conn.fetchval(
                "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, $2) RETURNING id",
                dataset_id,
                number,
            )
        )
    file_ids = {}
    for name, spec in files.items():
        file_id = await conn.fetchval(
            """
            INSERT INTO files (dataset_id, version_id, bucket, key, uri, size, etag, last_modified,
                               format, width, height, status)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id
            """,
            dataset_id,
            uuid.UUID(version_ids[spec.version]),
            bucket,
            spec.key,
            f"s3://{bucket}/{spec.key}",
            spec.size,
            f"etag-{name}",
            spec.modified,
            spec.format,
            spec.width,
            spec.height,
            spec.status,
        )
        file_ids[name] = str(file_id)
        for source, tag, value, removed in spec.tags:
            await conn.execute(
                """
                INSERT INTO file_tags (file_id, tag, source, value, confidence, model, removed)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                """,
                file_id,
                tag,
                source,
                value,
                0.75 if source == "ai" else None,
                "test-vlm" if source == "ai" else None,
                removed,
            )
    return Catalogue(str(dataset_id), version_ids, file_ids, bucket)


class VectorTableEmbedService(embedding_pb2_grpc.EmbedServiceServicer):
    """EmbedService answering from a table of texts/URIs to vectors the test chose."""

    def __init__(self, index_name: str, vectors: dict[str, list[float]]) -> None:
        self.index_name = index_name
        self.vectors = vectors
        self.requests: list[tuple[str, str, str]] = []

    async def EmbedText(  # noqa: N802
        self, request: embedding_pb2.EmbedTextRequest, context: Any
    ) -> embedding_pb2.EmbedTextResponse:
        self.requests.append((request.dataset_id, request.index_name, request.text))
        if request.text not in self.vectors:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no vector for {request.text!r}")
        return embedding_pb2.EmbedTextResponse(
            vectors=[embedding_pb2.NamedVector(field=FIELD, values=self.vectors[request.text])],
            index_name=request.index_name or self.index_name,
        )

    async def EmbedImage(  # noqa: N802
        self, request: embedding_pb2.EmbedImageRequest, context: Any
    ) -> embedding_pb2.EmbedImageResponse:
        key = request.image_uri or request.image_bytes.decode()
        self.requests.append((request.dataset_id, request.index_name, key))
        if key not in self.vectors:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cannot decode the image")
        return embedding_pb2.EmbedImageResponse(
            vectors=[embedding_pb2.NamedVector(field=FIELD, values=self.vectors[key])],
            index_name=request.index_name or self.index_name,
        )


@dataclass
class SearchStack:
    """A running SearchService over the fixture catalogue."""

    stub: search_pb2_grpc.SearchServiceAsyncStub
    catalogue: Catalogue
    embed: VectorTableEmbedService
    store: VectorStore
    index: str
    pool: asyncpg.Pool
    # Address of the in-process EmbedService.
    embed_target: str

    async def search(self, **fields: Any) -> search_pb2.SearchResponse:
        fields.setdefault("dataset_version_id", self.catalogue.version_id)
        return await self.stub.Search(search_pb2.SearchRequest(**fields), timeout=30)

    async def names(self, **fields: Any) -> list[str]:
        response = await self.search(**fields)
        return self.catalogue.names([result.file_id for result in response.results])


QUERY_VECTORS = {
    # Closest to the "car" files (honda, toyota … in that order), then dry.
    "a fallen water horse": unit(1, 0.1),
    "blue sky": unit(0, 1),
    "s3://queries/sky.jpg": unit(0.1, 1),
}
