"""What every command shares: the connections, the consoles, dataset lookup and job following."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
import typer
from rich.console import Console
from rich.markup import escape

from viewfinder.v1 import dataset_pb2
from viewfinder_cli.connections import CliSettings, Connections
from viewfinder_cli.errors import CliError, ExitCode, ServiceCallError
from viewfinder_cli.jobs import JobProgressDisplay, JobSnapshot, fetch_job, job_summary, watch_job
from viewfinder_cli.output import print_json
from viewfinder_cli.requests import parse_version_number

_VERSIONS_PAGE = 100


@dataclass
class Session:
    """One CLI invocation: settings, lazily opened channels, stdout and stderr consoles."""

    settings: CliSettings
    connections: Connections
    out: Console
    err: Console


def session_of(ctx: typer.Context) -> Session:
    """The Session the root command put on the click context."""
    session = ctx.find_object(Session)
    assert session is not None, "the root callback creates the session"
    return session


def resolve_dataset(session: Session, reference: str) -> dataset_pb2.Dataset:
    """A dataset by name, or by id when no dataset has that name and it looks like an id."""
    ingest = session.connections.datasets()
    try:
        return ingest.call(ingest.stub.GetDataset, dataset_pb2.GetDatasetRequest(name=reference)).dataset
    except ServiceCallError as error:
        if error.code is not grpc.StatusCode.NOT_FOUND or not _looks_like_id(reference):
            raise
    return ingest.call(ingest.stub.GetDataset, dataset_pb2.GetDatasetRequest(dataset_id=reference)).dataset


def _looks_like_id(reference: str) -> bool:
    try:
        uuid.UUID(reference)
    except ValueError:
        return False
    return True


def resolve_version(
    session: Session, dataset: dataset_pb2.Dataset, version: str | None
) -> dataset_pb2.DatasetVersion:
    """The dataset's version named by --version ("v2" or "2"), or its latest version."""
    wanted = parse_version_number(version) if version is not None else None
    ingest = session.connections.datasets()
    page_token = ""
    while True:
        response = ingest.call(
            ingest.stub.ListDatasetVersions,
            dataset_pb2.ListDatasetVersionsRequest(
                dataset_id=dataset.id, page_size=_VERSIONS_PAGE, page_token=page_token
            ),
        )
        for candidate in response.versions:
            # Versions come newest first, so the first one is the latest.
            if wanted is None or candidate.number == wanted:
                return candidate
        page_token = response.next_page_token
        if not page_token:
            missing = f"version v{wanted}" if wanted is not None else "versions"
            raise CliError(f"dataset {dataset.name} has no {missing}", ExitCode.NOT_FOUND)


def follow_job(session: Session, started: JobSnapshot, *, wait: bool, as_json: bool) -> None:
    """Reports a started job; with ``wait``, follows it to a terminal state (exit 1 unless it succeeded)."""
    job_id = started.job.id
    if not wait:
        if as_json:
            print_json(started.detail)
            return
        session.out.print(
            f"started {started.service.value} job [bold]{escape(job_id)}[/bold] ({started.state_name}); "
            f"follow it with: viewfinder jobs watch {escape(job_id)} --service {started.service.value}"
        )
        return
    watch_and_report(session, started, as_json=as_json)


def watch_and_report(session: Session, first: JobSnapshot, *, as_json: bool) -> None:
    """Polls the job until it ends, with a progress bar unless ``as_json``; prints the final job."""
    job_id = first.job.id

    def fetch() -> JobSnapshot:
        return fetch_job(session.connections, first.service, job_id)

    interval = session.settings.poll_interval_s
    try:
        if as_json:
            final = (
                first
                if first.terminal
                else watch_job(fetch, poll_interval_s=interval, on_update=lambda _: None)
            )
        else:
            with JobProgressDisplay(session.err, escape(f"{first.service.value} {job_id}")) as display:
                display.update(first)
                final = (
                    first
                    if first.terminal
                    else watch_job(fetch, poll_interval_s=interval, on_update=display.update)
                )
    except KeyboardInterrupt:
        session.err.print(
            f"stopped watching; the job goes on: viewfinder jobs watch {escape(job_id)} --service {first.service.value}"
        )
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    if as_json:
        print_json(final.detail)
    else:
        session.out.print(job_summary(final))
    if not final.succeeded:
        raise typer.Exit(ExitCode.FAILURE)
