"""`viewfinder sync|label|index` and `viewfinder jobs ...` against the scripted services."""

from __future__ import annotations

import json

from viewfinder.v1 import common_pb2, dataset_pb2, embedding_pb2, export_pb2, labeling_pb2
from viewfinder_cli.errors import ExitCode
from viewfinder_cli.output import message_dict
from viewfinder_cli.testing import DATASET_ID, VERSION_IDS, FakeServices, InvokeCli, script_dataset


def _job(
    state: common_pb2.JobState.ValueType, processed: int = 0, total: int = 0, **fields: object
) -> common_pb2.Job:
    return common_pb2.Job(
        id="job-1",
        state=state,
        progress=common_pb2.JobProgress(
            total_items=total, processed_items=processed, succeeded_items=processed
        ),
        **fields,  # type: ignore[arg-type]
    )


def _sync_job(
    state: common_pb2.JobState.ValueType, processed: int = 0, **fields: object
) -> dataset_pb2.SyncJob:
    return dataset_pb2.SyncJob(
        job=_job(state, processed, total=8, **fields),
        counts=dataset_pb2.SyncCounts(listed=8, added=processed),
    )


async def test_sync_starts_a_job_and_says_how_to_follow_it(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.ingest.on(
        "StartSync", dataset_pb2.StartSyncResponse(job=_sync_job(common_pb2.JOB_STATE_PENDING))
    )

    result = await cli("sync", "cars", "--incremental")

    assert result.exit_code == 0, result.output
    # The latest version is the default: the request leaves the version empty, no lookup needed.
    assert services.ingest.requests("StartSync") == [
        dataset_pb2.StartSyncRequest(dataset_id=DATASET_ID, mode=common_pb2.JOB_MODE_INCREMENTAL)
    ]
    assert services.ingest.requests("ListDatasetVersions") == []
    assert services.ingest.requests("GetJob") == []
    assert "started sync job job-1 (pending)" in result.stdout
    assert "viewfinder jobs watch job-1 --service sync" in result.stdout


async def test_sync_of_an_older_version_full(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.ingest.on(
        "StartSync", dataset_pb2.StartSyncResponse(job=_sync_job(common_pb2.JOB_STATE_PENDING))
    )

    result = await cli("sync", "cars", "--version=v1", "--json")

    assert result.exit_code == 0, result.output
    assert services.ingest.requests("StartSync") == [
        dataset_pb2.StartSyncRequest(
            dataset_id=DATASET_ID, dataset_version_id=VERSION_IDS[0], mode=common_pb2.JOB_MODE_FULL
        )
    ]
    assert json.loads(result.stdout)["job"]["state"] == "JOB_STATE_PENDING"


async def test_sync_wait_polls_until_the_job_succeeds(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.ingest.on(
        "StartSync", dataset_pb2.StartSyncResponse(job=_sync_job(common_pb2.JOB_STATE_PENDING))
    )
    services.ingest.on(
        "GetJob",
        dataset_pb2.GetJobResponse(job=_sync_job(common_pb2.JOB_STATE_RUNNING, 3)),
        dataset_pb2.GetJobResponse(job=_sync_job(common_pb2.JOB_STATE_RUNNING, 6)),
        dataset_pb2.GetJobResponse(job=_sync_job(common_pb2.JOB_STATE_SUCCEEDED, 8)),
    )

    result = await cli("sync", "cars", "--wait")

    assert result.exit_code == 0, result.output
    assert services.ingest.requests("GetJob") == [dataset_pb2.GetJobRequest(job_id="job-1")] * 3
    assert "sync job job-1: succeeded" in result.stdout
    assert "8/8 processed: 8 succeeded, 0 failed, 0 skipped" in result.stdout
    assert "listed 8, added 8" in result.stdout


async def test_a_failed_job_exits_1_with_its_reason(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.ingest.on(
        "StartSync", dataset_pb2.StartSyncResponse(job=_sync_job(common_pb2.JOB_STATE_RUNNING))
    )
    failure = _sync_job(
        common_pb2.JOB_STATE_FAILED,
        2,
        error="bucket images is not readable with connection default",
        recent_errors=[common_pb2.ItemError(uri="s3://images/cars/x.jpg", reason="truncated JPEG")],
    )
    services.ingest.on("GetJob", dataset_pb2.GetJobResponse(job=failure))

    human = await cli("sync", "cars", "--wait")

    assert human.exit_code == ExitCode.FAILURE
    assert "sync job job-1: failed" in human.stdout
    assert "bucket images is not readable with connection default" in human.stdout
    assert "s3://images/cars/x.jpg: truncated JPEG" in human.stdout

    as_json = await cli("sync", "cars", "--wait", "--json")
    assert as_json.exit_code == ExitCode.FAILURE
    assert json.loads(as_json.stdout) == message_dict(failure)


async def test_label_resolves_the_version_and_the_definition(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)
    services.tagger.on(
        "GetTagDefinition",
        labeling_pb2.GetTagDefinitionResponse(
            tag_definition=labeling_pb2.TagDefinition(id="def-9", name="road-scenes", version=3)
        ),
    )
    label_job = labeling_pb2.LabelJob(job=_job(common_pb2.JOB_STATE_PENDING), tag_definition_id="def-9")
    services.tagger.on("StartLabelJob", labeling_pb2.StartLabelJobResponse(job=label_job))

    result = await cli(
        "label",
        "cars",
        "--definition=road-scenes",
        "--definition-version=2",
        "--incremental",
        "--model-connection=qwen-vl-max",
        "--max-concurrency=16",
    )

    assert result.exit_code == 0, result.output
    assert services.tagger.requests("GetTagDefinition") == [
        labeling_pb2.GetTagDefinitionRequest(name="road-scenes")
    ]
    assert services.tagger.requests("StartLabelJob") == [
        labeling_pb2.StartLabelJobRequest(
            dataset_version_id=VERSION_IDS[1],
            tag_definition_id="def-9",
            tag_definition_version=2,
            model_connection="qwen-vl-max",
            mode=common_pb2.JOB_MODE_INCREMENTAL,
            max_concurrency=16,
        )
    ]
    assert "viewfinder jobs watch job-1 --service label" in result.stdout


async def test_index_wait_follows_the_index_job(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)

    def index_job(state: common_pb2.JobState.ValueType, processed: int) -> embedding_pb2.IndexJob:
        return embedding_pb2.IndexJob(
            job=_job(state, processed, total=7),
            index_name="cars_offline",
            counts=embedding_pb2.IndexCounts(embedded=processed),
        )

    services.embedder.on(
        "StartIndexJob", embedding_pb2.StartIndexJobResponse(job=index_job(common_pb2.JOB_STATE_PENDING, 0))
    )
    services.embedder.on(
        "GetIndexJob",
        embedding_pb2.GetIndexJobResponse(job=index_job(common_pb2.JOB_STATE_RUNNING, 4)),
        embedding_pb2.GetIndexJobResponse(job=index_job(common_pb2.JOB_STATE_SUCCEEDED, 7)),
    )

    result = await cli("index", "cars", "--version=2", "--wait")

    assert result.exit_code == 0, result.output
    assert services.embedder.requests("StartIndexJob") == [
        embedding_pb2.StartIndexJobRequest(
            dataset_version_id=VERSION_IDS[1], mode=common_pb2.JOB_MODE_FULL, activate_on_success=True
        )
    ]
    assert len(services.embedder.requests("GetIndexJob")) == 2
    assert "index job job-1: succeeded" in result.stdout
    assert "cars_offline" in result.stdout


async def test_jobs_watch_each_service_until_terminal(services: FakeServices, cli: InvokeCli) -> None:
    services.tagger.on(
        "GetLabelJob",
        labeling_pb2.GetLabelJobResponse(
            job=labeling_pb2.LabelJob(job=_job(common_pb2.JOB_STATE_RUNNING, 1, 2))
        ),
        labeling_pb2.GetLabelJobResponse(
            job=labeling_pb2.LabelJob(
                job=_job(common_pb2.JOB_STATE_SUCCEEDED, 2, 2),
                counts=labeling_pb2.LabelCounts(files_labeled=2, tags_written=5),
                token_usage=labeling_pb2.TokenUsage(total_tokens=1234),
                cost_estimate=labeling_pb2.CostEstimate(amount=0.0123, currency="CNY"),
            )
        ),
    )

    label = await cli("jobs", "watch", "job-1", "--service", "label")

    assert label.exit_code == 0, label.output
    assert services.tagger.requests("GetLabelJob") == [labeling_pb2.GetLabelJobRequest(job_id="job-1")] * 2
    assert "files labeled 2" in label.stdout
    assert "tags written 5" in label.stdout
    assert "tokens 1234, cost 0.0123 CNY" in label.stdout

    services.embedder.on(
        "GetIndexJob",
        embedding_pb2.GetIndexJobResponse(
            job=embedding_pb2.IndexJob(job=_job(common_pb2.JOB_STATE_CANCELLING))
        ),
        embedding_pb2.GetIndexJobResponse(
            job=embedding_pb2.IndexJob(job=_job(common_pb2.JOB_STATE_CANCELLED))
        ),
    )
    cancelled = await cli("jobs", "watch", "job-1", "--service=index", "--json")
    assert cancelled.exit_code == ExitCode.FAILURE
    assert json.loads(cancelled.stdout)["job"]["state"] == "JOB_STATE_CANCELLED"
    assert len(services.embedder.requests("GetIndexJob")) == 2


async def test_jobs_show_cancel_resume(services: FakeServices, cli: InvokeCli) -> None:
    export_job = export_pb2.ExportJob(
        job=_job(common_pb2.JOB_STATE_SUCCEEDED, 3, 3),
        manifest_uri="s3://exports/cars/manifest.jsonl",
        counts=export_pb2.ExportCounts(records_written=3, bytes_written=900),
    )
    services.exporter.on("GetExport", export_pb2.GetExportResponse(job=export_job))
    shown = await cli("jobs", "show", "job-1", "--service=export")
    assert shown.exit_code == 0, shown.output
    assert "s3://exports/cars/manifest.jsonl" in shown.stdout
    assert "records written 3, bytes written 900" in shown.stdout

    services.ingest.on(
        "CancelJob", dataset_pb2.CancelJobResponse(job=_sync_job(common_pb2.JOB_STATE_CANCELLING))
    )
    cancelled = await cli("jobs", "cancel", "job-1", "--service=sync", "--json")
    assert cancelled.exit_code == 0, cancelled.output
    assert services.ingest.requests("CancelJob") == [dataset_pb2.CancelJobRequest(job_id="job-1")]
    assert json.loads(cancelled.stdout)["job"]["state"] == "JOB_STATE_CANCELLING"

    services.embedder.on(
        "ResumeIndexJob",
        embedding_pb2.ResumeIndexJobResponse(
            job=embedding_pb2.IndexJob(job=_job(common_pb2.JOB_STATE_RUNNING))
        ),
    )
    services.embedder.on(
        "GetIndexJob",
        embedding_pb2.GetIndexJobResponse(
            job=embedding_pb2.IndexJob(job=_job(common_pb2.JOB_STATE_SUCCEEDED))
        ),
    )
    resumed = await cli("jobs", "resume", "job-1", "--service=index", "--wait")
    assert resumed.exit_code == 0, resumed.output
    assert services.embedder.requests("ResumeIndexJob") == [
        embedding_pb2.ResumeIndexJobRequest(job_id="job-1")
    ]
    assert "index job job-1: succeeded" in resumed.stdout


async def test_jobs_watch_needs_a_known_service(cli: InvokeCli) -> None:
    result = await cli("jobs", "watch", "job-1", "--service=billing")
    assert result.exit_code == ExitCode.USAGE
    assert "billing" in result.output
