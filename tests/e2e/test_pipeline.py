"""End to end: bucket changes flow through all five services as processes, and survive faults.

Every test registers its own dataset on its own prefix of the session's bucket
(see conftest.py) and drives the pipeline only through the bucket, as a user's
uploads would: no sync call anywhere.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from PIL import Image

from viewfinder.v1 import events_pb2, search_pb2
from viewfinder_common.testing.polling import eventually
from viewfinder_common.vectorstore.postgres_sql import table_name

from .conftest import Pipeline, clipart

pytestmark = [pytest.mark.stack, pytest.mark.slow]

TAGS = {
    "animals": "an animal: a dog, cat, bird, fish, horse or another creature",
    "transportation": "a vehicle: a car, a train, a plane, a ship or a bicycle",
    "food": "food and drink: fruit, vegetables, bread or a meal",
    "people": "a person: a man, a woman, a child or a face",
    "plants": "a plant: a tree, a flower or a leaf",
}
PIPELINE_TIMEOUT_S = 180.0


def _dataset_name(kind: str) -> str:
    return f"e2e-{kind}-{uuid.uuid4().hex[:8]}"


async def _put_files(pipeline: Pipeline, files: dict[str, bytes]) -> None:
    """PUTs objects concurrently (a few at a time, as an uploading user would)."""
    semaphore = asyncio.Semaphore(16)
    async with pipeline.s3() as s3:

        async def put(key: str, body: bytes) -> None:
            async with semaphore:
                await s3.put_object(Bucket=pipeline.bucket, Key=key, Body=body)

        await asyncio.gather(*(put(key, body) for key, body in files.items()))


def _keys(response: search_pb2.SearchResponse) -> set[str]:
    return {result.file.key for result in response.results}


async def _counts(pipeline: Pipeline, dataset_id: str, version_id: str) -> dict[str, Any]:
    """What the catalogue and the vector store hold for one dataset version."""
    conn = await pipeline.db()
    try:
        files = {
            row["id"]: row["key"]
            for row in await conn.fetch(
                "SELECT id, key FROM files WHERE version_id = $1 AND status = 'active'", version_id
            )
        }
        index = await conn.fetchval(
            "SELECT name FROM embedding_indexes WHERE dataset_id = $1 AND active", dataset_id
        )
        vectors: list[Any] = []
        index_files: list[Any] = []
        if index is not None:
            vectors = [
                row["file_id"]
                for row in await conn.fetch(
                    f'SELECT file_id FROM "{table_name(index)}" WHERE dataset_version_id = $1',
                    version_id,
                )
            ]
            index_files = [
                row["file_id"]
                for row in await conn.fetch(
                    "SELECT file_id FROM embedding_index_files WHERE index_name = $1 AND dataset_version_id = $2",
                    index,
                    version_id,
                )
            ]
        label_runs = [
            row["file_id"]
            for row in await conn.fetch(
                "SELECT r.file_id FROM file_label_runs r JOIN files f ON f.id = r.file_id WHERE f.version_id = $1",
                version_id,
            )
        ]
    finally:
        await conn.close()
    return {"files": files, "vectors": vectors, "index_files": index_files, "label_runs": label_runs}


async def test_put_makes_an_image_searchable_by_text_and_tag_and_delete_removes_it(
    pipeline: Pipeline,
) -> None:
    name = _dataset_name("put")
    prefix = f"{name}/"
    _, version = await pipeline.create_dataset(name, prefix, TAGS)
    image = clipart("animals", 1)[0]
    key = f"{prefix}{image.name}"
    await _put_files(pipeline, {key: image.read_bytes()})

    async def by_text() -> set[str]:
        response = await pipeline.search(
            search_pb2.SearchRequest(dataset_version_id=version.id, text="an animal", top_k=10)
        )
        return _keys(response) & {key}

    await eventually(by_text, f"a text search finds {key} (no sync was called)", timeout_s=PIPELINE_TIMEOUT_S)

    async def tags_of_file() -> list[str]:
        response = await pipeline.search(
            search_pb2.SearchRequest(
                dataset_version_id=version.id, metadata=search_pb2.MetadataFilter(path_prefix=key)
            )
        )
        return [tag.name for result in response.results for tag in result.tags]

    tags = await eventually(
        tags_of_file, f"the tagger labels {key} automatically", timeout_s=PIPELINE_TIMEOUT_S
    )
    assert set(tags) <= set(TAGS), f"tags outside the definition: {tags}"
    tag_filter = search_pb2.TagFilter(any_of=[search_pb2.TagMatch(name=tags[0])])
    by_tag = await pipeline.search(search_pb2.SearchRequest(dataset_version_id=version.id, tags=tag_filter))
    assert key in _keys(by_tag)

    async with pipeline.s3() as s3:
        await s3.delete_object(Bucket=pipeline.bucket, Key=key)

    async def gone() -> bool:
        text = await pipeline.search(
            search_pb2.SearchRequest(dataset_version_id=version.id, text="an animal", top_k=10)
        )
        tagged = await pipeline.search(
            search_pb2.SearchRequest(dataset_version_id=version.id, tags=tag_filter)
        )
        return key not in _keys(text) | _keys(tagged)

    await eventually(
        gone, f"{key} disappears from text and tag search after its DELETE", timeout_s=PIPELINE_TIMEOUT_S
    )
    pipeline.assert_all_running()


def _image_bytes(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _poison_files() -> tuple[dict[str, bytes], set[str]]:
    """Poison files by name, and the names that are broken (not images a decoder can read whole)."""
    photo = Image.radial_gradient("L").convert("RGB").resize((320, 240))
    jpeg = _image_bytes(photo, "JPEG", quality=90)
    frames = [Image.new("RGB", (64, 64), color) for color in ("red", "green", "blue")]
    files = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "zero-bytes.jpg": b"",
        # 12,000 x 12,000 = 144 M pixels (more than Pillow's bomb limit); a few KiB as PNG.
        "bomb.png": _image_bytes(Image.new("1", (12_000, 12_000)), "PNG", optimize=True),
        "text.jpg": b"this is a text file whose name says it is a JPEG\n" * 20,
        "cmyk.jpg": _image_bytes(photo.convert("CMYK"), "JPEG"),
        "sixteen-bit.png": _image_bytes(Image.radial_gradient("L").convert("I;16"), "PNG"),
        "multi-page.tiff": _image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "animated.gif": _image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "animated.webp": _image_bytes(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100
        ),
    }
    broken = {"truncated.jpg", "zero-bytes.jpg", "bomb.png", "text.jpg"}
    return files, broken


async def _dead_letters(pipeline: Pipeline, topic: str) -> dict[str, str]:
    """file id -> reason of every record on a dead-letter topic of the session's broker."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=pipeline.env["VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    found: dict[str, str] = {}
    try:
        batch = await consumer.getmany(timeout_ms=2000)
        for records in batch.values():
            for record in records:
                headers = {name: value.decode(errors="replace") for name, value in record.headers}
                event = events_pb2.FileDiscovered()
                try:
                    event.ParseFromString(record.value or b"")
                except Exception:
                    continue
                found[event.file_id] = headers.get("x-dlq-reason", "")
    finally:
        await consumer.stop()
    return found


async def test_poison_files_are_recorded_with_a_reason_and_good_files_are_processed(
    pipeline: Pipeline,
) -> None:
    name = _dataset_name("poison")
    prefix = f"{name}/"
    dataset, version = await pipeline.create_dataset(name, prefix, TAGS)
    good = {f"{prefix}good/{path.name}": path.read_bytes() for path in clipart("food", 5)}
    poison, broken = _poison_files()
    await _put_files(pipeline, good | {f"{prefix}poison/{file}": body for file, body in poison.items()})

    async def outcomes() -> dict[str, str] | None:
        conn = await pipeline.db()
        try:
            rows = await conn.fetch(
                "SELECT id::text AS id, key, status, coalesce(error, '') AS error FROM files WHERE version_id = $1",
                version.id,
            )
        finally:
            await conn.close()
        counts = await _counts(pipeline, dataset.id, version.id)
        vectors = {str(file_id) for file_id in counts["vectors"]}
        dead = {}
        for service in ("embedder", "tagger"):
            dead.update(await _dead_letters(pipeline, f"{pipeline.topic_file_discovered}.dlq.{service}"))
        result: dict[str, str] = {}
        for row in rows:
            if row["id"] in vectors:
                result[row["key"]] = "embedded"
            elif row["status"] != "active" and row["error"]:
                result[row["key"]] = f"{row['status']}: {row['error']}"
            elif row["id"] in dead:
                result[row["key"]] = f"dead letter: {dead[row['id']]}"
        expected = set(good) | {f"{prefix}poison/{file}" for file in poison}
        return result if expected <= set(result) else None

    result = await eventually(
        outcomes, "every good and poison file has an outcome", timeout_s=PIPELINE_TIMEOUT_S, interval_s=2.0
    )
    for key, outcome in sorted(result.items()):
        print(f"{key.removeprefix(prefix)}: {outcome}")  # shown by pytest -rP
    for key in good:
        assert result[key] == "embedded", f"{key}: {result[key]}"
    for file in broken:
        outcome = result[f"{prefix}poison/{file}"]
        assert outcome != "embedded", f"{file} is broken but was embedded"
        assert outcome.split(":", 1)[1].strip(), f"{file}: recorded without a reason"
    pipeline.assert_all_running()


async def _wait_until_ingesting(pipeline: Pipeline, version_id: str, at_least: int) -> None:
    async def catalogued() -> bool:
        conn = await pipeline.db()
        try:
            count: int = await conn.fetchval("SELECT count(*) FROM files WHERE version_id = $1", version_id)
        finally:
            await conn.close()
        return count >= at_least

    await eventually(
        catalogued, f"ingest catalogues {at_least} files", timeout_s=PIPELINE_TIMEOUT_S, interval_s=0.1
    )


async def _assert_exactly_once(
    pipeline: Pipeline, dataset_id: str, version_id: str, expected: set[str]
) -> None:
    async def complete() -> dict[str, Any] | None:
        counts = await _counts(pipeline, dataset_id, version_id)
        done = (
            set(counts["files"].values()) == expected
            and len(counts["vectors"]) == len(expected)
            and len(counts["label_runs"]) == len(expected)
        )
        return counts if done else None

    counts = await eventually(
        complete,
        f"all {len(expected)} files vectored and labelled",
        timeout_s=PIPELINE_TIMEOUT_S,
        interval_s=2.0,
    )
    files = set(counts["files"])
    for kind in ("vectors", "index_files", "label_runs"):
        assert len(counts[kind]) == len(set(counts[kind])), f"duplicated {kind}"
        assert set(counts[kind]) == files, f"{kind} do not match the files one to one"


async def test_sigkill_embedder_and_tagger_mid_stream_loses_and_duplicates_nothing(
    pipeline: Pipeline,
) -> None:
    name = _dataset_name("kill")
    prefix = f"{name}/"
    dataset, version = await pipeline.create_dataset(name, prefix, TAGS)
    paths = clipart("computer", 120) + clipart("shapes", 80)
    files = {f"{prefix}{path.parent.name}-{path.name}": path.read_bytes() for path in paths}
    upload = asyncio.create_task(_put_files(pipeline, files))
    await _wait_until_ingesting(pipeline, version.id, len(files) // 4)
    at_kill = await _counts(pipeline, dataset.id, version.id)
    pipeline.kill("embedder")
    pipeline.kill("tagger")
    assert len(at_kill["vectors"]) < len(files), "killed after the embedder had finished"
    assert len(at_kill["label_runs"]) < len(files), "killed after the tagger had finished"
    await upload
    await pipeline.start("embedder")
    await pipeline.start("tagger")
    await _assert_exactly_once(pipeline, dataset.id, version.id, set(files))
    pipeline.assert_all_running()


async def test_broker_restart_with_its_log_on_s3_loses_nothing(pipeline: Pipeline) -> None:
    """The broker restarts mid-stream; every file still ends with one vector and one label run.

    A consumer left stuck by the restart (issue 10: alive, in its group, but
    neither fetching nor rejoining) is restarted by the services' consumer
    watchdog (``viewfinder_common.kafka.ConsumerWatchdog``) within a minute,
    well inside the pipeline timeout.
    """
    name = _dataset_name("broker")
    prefix = f"{name}/"
    dataset, version = await pipeline.create_dataset(name, prefix, TAGS)
    paths = clipart("recreation", 60) + clipart("signs_and_symbols", 40)
    files = {f"{prefix}{path.parent.name}-{path.name}": path.read_bytes() for path in paths}
    upload = asyncio.create_task(_put_files(pipeline, files))
    async with pipeline.s3() as s3:
        listed = await s3.list_objects_v2(Bucket=pipeline.broker_bucket, MaxKeys=1)
    assert listed.get("KeyCount", 0) > 0, "the broker keeps no log on the S3 API server"
    await _wait_until_ingesting(pipeline, version.id, len(files) // 4)
    pipeline.stop("kafka")
    await asyncio.sleep(2.0)
    await pipeline.start("kafka")
    await upload
    await _assert_exactly_once(pipeline, dataset.id, version.id, set(files))
    pipeline.assert_all_running()
    # Shown by pytest -rP: whether a consumer got stuck and was restarted (the log has why).
    restarts = {
        name: pipeline.log(name).count("consumer_stalled_restarting")
        for name in ("ingest", "embedder", "tagger")
    }
    print(f"consumer watchdog restarts during this session: {restarts}")
