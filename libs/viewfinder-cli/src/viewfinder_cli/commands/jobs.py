"""`viewfinder jobs watch|show|cancel|resume`: the jobs of sync, label, index and export."""

from __future__ import annotations

from typing import Annotated

import typer

from viewfinder_cli.commands.options import JsonOption, WaitOption
from viewfinder_cli.jobs import JobService, cancel_job, fetch_job, job_summary, resume_job
from viewfinder_cli.output import print_json
from viewfinder_cli.session import follow_job, session_of, watch_and_report

jobs_app = typer.Typer(help="Follow, inspect, cancel and resume jobs.", no_args_is_help=True)

JobIdArgument = Annotated[
    str, typer.Argument(help="Job id, as printed when the job started.", show_default=False)
]
ServiceOption = Annotated[
    JobService,
    typer.Option("--service", case_sensitive=False, help="Which service runs the job.", show_default=False),
]


@jobs_app.command("watch")
def watch(
    ctx: typer.Context, *, job_id: JobIdArgument, service: ServiceOption, as_json: JsonOption = False
) -> None:
    """Show a job's live progress until it ends; exit 1 unless it succeeded."""
    session = session_of(ctx)
    watch_and_report(session, fetch_job(session.connections, service, job_id), as_json=as_json)


@jobs_app.command("show")
def show(
    ctx: typer.Context, *, job_id: JobIdArgument, service: ServiceOption, as_json: JsonOption = False
) -> None:
    """Show a job's state, progress, counts and recent errors once."""
    session = session_of(ctx)
    snapshot = fetch_job(session.connections, service, job_id)
    if as_json:
        print_json(snapshot.detail)
    else:
        session.out.print(job_summary(snapshot))


@jobs_app.command("cancel")
def cancel(
    ctx: typer.Context, *, job_id: JobIdArgument, service: ServiceOption, as_json: JsonOption = False
) -> None:
    """Ask a job to stop; finished work is kept and the job can be resumed."""
    session = session_of(ctx)
    snapshot = cancel_job(session.connections, service, job_id)
    if as_json:
        print_json(snapshot.detail)
    else:
        session.out.print(job_summary(snapshot))


@jobs_app.command("resume")
def resume(
    ctx: typer.Context,
    *,
    job_id: JobIdArgument,
    service: ServiceOption,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Resume a failed or cancelled job from where it stopped."""
    session = session_of(ctx)
    follow_job(session, resume_job(session.connections, service, job_id), wait=wait, as_json=as_json)
