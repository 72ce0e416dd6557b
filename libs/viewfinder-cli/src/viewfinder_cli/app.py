"""The `viewfinder` command: a plain gRPC client of the viewfinder services.

Service addresses come from options or environment variables (defaults: the
local stack's loopback ports); every call carries a deadline (--timeout).
Output is human by default (rich tables) and JSON with --json. A failed call
ends as one line on stderr with a non-zero exit code (see viewfinder_cli.errors).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from viewfinder_cli.commands import pipeline, search, stack
from viewfinder_cli.commands.datasets import dataset_app
from viewfinder_cli.commands.jobs import jobs_app
from viewfinder_cli.commands.tags import tags_app
from viewfinder_cli.connections import CliSettings, Connections, Service
from viewfinder_cli.errors import CliError, ServiceCallError
from viewfinder_cli.session import Session


class ViewfinderGroup(TyperGroup):
    """The root command group; turns service and usage errors into one line and an exit code."""

    # ctx is typer's vendored click Context, whose type typer does not export.
    def invoke(self, ctx: Any) -> Any:
        """Runs the subcommand; a ServiceCallError or CliError becomes ``error: ...`` on stderr."""
        try:
            return super().invoke(ctx)
        except ServiceCallError as error:
            typer.echo(f"error: {error.one_line()}", err=True)
            pointer = error.pointer()
            if pointer is not None:
                typer.echo(pointer, err=True)
            raise typer.Exit(error.exit_code) from None
        except CliError as error:
            typer.echo(f"error: {error.message}", err=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(
    cls=ViewfinderGroup,
    name="viewfinder",
    help="viewfinder: a searchable, versioned catalogue of training images. A gRPC client of its services.",
    no_args_is_help=True,
    add_completion=False,
    # Errors are reported as one line by ViewfinderGroup; a traceback would only bury them.
    pretty_exceptions_enable=False,
)


def _address_option(service: Service) -> Any:
    return typer.Option(
        f"--{service.label}-addr",
        envvar=service.address_envvar,
        metavar="HOST:PORT",
        help=f"Address of the {service.label} service.",
    )


@app.callback()
def root(
    ctx: typer.Context,
    *,
    ingest_addr: Annotated[str, _address_option(Service.INGEST)] = Service.INGEST.default_address,
    tagger_addr: Annotated[str, _address_option(Service.TAGGER)] = Service.TAGGER.default_address,
    embedder_addr: Annotated[str, _address_option(Service.EMBEDDER)] = Service.EMBEDDER.default_address,
    search_addr: Annotated[str, _address_option(Service.SEARCH)] = Service.SEARCH.default_address,
    exporter_addr: Annotated[str, _address_option(Service.EXPORTER)] = Service.EXPORTER.default_address,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", envvar="VIEWFINDER_CLI_TIMEOUT_S", min=0.001, help="Deadline of each call, seconds."
        ),
    ] = 30.0,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            envvar="VIEWFINDER_CLI_POLL_INTERVAL_S",
            min=0.0,
            help="Seconds between job polls.",
        ),
    ] = 1.0,
) -> None:
    """viewfinder: a searchable, versioned catalogue of training images."""
    settings = CliSettings(
        addresses={
            Service.INGEST: ingest_addr,
            Service.TAGGER: tagger_addr,
            Service.EMBEDDER: embedder_addr,
            Service.SEARCH: search_addr,
            Service.EXPORTER: exporter_addr,
        },
        timeout_s=timeout,
        poll_interval_s=poll_interval,
    )
    connections = Connections(settings)
    ctx.call_on_close(connections.close)
    ctx.obj = Session(
        settings=settings,
        connections=connections,
        out=Console(highlight=False),
        err=Console(stderr=True, highlight=False),
    )


app.add_typer(dataset_app, name="dataset")
app.command("sync")(pipeline.sync)
app.command("label")(pipeline.label)
app.add_typer(tags_app, name="tags")
app.command("index")(pipeline.index)
app.command("search")(search.search)
app.command("export")(search.export)
app.add_typer(jobs_app, name="jobs")
app.command("up")(stack.up)
app.command("down")(stack.down)


def main() -> None:
    """Console-script entry point."""
    app()
