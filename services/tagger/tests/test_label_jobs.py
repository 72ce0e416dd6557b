"""Label jobs end to end on the real service: PostgreSQL, the broker, the S3 API server and the fake VLM.

The fake decides each image's tags from its colour, and counts its calls per
image (by the SHA-256 of the bytes), so "labeled exactly once" is checked at
the model's side, not only in our own bookkeeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

from viewfinder.v1 import common_pb2, events_pb2, labeling_pb2
from viewfinder_common.events import decode_event
from viewfinder_common.testing.fake_vlm import FakeVLMServer

TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _start_job(
    stub: Any, seeded: Any, definition_id: str, mode: common_pb2.JobMode.ValueType, concurrency: int
) -> str:
    reply = await stub.StartLabelJob(
        labeling_pb2.StartLabelJobRequest(
            dataset_version_id=seeded.version_id,
            tag_definition_id=definition_id,
            mode=mode,
            max_concurrency=concurrency,
        ),
        timeout=5,
    )
    return str(reply.job.job.id)


async def _ai_tags(pool: Any) -> dict[str, dict[str, str]]:
    rows = await pool.fetch("SELECT file_id, tag, value FROM file_tags WHERE source = 'ai'")
    tags: dict[str, dict[str, str]] = {}
    for row in rows:
        tags.setdefault(str(row["file_id"]), {})[row["tag"]] = row["value"]
    return tags


async def test_full_then_incremental_jobs_label_each_image_once_and_keep_user_decisions(
    start_tagger: Any, seeder: Any, fake_vlm: FakeVLMServer, api_key: str, helpers: Any, db_pool: Any
) -> None:
    seeded = await seeder.version(["red", "green", "blue", "yellow", "white", "red"])
    connection = helpers.vlm_connection(fake_vlm.base_url, api_key)
    async with start_tagger(connections={"qwen": connection}, default_connection="qwen") as tagger:
        stub = tagger.stub
        definition = (
            await stub.CreateTagDefinition(helpers.definition_request("colours"), timeout=5)
        ).tag_definition

        job_id = await _start_job(stub, seeded, definition.id, common_pb2.JOB_MODE_FULL, 3)
        job = await helpers.wait_for_job(stub, job_id, TERMINAL)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
        assert fake_vlm.calls_per_image() == {_sha(data): 1 for _, data, _ in seeded.files.values()}
        assert (job.job.progress.total_items, job.job.progress.processed_items) == (6, 6)
        assert (job.counts.files_labeled, job.counts.files_failed, job.counts.tags_written) == (6, 0, 12)
        prompt = sum(c.prompt_tokens for c in [job.token_usage])
        assert prompt > 0
        assert (
            job.token_usage.total_tokens == job.token_usage.prompt_tokens + job.token_usage.completion_tokens
        )
        expected_cost = (job.token_usage.prompt_tokens * 3.0 + job.token_usage.completion_tokens * 9.0) / 1e6
        assert abs(job.cost_estimate.amount - expected_cost) < 1e-9
        assert job.cost_estimate.currency == "CNY"

        tags = await _ai_tags(db_pool)
        for file_id, (_, _, colour) in seeded.files.items():
            brightness = "light" if colour in {"yellow", "white"} else "dark"
            assert tags[file_id] == {colour: "", "brightness": brightness}

        records = await helpers.read_topic(tagger.settings.kafka.topic_file_tagged, 6)
        assert sorted(r.key.decode() for r in records) == sorted(seeded.files)
        event = decode_event(events_pb2.FileTagged, records[0].value)
        assert event.label_job_id == job_id
        assert event.tag_definition_id == definition.id
        assert event.model == "qwen-vl-max"
        assert {t.name for t in event.tags} == {seeded.files[event.file_id][2], "brightness"}
        assert all(t.source == common_pb2.TAG_SOURCE_AI for t in event.tags)

        # Two new images: an incremental job labels only them.
        new_ids = await seeder.add_files(seeded, ["blue", "green"])
        job_id = await _start_job(stub, seeded, definition.id, common_pb2.JOB_MODE_INCREMENTAL, 3)
        job = await helpers.wait_for_job(stub, job_id, TERMINAL)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
        assert (job.counts.files_labeled, job.counts.files_skipped) == (2, 6)
        assert fake_vlm.calls_per_image() == {_sha(data): 1 for _, data, _ in seeded.files.values()}
        assert set(await _ai_tags(db_pool)) == set(seeded.files)

        # A person removes an AI tag and adds one; a FULL re-run keeps both decisions.
        first = new_ids[0]
        await stub.UpdateFileTags(
            labeling_pb2.UpdateFileTagsRequest(
                file_id=first,
                add=[labeling_pb2.TagRef(name="sky")],
                remove=[labeling_pb2.TagRef(name="blue")],
            ),
            timeout=5,
        )
        job_id = await _start_job(stub, seeded, definition.id, common_pb2.JOB_MODE_FULL, 8)
        job = await helpers.wait_for_job(stub, job_id, TERMINAL)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
        assert job.counts.files_labeled == 8
        assert fake_vlm.calls_per_image() == {_sha(data): 2 for _, data, _ in seeded.files.values()}
        in_effect = await stub.ListFileTags(labeling_pb2.ListFileTagsRequest(file_id=first), timeout=5)
        assert sorted((t.name, t.source) for t in in_effect.tags) == [
            ("brightness", common_pb2.TAG_SOURCE_AI),
            ("sky", common_pb2.TAG_SOURCE_USER),
        ]
        user_rows = await db_pool.fetch(
            "SELECT tag, removed FROM file_tags WHERE file_id = $1 AND source = 'user' ORDER BY tag",
            uuid.UUID(first),
        )
        assert [(r["tag"], r["removed"]) for r in user_rows] == [("blue", True), ("sky", False)]


async def test_cancel_mid_job_is_consistent_and_resume_finishes_without_recalling(
    start_tagger: Any, seeder: Any, fake_vlm: FakeVLMServer, api_key: str, helpers: Any, db_pool: Any
) -> None:
    colours = ["red", "green", "blue", "yellow", "white", "black"] * 2
    seeded = await seeder.version(colours)
    fake_vlm.behaviour.latency_s = 0.3
    connection = helpers.vlm_connection(fake_vlm.base_url, api_key)
    async with start_tagger(connections={"qwen": connection}, default_connection="qwen") as tagger:
        stub = tagger.stub
        definition = (
            await stub.CreateTagDefinition(helpers.definition_request("colours"), timeout=5)
        ).tag_definition
        job_id = await _start_job(stub, seeded, definition.id, common_pb2.JOB_MODE_FULL, 2)
        deadline = time.monotonic() + 30
        while len(fake_vlm.successful_calls()) < 3:
            assert time.monotonic() < deadline, "the job made no progress"
            await asyncio.sleep(0.02)
        cancelling = (
            await stub.CancelLabelJob(labeling_pb2.CancelLabelJobRequest(job_id=job_id), timeout=5)
        ).job
        assert cancelling.job.state in {common_pb2.JOB_STATE_CANCELLING, common_pb2.JOB_STATE_CANCELLED}
        job = await helpers.wait_for_job(stub, job_id, TERMINAL)
        assert job.job.state == common_pb2.JOB_STATE_CANCELLED

        # Consistent: every file the model answered is fully stored (tags + run + event), nothing else is.
        answered = set(fake_vlm.calls_per_image())
        assert 3 <= len(answered) < len(colours)
        runs = {str(r["file_id"]) for r in await db_pool.fetch("SELECT file_id FROM file_label_runs")}
        by_sha = {_sha(data): file_id for file_id, (_, data, _) in seeded.files.items()}
        assert runs == {by_sha[sha] for sha in answered}
        assert set(await _ai_tags(db_pool)) == runs
        assert job.counts.files_labeled == len(runs)
        events = await helpers.read_topic(tagger.settings.kafka.topic_file_tagged, len(runs))
        assert sorted(r.key.decode() for r in events) == sorted(runs)

        fake_vlm.behaviour.latency_s = 0.0
        resumed = (
            await stub.ResumeLabelJob(labeling_pb2.ResumeLabelJobRequest(job_id=job_id), timeout=5)
        ).job
        assert resumed.job.resume_count == 1
        job = await helpers.wait_for_job(stub, job_id, TERMINAL)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
        assert fake_vlm.calls_per_image() == {_sha(data): 1 for _, data, _ in seeded.files.values()}
        assert job.counts.files_labeled == len(colours)
        assert job.job.progress.processed_items == len(colours)
        assert set(await _ai_tags(db_pool)) == set(seeded.files)


async def test_retries_failures_dead_letters_and_the_api_key_never_leaks(
    start_tagger: Any, seeder: Any, fake_vlm: FakeVLMServer, api_key: str, helpers: Any, db_pool: Any
) -> None:
    colours = ["red", "green", "blue", "white", "red", "green", "black", "yellow"]
    seeded = await seeder.version(colours)
    behaviour = fake_vlm.behaviour
    behaviour.rate_limit_burst = 4  # a 429 burst ...
    behaviour.rate_limit_every = 5  # ... and more 429s later on
    behaviour.retry_after_s = 0.05
    behaviour.hang_next = 2  # two requests time out on our side
    behaviour.hang_s = 3.0
    behaviour.server_errors_next = 1
    behaviour.malformed_colours = {"black"}  # permanent: malformed even after the repair request
    behaviour.server_error_colours = {"yellow"}  # permanent: 500 on every try
    behaviour.extra_tags = [{"name": "unicorn", "confidence": 1.0}, {"name": "brightness", "value": "neon"}]
    wrong_key = "sk-vf-wrong-5b3e8c1a7d20f946"
    connections = {
        "qwen": helpers.vlm_connection(fake_vlm.base_url, api_key, request_timeout_s=0.5, max_attempts=8),
        "qwen-wrong-key": helpers.vlm_connection(fake_vlm.base_url, wrong_key),
    }
    async with start_tagger(connections=connections, default_connection="qwen") as tagger:
        stub = tagger.stub
        definition = (
            await stub.CreateTagDefinition(helpers.definition_request("colours"), timeout=5)
        ).tag_definition
        job_id = await _start_job(stub, seeded, definition.id, common_pb2.JOB_MODE_FULL, 4)
        job = await helpers.wait_for_job(stub, job_id, TERMINAL)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
        assert (job.counts.files_labeled, job.counts.files_failed) == (6, 2)
        assert job.counts.retries >= 4 + 2 + 1 + 1  # the 429 burst, the timeouts, a 500, a repair
        assert job.counts.tags_dropped == 12  # "unicorn" and "brightness=neon" on each labeled file
        statuses = [c.status for c in fake_vlm.calls]
        assert statuses.count(429) >= 4
        assert statuses.count(500) >= 2

        # Output outside the definition never reached the catalogue.
        allowed = {t.name for t in definition.tags}
        stored = await db_pool.fetch("SELECT tag, value FROM file_tags")
        assert stored
        assert {r["tag"] for r in stored} <= allowed
        assert {r["value"] for r in stored if r["tag"] == "brightness"} <= {"light", "dark"}

        # Permanent failures: dead-lettered with the reason, and listed on the job.
        failed_ids = {fid for fid, (_, _, colour) in seeded.files.items() if colour in {"black", "yellow"}}
        dead = await helpers.read_topic(tagger.dlq_topic, 2)
        assert sorted(r.key.decode() for r in dead) == sorted(failed_ids)
        reasons = {}
        for record in dead:
            headers = {k: v.decode() for k, v in record.headers}
            assert headers["x-label-job-id"] == job_id
            assert headers["x-dlq-error-type"] == "LabelingFailed"
            assert decode_event(events_pb2.FileDiscovered, record.value).file_id == record.key.decode()
            reasons[seeded.files[record.key.decode()][2]] = headers["x-dlq-reason"]
        assert "not the requested JSON, also after a repair request" in reasons["black"]
        # Every try of the yellow image failed (500s, and the periodic 429s may hit it too).
        assert reasons["yellow"].startswith(
            "gave up after 8 attempts; last error: chat completion failed: HTTP "
        )
        assert {c.status for c in fake_vlm.calls if c.colour == "yellow"} <= {429, 500}
        assert {e.file_id for e in job.job.recent_errors} == failed_ids
        assert not (await _ai_tags(db_pool)).keys() & failed_ids

        # A connection with a wrong key fails the job (not each file) and says why, without the key.
        bad = await stub.StartLabelJob(
            labeling_pb2.StartLabelJobRequest(
                dataset_version_id=seeded.version_id,
                tag_definition_id=definition.id,
                mode=common_pb2.JOB_MODE_FULL,
                model_connection="qwen-wrong-key",
            ),
            timeout=5,
        )
        failed = await helpers.wait_for_job(stub, bad.job.job.id, TERMINAL)
        assert failed.job.state == common_pb2.JOB_STATE_FAILED
        assert "HTTP 401" in failed.job.error
        assert "Incorrect API key provided: ***" in failed.job.error

        everything = [
            *tagger.log_lines,
            job.job.error,
            failed.job.error,
            *(e.reason for e in job.job.recent_errors),
            *(f"{k}={v!r}" for r in dead for k, v in r.headers),
            *(r.value.decode("latin-1") for r in dead),
            str(job),
            str(failed),
        ]
        assert any("model_call_retry" in line for line in tagger.log_lines), "the logs were captured"
        for text in everything:
            assert api_key not in text
            assert wrong_key not in text


async def test_a_stopping_service_hands_its_job_back_and_the_next_one_finishes_it(
    start_tagger: Any, seeder: Any, fake_vlm: FakeVLMServer, api_key: str, helpers: Any, db_pool: Any
) -> None:
    seeded = await seeder.version(["red", "green", "blue", "white"] * 2)
    fake_vlm.behaviour.latency_s = 0.3
    settings = {
        "connections": {"qwen": helpers.vlm_connection(fake_vlm.base_url, api_key)},
        "default_connection": "qwen",
        "shutdown_grace_s": 3.0,  # longer than a model call: calls in flight finish and are stored
    }
    async with start_tagger(**settings) as tagger:
        definition = (
            await tagger.stub.CreateTagDefinition(helpers.definition_request("colours"), timeout=5)
        ).tag_definition
        job_id = await _start_job(tagger.stub, seeded, definition.id, common_pb2.JOB_MODE_FULL, 2)
        deadline = time.monotonic() + 30
        while len(fake_vlm.successful_calls()) < 2:
            assert time.monotonic() < deadline, "the job made no progress"
            await asyncio.sleep(0.02)
    # The service stopped mid-job (SIGTERM): the job is PENDING again, not stuck RUNNING.
    row = await db_pool.fetchrow("SELECT state, counts FROM jobs WHERE id = $1", uuid.UUID(job_id))
    assert row["state"] == "pending"
    labeled_before = await db_pool.fetchval("SELECT count(*) FROM file_label_runs")
    assert 2 <= labeled_before < len(seeded.files)

    async with start_tagger(**settings) as tagger:
        job = await helpers.wait_for_job(tagger.stub, job_id, TERMINAL)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
        assert job.counts.files_labeled == len(seeded.files)
    assert fake_vlm.calls_per_image() == {_sha(data): 1 for _, data, _ in seeded.files.values()}


async def test_presigned_url_transport_lets_the_model_fetch_the_object(
    start_tagger: Any, seeder: Any, fake_vlm: FakeVLMServer, api_key: str, helpers: Any, db_pool: Any
) -> None:
    seeded = await seeder.version(["green", "yellow"])
    connection = helpers.vlm_connection(fake_vlm.base_url, api_key, image_transport="presigned_url")
    async with start_tagger(connections={"qwen": connection}, default_connection="qwen") as tagger:
        definition = (
            await tagger.stub.CreateTagDefinition(helpers.definition_request("colours"), timeout=5)
        ).tag_definition
        job_id = await _start_job(tagger.stub, seeded, definition.id, common_pb2.JOB_MODE_FULL, 2)
        job = await helpers.wait_for_job(tagger.stub, job_id, TERMINAL)
        assert job.job.state == common_pb2.JOB_STATE_SUCCEEDED, job.job.error
    # The fake fetched the very bytes of each object through its presigned URL.
    assert fake_vlm.calls_per_image() == {_sha(data): 1 for _, data, _ in seeded.files.values()}
    tags = await _ai_tags(db_pool)
    assert {fid: set(t) for fid, t in tags.items()} == {
        fid: {colour, "brightness"} for fid, (_, _, colour) in seeded.files.items()
    }
