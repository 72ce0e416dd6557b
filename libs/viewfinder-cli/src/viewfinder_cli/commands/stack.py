"""`viewfinder up|down`: the local development stack of a viewfinder checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from viewfinder_cli.errors import CliError, ExitCode

STACK_SCRIPT = Path("deploy") / "local" / "stack.py"

RepoOption = Annotated[
    Path | None,
    typer.Option(
        "--repo",
        envvar="VIEWFINDER_CLI_REPO",
        file_okay=False,
        help="The viewfinder checkout; default: found from the current directory upwards.",
    ),
]


def find_stack_script(repo: Path | None) -> Path:
    """deploy/local/stack.py of the given checkout, or of the checkout around the current directory."""
    candidates = [repo] if repo is not None else [Path.cwd(), *Path.cwd().parents]
    for directory in candidates:
        script = directory / STACK_SCRIPT
        if script.is_file():
            return script
    where = str(repo) if repo is not None else "the current directory or any directory above it"
    raise CliError(
        f"no {STACK_SCRIPT} in {where}. `viewfinder up` and `down` run the local development stack of a "
        "viewfinder checkout: run them inside the checkout (or pass --repo / VIEWFINDER_CLI_REPO), or use "
        "`make up` there. Against a deployed system there is nothing to start: point the CLI at its services "
        "with --ingest-addr, --tagger-addr, ... or VIEWFINDER_CLI_INGEST_ADDR, ...",
        ExitCode.FAILURE,
    )


def _run_stack(script: Path, arguments: list[str]) -> None:
    # The checkout's own interpreter would be best, but the CLI normally runs from that
    # very virtual environment (make install puts it there), so sys.executable is it.
    completed = subprocess.run([sys.executable, str(script), *arguments], cwd=script.parents[2], check=False)  # noqa: S603 - our own script, fixed arguments
    if completed.returncode != 0:
        raise typer.Exit(completed.returncode)


def up(*, repo: RepoOption = None) -> None:
    """Start the local stack (PostgreSQL + pgvector, Kafka, S3, Milvus Lite) of a viewfinder checkout."""
    _run_stack(find_stack_script(repo), ["up"])


def down(
    *,
    repo: RepoOption = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the stack's data.")] = False,
) -> None:
    """Stop exactly what `viewfinder up` started."""
    _run_stack(find_stack_script(repo), ["down", "--purge"] if purge else ["down"])
