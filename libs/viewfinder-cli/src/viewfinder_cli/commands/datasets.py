"""`viewfinder dataset create|list|show|set-indexing` (ingest's DatasetService)."""

from __future__ import annotations

from typing import Annotated

import typer
from google.protobuf import field_mask_pb2
from rich.markup import escape

from viewfinder.v1 import dataset_pb2, labeling_pb2
from viewfinder_cli.commands.options import DatasetArgument, JsonOption
from viewfinder_cli.output import dataset_table, datasets_table, message_dict, print_json, versions_table
from viewfinder_cli.session import resolve_dataset, session_of

dataset_app = typer.Typer(help="Register bucket prefixes as datasets and look at them.", no_args_is_help=True)

_PAGE = 1000


@dataset_app.command("create")
def create(
    ctx: typer.Context,
    *,
    name: Annotated[
        str, typer.Argument(help="Unique dataset name (letters, digits, -, _, .).", show_default=False)
    ],
    bucket: Annotated[str, typer.Option("--bucket", help="Bucket holding the images.", show_default=False)],
    prefix: Annotated[
        str, typer.Option("--prefix", help="Key prefix inside the bucket; empty: the whole bucket.")
    ] = "",
    description: Annotated[str, typer.Option("--description", help="Free-text description.")] = "",
    storage_connection: Annotated[
        str,
        typer.Option(
            "--storage-connection", help="Storage connection to read the bucket with; empty: default."
        ),
    ] = "",
    auto_label: Annotated[
        str | None,
        typer.Option(
            "--auto-label",
            metavar="DEFINITION",
            help="Label new and changed files automatically with this tag definition.",
        ),
    ] = None,
    auto_label_version: Annotated[
        int,
        typer.Option(
            "--auto-label-version", min=0, help="Tag definition version for --auto-label; 0: latest."
        ),
    ] = 0,
    labeling_connection: Annotated[
        str,
        typer.Option("--labeling-connection", help="Labeling model connection; empty: the tagger's default."),
    ] = "",
    embedding_connection: Annotated[
        str,
        typer.Option(
            "--embedding-connection", help="Embedding model connection; empty: the embedder's default."
        ),
    ] = "",
    vector_store_connection: Annotated[
        str, typer.Option("--vector-store-connection", help="Vector store connection; empty: the default.")
    ] = "",
    as_json: JsonOption = False,
) -> None:
    """Register a bucket prefix as a dataset (creates its first version, v1, empty until a sync)."""
    session = session_of(ctx)
    labeling = dataset_pb2.LabelingSettings(model_connection=labeling_connection)
    if auto_label is not None:
        # The dataset stores the definition's id; people know it by name.
        tagger = session.connections.labeling()
        definition = tagger.call(
            tagger.stub.GetTagDefinition, labeling_pb2.GetTagDefinitionRequest(name=auto_label)
        ).tag_definition
        labeling.automatic = True
        labeling.tag_definition_id = definition.id
        labeling.tag_definition_version = auto_label_version
    request = dataset_pb2.CreateDatasetRequest(
        name=name,
        description=description,
        storage_connection=storage_connection,
        bucket=bucket,
        prefix=prefix,
        content_type=dataset_pb2.CONTENT_TYPE_IMAGE,
        labeling=labeling,
        indexing=dataset_pb2.IndexingSettings(
            model_connection=embedding_connection, vector_store_connection=vector_store_connection
        ),
    )
    ingest = session.connections.datasets()
    response = ingest.call(ingest.stub.CreateDataset, request)
    if as_json:
        print_json(response)
        return
    dataset = response.dataset
    session.out.print(
        f"created dataset [bold]{escape(dataset.name)}[/bold] ({dataset.id}) over "
        f"{escape(f's3://{dataset.bucket}/{dataset.prefix}')}, version {response.version.name} "
        f"({response.version.id}); fill it with: viewfinder sync {escape(dataset.name)}"
    )


@dataset_app.command("list")
def list_datasets(ctx: typer.Context, *, as_json: JsonOption = False) -> None:
    """List every dataset, ordered by name."""
    session = session_of(ctx)
    ingest = session.connections.datasets()
    datasets: list[dataset_pb2.Dataset] = []
    page_token = ""
    while True:
        response = ingest.call(
            ingest.stub.ListDatasets, dataset_pb2.ListDatasetsRequest(page_size=_PAGE, page_token=page_token)
        )
        datasets.extend(response.datasets)
        page_token = response.next_page_token
        if not page_token:
            break
    if as_json:
        print_json({"datasets": [message_dict(dataset) for dataset in datasets]})
    else:
        session.out.print(datasets_table(datasets))


@dataset_app.command("show")
def show(ctx: typer.Context, *, dataset: DatasetArgument, as_json: JsonOption = False) -> None:
    """Show a dataset's settings and its versions (newest first)."""
    session = session_of(ctx)
    found = resolve_dataset(session, dataset)
    ingest = session.connections.datasets()
    versions = ingest.call(
        ingest.stub.ListDatasetVersions,
        dataset_pb2.ListDatasetVersionsRequest(dataset_id=found.id, page_size=_PAGE),
    ).versions
    if as_json:
        print_json(
            {"dataset": message_dict(found), "versions": [message_dict(version) for version in versions]}
        )
        return
    session.out.print(dataset_table(found))
    session.out.print(versions_table(versions))


@dataset_app.command("set-indexing")
def set_indexing(
    ctx: typer.Context,
    *,
    dataset: DatasetArgument,
    embedding_connection: Annotated[
        str | None,
        typer.Option("--embedding-connection", help="New embedding model connection.", show_default=False),
    ] = None,
    vector_store_connection: Annotated[
        str | None,
        typer.Option("--vector-store-connection", help="New vector store connection.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Change where and with which model a dataset is indexed.

    A change builds a new index with the new connections in the background
    (follow it with `viewfinder jobs watch`); search keeps using the current
    index until the new one is complete, then switches to it.
    """
    session = session_of(ctx)
    paths = [
        f"indexing.{field}"
        for field, value in (
            ("model_connection", embedding_connection),
            ("vector_store_connection", vector_store_connection),
        )
        if value is not None
    ]
    if not paths:
        raise typer.BadParameter("name --embedding-connection, --vector-store-connection or both")
    found = resolve_dataset(session, dataset)
    request = dataset_pb2.UpdateDatasetRequest(
        dataset=dataset_pb2.Dataset(
            id=found.id,
            indexing=dataset_pb2.IndexingSettings(
                model_connection=embedding_connection or "",
                vector_store_connection=vector_store_connection or "",
            ),
        ),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )
    ingest = session.connections.datasets()
    updated = ingest.call(ingest.stub.UpdateDataset, request).dataset
    if as_json:
        print_json(updated)
        return
    job = updated.indexing.switch_job_id
    if job:
        session.out.print(
            f"building a new index for [bold]{escape(updated.name)}[/bold] (index job {job}); search uses "
            f"{escape(updated.indexing.active_index or 'the current index')} until it completes. "
            f"Follow it with: viewfinder jobs watch {job} --service index"
        )
    else:
        session.out.print(f"[bold]{escape(updated.name)}[/bold] already indexes with these connections")
