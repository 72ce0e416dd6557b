"""`viewfinder tags define|list|show` (the tagger's tag definitions)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from viewfinder.v1 import labeling_pb2
from viewfinder_cli.commands.options import JsonOption
from viewfinder_cli.errors import CliError
from viewfinder_cli.output import message_dict, print_json, tag_definition_table, tag_definitions_table
from viewfinder_cli.requests import parse_document, tag_definition_request, tag_definition_version_request
from viewfinder_cli.session import session_of

tags_app = typer.Typer(help="Tag definitions: the tags a labeling model may assign.", no_args_is_help=True)

_PAGE = 1000


@tags_app.command("define")
def define(
    ctx: typer.Context,
    *,
    file: Annotated[
        Path,
        typer.Argument(help="Tag definition as YAML or JSON (.json).", show_default=False, dir_okay=False),
    ],
    name: Annotated[str | None, typer.Option("--name", help="Definition name; overrides the file's.")] = None,
    new_version: Annotated[
        bool,
        typer.Option(
            "--new-version", help="The definition exists: add the file's content as its next version."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a tag definition from a file.

    The file holds name, description, guide_prompt, tags (name, description,
    allowed_values, group) and groups (name, description, selection_mode:
    single | multiple).
    """
    session = session_of(ctx)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot read {file}: {error.strerror or error}") from None
    request = tag_definition_request(parse_document(text, str(file)), str(file), name=name)
    tagger = session.connections.labeling()
    if new_version:
        existing = tagger.call(
            tagger.stub.GetTagDefinition, labeling_pb2.GetTagDefinitionRequest(name=request.name)
        ).tag_definition
        definition = tagger.call(
            tagger.stub.CreateTagDefinitionVersion, tag_definition_version_request(existing.id, request)
        ).tag_definition
    else:
        definition = tagger.call(tagger.stub.CreateTagDefinition, request).tag_definition
    if as_json:
        print_json(definition)
        return
    session.out.print(
        f"defined [bold]{escape(definition.name)}[/bold] v{definition.version} ({definition.id}) "
        f"with {len(definition.tags)} tag(s)"
    )


@tags_app.command("list")
def list_definitions(ctx: typer.Context, *, as_json: JsonOption = False) -> None:
    """List tag definitions at their latest versions."""
    session = session_of(ctx)
    tagger = session.connections.labeling()
    definitions: list[labeling_pb2.TagDefinition] = []
    page_token = ""
    while True:
        response = tagger.call(
            tagger.stub.ListTagDefinitions,
            labeling_pb2.ListTagDefinitionsRequest(page_size=_PAGE, page_token=page_token),
        )
        definitions.extend(response.tag_definitions)
        page_token = response.next_page_token
        if not page_token:
            break
    if as_json:
        print_json({"tag_definitions": [message_dict(definition) for definition in definitions]})
    else:
        session.out.print(tag_definitions_table(definitions))


@tags_app.command("show")
def show(
    ctx: typer.Context,
    *,
    name: Annotated[str, typer.Argument(help="Tag definition name.", show_default=False)],
    version: Annotated[int, typer.Option("--version", min=0, help="Version number; 0: the latest.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Show one version of a tag definition with its tags."""
    session = session_of(ctx)
    tagger = session.connections.labeling()
    definition = tagger.call(
        tagger.stub.GetTagDefinition, labeling_pb2.GetTagDefinitionRequest(name=name, version=version)
    ).tag_definition
    if as_json:
        print_json(definition)
    else:
        session.out.print(tag_definition_table(definition))
