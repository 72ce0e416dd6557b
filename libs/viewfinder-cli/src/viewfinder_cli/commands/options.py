"""Options that several commands share."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON (protobuf field names) for scripts.")
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait", help="Follow the job with a progress bar until it ends; exit 1 unless it succeeded."
    ),
]
IncrementalOption = Annotated[
    bool, typer.Option("--incremental", help="Process only what is new or changed since the last run.")
]
VersionOption = Annotated[
    str | None, typer.Option("--version", help="Dataset version (v2 or 2); default: the latest.")
]
DatasetArgument = Annotated[str, typer.Argument(help="Dataset name (or id).", show_default=False)]
