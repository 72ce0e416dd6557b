"""`viewfinder sync|label|index`: start the jobs that fill, label and embed a dataset version."""

from __future__ import annotations

from typing import Annotated

import typer

from viewfinder.v1 import dataset_pb2, embedding_pb2, labeling_pb2
from viewfinder_cli.commands.options import (
    DatasetArgument,
    IncrementalOption,
    JsonOption,
    VersionOption,
    WaitOption,
)
from viewfinder_cli.jobs import JobService, JobSnapshot
from viewfinder_cli.requests import job_mode
from viewfinder_cli.session import follow_job, resolve_dataset, resolve_version, session_of

MaxConcurrencyOption = Annotated[
    int,
    typer.Option(
        "--max-concurrency", min=0, max=256, help="Items in flight at once; 0: the service default."
    ),
]


def sync(
    ctx: typer.Context,
    *,
    dataset: DatasetArgument,
    incremental: IncrementalOption = False,
    version: VersionOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """List the dataset's bucket prefix into a version (full, or --incremental: only changes)."""
    session = session_of(ctx)
    found = resolve_dataset(session, dataset)
    # An empty version id means the latest version; only an explicit --version needs a lookup.
    version_id = resolve_version(session, found, version).id if version is not None else ""
    ingest = session.connections.datasets()
    response = ingest.call(
        ingest.stub.StartSync,
        dataset_pb2.StartSyncRequest(
            dataset_id=found.id, dataset_version_id=version_id, mode=job_mode(incremental=incremental)
        ),
    )
    follow_job(session, JobSnapshot(JobService.SYNC, response.job), wait=wait, as_json=as_json)


def label(
    ctx: typer.Context,
    *,
    dataset: DatasetArgument,
    definition: Annotated[
        str,
        typer.Option(
            "--definition", metavar="NAME", help="Tag definition to label against.", show_default=False
        ),
    ],
    definition_version: Annotated[
        int, typer.Option("--definition-version", min=0, help="Tag definition version; 0: its latest.")
    ] = 0,
    incremental: IncrementalOption = False,
    version: VersionOption = None,
    model_connection: Annotated[
        str,
        typer.Option(
            "--model-connection", help="Labeling model connection; empty: the dataset's or default."
        ),
    ] = "",
    max_concurrency: MaxConcurrencyOption = 0,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Label a dataset version's files with a vision-language model against a tag definition."""
    session = session_of(ctx)
    found = resolve_dataset(session, dataset)
    target = resolve_version(session, found, version)
    tagger = session.connections.labeling()
    tag_definition = tagger.call(
        tagger.stub.GetTagDefinition, labeling_pb2.GetTagDefinitionRequest(name=definition)
    ).tag_definition
    response = tagger.call(
        tagger.stub.StartLabelJob,
        labeling_pb2.StartLabelJobRequest(
            dataset_version_id=target.id,
            tag_definition_id=tag_definition.id,
            tag_definition_version=definition_version,
            model_connection=model_connection,
            mode=job_mode(incremental=incremental),
            max_concurrency=max_concurrency,
        ),
    )
    follow_job(session, JobSnapshot(JobService.LABEL, response.job), wait=wait, as_json=as_json)


def index(
    ctx: typer.Context,
    *,
    dataset: DatasetArgument,
    incremental: IncrementalOption = False,
    version: VersionOption = None,
    index_name: Annotated[
        str,
        typer.Option(
            "--index-name", help="Index to write; empty: the dataset's active index (created if none)."
        ),
    ] = "",
    model_connection: Annotated[
        str, typer.Option("--model-connection", help="Embedding model connection; empty: the dataset's.")
    ] = "",
    vector_store_connection: Annotated[
        str,
        typer.Option(
            "--vector-store-connection", help="Vector store connection of a new index; empty: the dataset's."
        ),
    ] = "",
    max_concurrency: MaxConcurrencyOption = 0,
    activate: Annotated[
        bool,
        typer.Option(
            "--activate/--no-activate", help="Make the index the one search uses when the job succeeds."
        ),
    ] = True,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Embed a dataset version's files into a vector index so that they can be searched."""
    session = session_of(ctx)
    found = resolve_dataset(session, dataset)
    target = resolve_version(session, found, version)
    embedder = session.connections.embedding()
    response = embedder.call(
        embedder.stub.StartIndexJob,
        embedding_pb2.StartIndexJobRequest(
            dataset_version_id=target.id,
            index_name=index_name,
            model_connection=model_connection,
            vector_store_connection=vector_store_connection,
            mode=job_mode(incremental=incremental),
            max_concurrency=max_concurrency,
            activate_on_success=activate,
        ),
    )
    follow_job(session, JobSnapshot(JobService.INDEX, response.job), wait=wait, as_json=as_json)
