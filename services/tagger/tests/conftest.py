"""Fixtures of the tagger's tests: images, a definition, the fake VLM, seeded catalogue data."""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from pydantic import SecretStr
from typing_extensions import override

from viewfinder.v1 import embedding_pb2, embedding_pb2_grpc, labeling_pb2, labeling_pb2_grpc
from viewfinder_common.s3 import s3_session
from viewfinder_common.settings import DatabaseSettings, KafkaSettings, S3Settings
from viewfinder_common.testing.fake_vlm import DEFAULT_PALETTE, FakeVLMServer
from viewfinder_common.testing.kafka import create_topics, free_port, read_topic
from viewfinder_tagger.config import OpenAIConnection, TaggerSettings
from viewfinder_tagger.domain.definitions import (
    DefinitionContent,
    SelectionMode,
    TagDefinition,
    TagGroup,
    TagSpec,
)
from viewfinder_tagger.main import serve

# Shaped like a real key so that any leak is easy to grep for.
API_KEY = "sk-vf-test-9d1c7e4b2a6f8035"

PngFactory = Callable[[str, int], bytes]


@pytest.fixture
def api_key() -> str:
    """The only key the fake VLM accepts."""
    return API_KEY


@pytest.fixture
def png() -> PngFactory:
    """``png(colour, n)``: a PNG of a palette colour whose bytes are unique per ``n``."""

    def make(colour: str, n: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (24 + n, 24), DEFAULT_PALETTE[colour]).save(buffer, format="PNG")
        return buffer.getvalue()

    return make


COLOUR_TAGS = ("red", "green", "blue", "yellow", "black", "white")


def colour_definition_content(guide: str = "As a colour expert, look at this image.") -> DefinitionContent:
    """Colours (single-select group) and a brightness tag with allowed values: what the fake answers."""
    return DefinitionContent(
        description="colours",
        guide_prompt=guide,
        tags=(
            *(TagSpec(c, f"the image is mostly {c}", group="colour") for c in COLOUR_TAGS),
            TagSpec("brightness", "how light the image is", allowed_values=("light", "dark")),
        ),
        groups=(TagGroup("colour", "dominant colour", SelectionMode.SINGLE),),
    )


@pytest.fixture
def colour_definition() -> TagDefinition:
    """An unsaved colour definition (unit and adapter tests)."""
    return TagDefinition("d-colours", "colours", 1, colour_definition_content(), datetime.now(UTC))


@pytest.fixture
async def fake_vlm() -> AsyncIterator[FakeVLMServer]:
    """A fake OpenAI-compatible VLM on a free loopback port."""
    async with FakeVLMServer(api_key=API_KEY, models=frozenset({"qwen-vl-max"})) as server:
        yield server


@pytest.fixture
async def s3_bucket(unique_name: str) -> AsyncIterator[tuple[Any, str]]:
    """(client, bucket): a fresh bucket on the S3 API server, emptied and removed afterwards."""
    settings = S3Settings()
    session = s3_session(settings)
    bucket = unique_name.replace("_", "-")
    async with session.client("s3", endpoint_url=settings.endpoint_url) as s3:
        await s3.create_bucket(Bucket=bucket)
        try:
            yield s3, bucket
        finally:
            listing = await s3.list_objects_v2(Bucket=bucket)
            for item in listing.get("Contents", []):
                await s3.delete_object(Bucket=bucket, Key=item["Key"])
            await s3.delete_bucket(Bucket=bucket)


@dataclass
class SeededVersion:
    """A dataset version with image files in the catalogue and the bucket."""

    dataset_id: str
    version_id: str
    bucket: str
    # file id -> (key, image bytes, colour)
    files: dict[str, tuple[str, bytes, str]] = field(default_factory=dict)


class CatalogueSeeder:
    """Writes datasets, versions and files straight into the test database (ingest is not needed)."""

    def __init__(self, pool: asyncpg.Pool, s3: Any, bucket: str, png: PngFactory) -> None:
        self.pool, self.s3, self.bucket, self.png = pool, s3, bucket, png
        self._n = 0

    async def version(self, colours: list[str]) -> SeededVersion:
        """A new dataset (v1) holding one image per colour."""
        dataset_id = await self.pool.fetchval(
            "INSERT INTO datasets (name, bucket) VALUES ($1, $2) RETURNING id",
            f"ds-{uuid.uuid4().hex[:10]}",
            self.bucket,
        )
        version_id = await self.pool.fetchval(
            "INSERT INTO dataset_versions (dataset_id, number) VALUES ($1, 1) RETURNING id", dataset_id
        )
        seeded = SeededVersion(str(dataset_id), str(version_id), self.bucket)
        await self.add_files(seeded, colours)
        return seeded

    async def add_files(self, seeded: SeededVersion, colours: list[str]) -> list[str]:
        """Puts one image per colour into the bucket and the version; returns the new file ids."""
        ids = []
        for colour in colours:
            self._n += 1
            key = f"images/{self._n:04d}-{colour}.png"
            data = self.png(colour, self._n)
            put = await self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
            file_id = await self.pool.fetchval(
                """
                INSERT INTO files (dataset_id, version_id, bucket, key, uri, size, etag, last_modified,
                                   format, width, height, frames, mode)
                VALUES ($1, $2, $3, $4, $5, $6, $7, now(), 'PNG', 24, 24, 1, 'RGB') RETURNING id
                """,
                uuid.UUID(seeded.dataset_id),
                uuid.UUID(seeded.version_id),
                self.bucket,
                key,
                f"s3://{self.bucket}/{key}",
                len(data),
                put["ETag"].strip('"'),
            )
            seeded.files[str(file_id)] = (key, data, colour)
            ids.append(str(file_id))
        return ids


@pytest.fixture
async def db_pool(catalogue_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's fresh catalogue database."""
    pool = await asyncpg.create_pool(catalogue_db_url, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def seeder(db_pool: asyncpg.Pool, s3_bucket: tuple[Any, str], png: PngFactory) -> CatalogueSeeder:
    """Seeds catalogue rows and bucket objects for one test."""
    s3, bucket = s3_bucket
    return CatalogueSeeder(db_pool, s3, bucket, png)


# -- an EmbedService double for the zero-shot tagger ----------------------------------------

# Axes: red, green, blue, "cat-ness". Tag texts point along them; images by their mean colour.
TEXT_VECTORS = {
    "red": [1.0, 0.0, 0.0, 0.0],
    "green": [0.0, 1.0, 0.0, 0.0],
    "blue": [0.0, 0.0, 1.0, 0.0],
    "cat": [0.0, 0.0, 0.0, 1.0],
    "tone": [0.6, 0.6, 0.6, 0.0],
}


class ConstructedEmbedService(embedding_pb2_grpc.EmbedServiceServicer):
    """EmbedService double: deterministic vectors, call counts, scripted failures."""

    def __init__(self) -> None:
        self.text_calls: list[str] = []
        self.image_calls = 0
        self.unavailable_next = 0

    @override
    async def EmbedText(
        self, request: embedding_pb2.EmbedTextRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> embedding_pb2.EmbedTextResponse:
        self.text_calls.append(request.text)
        key = request.text.split(":", 1)[0]
        return embedding_pb2.EmbedTextResponse(
            vectors=[embedding_pb2.NamedVector(field="semantic", values=TEXT_VECTORS[key])]
        )

    @override
    async def EmbedImage(
        self, request: embedding_pb2.EmbedImageRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> embedding_pb2.EmbedImageResponse:
        self.image_calls += 1
        if self.unavailable_next > 0:
            self.unavailable_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "model loading")
        if request.dataset_id == "no-index":
            await context.abort(grpc.StatusCode.NOT_FOUND, "dataset no-index has no index")
        try:
            with Image.open(io.BytesIO(request.image_bytes)) as image:
                r, g, b = image.convert("RGB").resize((1, 1)).getpixel((0, 0))  # type: ignore[misc]
        except OSError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cannot decode the image")
        semantic = [r / 255, g / 255, b / 255, 0.0]
        fields = [embedding_pb2.NamedVector(field="visual", values=[1.0, 2.0])]
        if request.dataset_id != "visual-only":
            fields.append(embedding_pb2.NamedVector(field="semantic", values=semantic))
        return embedding_pb2.EmbedImageResponse(vectors=fields)


@pytest.fixture
async def embed_service() -> AsyncIterator[tuple[ConstructedEmbedService, str]]:
    """(servicer, address): the double served over real gRPC on a free loopback port."""
    servicer = ConstructedEmbedService()
    server = grpc.aio.server()
    embedding_pb2_grpc.add_EmbedServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


# -- the whole service, as main.py wires it --------------------------------------------------


@dataclass
class RunningTagger:
    """A tagger started by ``main.serve`` with test settings, and a gRPC stub to it."""

    settings: Any
    stub: Any
    log_lines: list[str]
    dlq_topic: str


class _LineCollector(logging.Handler):
    """Keeps every formatted log line (the same JSON the service writes to stderr)."""

    def __init__(self, lines: list[str], formatter: logging.Formatter | None) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


TaggerStarter = Callable[..., AbstractAsyncContextManager[RunningTagger]]


@pytest.fixture
def start_tagger(catalogue_db_url: str, unique_name: str, isolated_logging: None) -> TaggerStarter:
    """``async with start_tagger(connections=..., **settings) as tagger:`` runs main.serve until the block ends."""

    created: list[str] = []

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningTagger]:
        discovered = f"{unique_name}.file-discovered"
        embedded = f"{unique_name}.file-embedded"
        tagged = f"{unique_name}.file-tagged"
        dlq = f"{discovered}.dlq.tagger"
        if not created:  # a test may start the service twice (restart)
            await create_topics({discovered: 3, embedded: 3, tagged: 1, dlq: 1, f"{embedded}.dlq.tagger": 1})
            created.append(discovered)
        values: dict[str, Any] = {
            "grpc_port": free_port(),
            "db": DatabaseSettings(url=catalogue_db_url),
            "kafka": KafkaSettings(
                topic_file_discovered=discovered, topic_file_embedded=embedded, topic_file_tagged=tagged
            ),
            "consumer_group": f"{unique_name}-tagger",
            "auto_labeling": False,
            "job_poll_interval_s": 0.2,
            "job_flush_interval_s": 0.2,
            "shutdown_grace_s": 1.0,
            "log_level": "DEBUG",
        }
        values.update(overrides)
        settings = TaggerSettings.model_validate(values)
        lines: list[str] = []
        stop = asyncio.Event()
        task = asyncio.create_task(serve(stop, settings))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}")
        try:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                if task.done():
                    task.result()  # raises the startup error
                    raise AssertionError("the tagger stopped during startup")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, "the tagger did not become healthy"
                await asyncio.sleep(0.1)
            root = logging.getLogger()
            root.addHandler(_LineCollector(lines, root.handlers[0].formatter if root.handlers else None))
            yield RunningTagger(settings, labeling_pb2_grpc.LabelingServiceStub(channel), lines, dlq)
        finally:
            stop.set()
            await channel.close()
            await asyncio.wait_for(task, 60)

    return start


async def wait_for_job(stub: Any, job_id: str, states: set[int], timeout_s: float = 60.0) -> Any:
    """Polls GetLabelJob until the job is in one of ``states``."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await stub.GetLabelJob(labeling_pb2.GetLabelJobRequest(job_id=job_id), timeout=5)
        if reply.job.job.state in states:
            return reply.job
        assert time.monotonic() < deadline, (
            f"job still {reply.job.job.state} after {timeout_s} s: {reply.job}"
        )
        await asyncio.sleep(0.1)


def definition_request(
    name: str, content: DefinitionContent | None = None
) -> labeling_pb2.CreateTagDefinitionRequest:
    """A CreateTagDefinitionRequest for ``content`` (default: the colour definition)."""
    content = content or colour_definition_content()
    return labeling_pb2.CreateTagDefinitionRequest(
        name=name,
        description=content.description,
        guide_prompt=content.guide_prompt,
        tags=[
            labeling_pb2.TagSpec(
                name=t.name, description=t.description, allowed_values=list(t.allowed_values), group=t.group
            )
            for t in content.tags
        ],
        groups=[
            labeling_pb2.TagGroup(
                name=g.name,
                description=g.description,
                selection_mode=labeling_pb2.SELECTION_MODE_SINGLE
                if g.selection is SelectionMode.SINGLE
                else labeling_pb2.SELECTION_MODE_MULTIPLE,
            )
            for g in content.groups
        ],
    )


def vlm_connection(base_url: str, key: str, **overrides: Any) -> OpenAIConnection:
    """A fast-retrying connection to the fake VLM."""
    return OpenAIConnection.model_validate(
        {
            "base_url": base_url,
            "model": "qwen-vl-max",
            "api_key": SecretStr(key),
            "request_timeout_s": 5.0,
            "backoff_base_s": 0.02,
            "backoff_max_s": 0.1,
            "price_prompt_per_million": 3.0,
            "price_completion_per_million": 9.0,
            "currency": "CNY",
            **overrides,
        }
    )


@pytest.fixture
def helpers() -> Any:
    """The module-level helpers of this conftest, for test modules (importlib mode cannot import conftest)."""

    class Helpers:
        wait_for_job = staticmethod(wait_for_job)
        definition_request = staticmethod(definition_request)
        vlm_connection = staticmethod(vlm_connection)
        read_topic = staticmethod(read_topic)
        create_topics = staticmethod(create_topics)

    return Helpers
