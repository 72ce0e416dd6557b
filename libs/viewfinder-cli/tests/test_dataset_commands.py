"""`viewfinder dataset create|list|show` against the scripted ingest service."""

from __future__ import annotations

import json

from viewfinder.v1 import dataset_pb2, labeling_pb2
from viewfinder_cli.output import message_dict
from viewfinder_cli.testing import DATASET_ID, FakeServices, InvokeCli, script_dataset


async def test_create_sends_every_setting(services: FakeServices, cli: InvokeCli) -> None:
    created = dataset_pb2.Dataset(
        id=DATASET_ID, name="cars", bucket="images", prefix="cars/", latest_version=1
    )
    version = dataset_pb2.DatasetVersion(id="ver-1", dataset_id=DATASET_ID, number=1, name="v1")
    services.ingest.on("CreateDataset", dataset_pb2.CreateDatasetResponse(dataset=created, version=version))
    services.tagger.on(
        "GetTagDefinition",
        labeling_pb2.GetTagDefinitionResponse(
            tag_definition=labeling_pb2.TagDefinition(id="def-9", name="road-scenes", version=3)
        ),
    )

    result = await cli(
        "dataset",
        "create",
        "cars",
        "--bucket=images",
        "--prefix=cars/",
        "--description=road scenes",
        "--storage-connection=minio",
        "--auto-label=road-scenes",
        "--auto-label-version=2",
        "--labeling-connection=qwen",
        "--embedding-connection=dashscope",
        "--vector-store-connection=milvus",
    )

    assert result.exit_code == 0, result.output
    assert services.tagger.requests("GetTagDefinition") == [
        labeling_pb2.GetTagDefinitionRequest(name="road-scenes")
    ]
    assert services.ingest.requests("CreateDataset") == [
        dataset_pb2.CreateDatasetRequest(
            name="cars",
            description="road scenes",
            storage_connection="minio",
            bucket="images",
            prefix="cars/",
            content_type=dataset_pb2.CONTENT_TYPE_IMAGE,
            labeling=dataset_pb2.LabelingSettings(
                automatic=True, tag_definition_id="def-9", tag_definition_version=2, model_connection="qwen"
            ),
            indexing=dataset_pb2.IndexingSettings(
                model_connection="dashscope", vector_store_connection="milvus"
            ),
        )
    ]
    assert f"created dataset cars ({DATASET_ID}) over s3://images/cars/, version v1 (ver-1)" in result.stdout
    assert "viewfinder sync cars" in result.stdout


async def test_create_json_prints_the_response(services: FakeServices, cli: InvokeCli) -> None:
    response = dataset_pb2.CreateDatasetResponse(
        dataset=dataset_pb2.Dataset(id=DATASET_ID, name="cars", bucket="images"),
        version=dataset_pb2.DatasetVersion(id="ver-1", number=1, name="v1"),
    )
    services.ingest.on("CreateDataset", response)

    result = await cli("dataset", "create", "cars", "--bucket=images", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == message_dict(response)
    # Without --auto-label the tagger is not asked, and nothing is labeled automatically.
    assert services.tagger.calls == []
    assert not services.ingest.requests("CreateDataset")[0].labeling.automatic


async def test_list_follows_every_page(services: FakeServices, cli: InvokeCli) -> None:
    pages = (
        dataset_pb2.ListDatasetsResponse(
            datasets=[dataset_pb2.Dataset(id="d1", name="birds", bucket="b", latest_version=1)],
            next_page_token="page-2",
        ),
        dataset_pb2.ListDatasetsResponse(
            datasets=[dataset_pb2.Dataset(id="d2", name="cars", bucket="c", prefix="x/", latest_version=4)]
        ),
    )
    services.ingest.on("ListDatasets", *pages)

    human = await cli("dataset", "list")

    assert human.exit_code == 0, human.output
    assert [request.page_token for request in services.ingest.requests("ListDatasets")] == ["", "page-2"]
    assert "2 dataset(s)" in human.stdout
    assert "birds" in human.stdout
    assert "s3://c/x/" in human.stdout
    assert "v4" in human.stdout

    services.ingest.on("ListDatasets", *pages)
    as_json = await cli("dataset", "list", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert [dataset["name"] for dataset in json.loads(as_json.stdout)["datasets"]] == ["birds", "cars"]


async def test_show_prints_the_dataset_and_its_versions(services: FakeServices, cli: InvokeCli) -> None:
    dataset, versions = script_dataset(services)

    human = await cli("dataset", "show", "cars")

    assert human.exit_code == 0, human.output
    assert services.ingest.requests("GetDataset") == [dataset_pb2.GetDatasetRequest(name="cars")]
    assert services.ingest.requests("ListDatasetVersions")[0].dataset_id == DATASET_ID
    assert "dataset cars" in human.stdout
    assert "road scenes" in human.stdout
    assert versions[0].id in human.stdout
    assert versions[1].id in human.stdout

    as_json = await cli("dataset", "show", "cars", "--json")
    document = json.loads(as_json.stdout)
    assert document["dataset"] == message_dict(dataset)
    assert [version["name"] for version in document["versions"]] == ["v2", "v1"]


async def test_set_indexing_sends_only_the_named_connections(services: FakeServices, cli: InvokeCli) -> None:
    dataset, _ = script_dataset(services)
    switched = dataset_pb2.Dataset(
        id=DATASET_ID,
        name="cars",
        indexing=dataset_pb2.IndexingSettings(
            vector_store_connection="milvus", active_index="ds_old", switch_job_id="job-7"
        ),
    )
    services.ingest.on("UpdateDataset", dataset_pb2.UpdateDatasetResponse(dataset=switched))

    result = await cli("dataset", "set-indexing", "cars", "--vector-store-connection=milvus")

    assert result.exit_code == 0, result.output
    (request,) = services.ingest.requests("UpdateDataset")
    assert request.dataset.id == dataset.id
    assert list(request.update_mask.paths) == ["indexing.vector_store_connection"]
    assert request.dataset.indexing.vector_store_connection == "milvus"
    assert "index job job-7" in result.stdout
    assert "search uses ds_old until it completes" in result.stdout
    assert "viewfinder jobs watch job-7 --service index" in result.stdout


async def test_set_indexing_without_a_connection_is_refused(services: FakeServices, cli: InvokeCli) -> None:
    script_dataset(services)

    result = await cli("dataset", "set-indexing", "cars")

    assert result.exit_code != 0
    assert "--embedding-connection" in result.output
    assert services.ingest.requests("UpdateDataset") == []
