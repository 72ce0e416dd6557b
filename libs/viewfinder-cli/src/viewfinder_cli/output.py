"""Human output (rich tables) and script output (protobuf as JSON)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any

import typer
from google.protobuf import json_format, message, timestamp_pb2
from rich.table import Table
from rich.text import Text

from viewfinder.v1 import common_pb2, dataset_pb2, labeling_pb2, search_pb2


def message_dict(proto: message.Message) -> dict[str, Any]:
    """A message as a JSON-ready dict: proto field names, zero values included, enums by name."""
    return json_format.MessageToDict(
        proto, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(value: message.Message | Mapping[str, Any] | Sequence[Any]) -> None:
    """Writes a message (or a structure of message dicts) to stdout as indented JSON."""
    document = message_dict(value) if isinstance(value, message.Message) else value
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


def timestamp_text(timestamp: timestamp_pb2.Timestamp, *, present: bool = True) -> str:
    """A timestamp as "2024-05-01 12:00:00Z", or "-" when unset."""
    if not present or (timestamp.seconds == 0 and timestamp.nanos == 0):
        return "-"
    return timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def enum_text(value: int, enum_type: Any, prefix: str) -> str:
    """An enum value's name without its type prefix, lower case (JOB_STATE_RUNNING -> running)."""
    name: str = enum_type.Name(value) if value in enum_type.values() else str(value)
    return name.removeprefix(prefix).lower()


def tag_text(tag: common_pb2.Tag | search_pb2.TagMatch) -> str:
    """A tag as "name", or "name=value" when it has a value."""
    return f"{tag.name}={tag.value}" if tag.value else tag.name


def _key_value_table(title: Text, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, Text(value))
    return table


def datasets_table(datasets: Sequence[dataset_pb2.Dataset]) -> Table:
    """One row per dataset."""
    table = Table(title=f"{len(datasets)} dataset(s)", title_justify="left")
    for column in ("name", "id", "location", "latest", "created"):
        table.add_column(column, overflow="fold")
    for dataset in datasets:
        table.add_row(
            Text(dataset.name),
            dataset.id,
            Text(f"s3://{dataset.bucket}/{dataset.prefix}"),
            f"v{dataset.latest_version}",
            timestamp_text(dataset.create_time),
        )
    return table


def dataset_table(dataset: dataset_pb2.Dataset) -> Table:
    """The fields of one dataset."""
    labeling = dataset.labeling
    auto = (
        f"on, definition {labeling.tag_definition_id} v{labeling.tag_definition_version or 'latest'}"
        if labeling.automatic
        else "off"
    )
    return _key_value_table(
        Text(f"dataset {dataset.name}"),
        [
            ("id", dataset.id),
            ("description", dataset.description or "-"),
            ("location", f"s3://{dataset.bucket}/{dataset.prefix}"),
            ("storage connection", dataset.storage_connection or "default"),
            ("automatic labeling", auto),
            ("labeling connection", labeling.model_connection or "default"),
            ("embedding connection", dataset.indexing.model_connection or "default"),
            ("vector store connection", dataset.indexing.vector_store_connection or "default"),
            ("active index", dataset.indexing.active_index or "-"),
            ("index switch job", dataset.indexing.switch_job_id or "-"),
            ("latest version", f"v{dataset.latest_version}"),
            ("created", timestamp_text(dataset.create_time)),
            ("updated", timestamp_text(dataset.update_time)),
        ],
    )


def versions_table(versions: Sequence[dataset_pb2.DatasetVersion]) -> Table:
    """One row per dataset version."""
    table = Table(title="versions", title_justify="left")
    for column in ("version", "id", "active files", "all files", "last sync job", "updated"):
        table.add_column(column, overflow="fold")
    for version in versions:
        table.add_row(
            version.name or f"v{version.number}",
            version.id,
            str(version.active_file_count),
            str(version.file_count),
            version.last_sync_job_id or "-",
            timestamp_text(version.update_time),
        )
    return table


def tag_definitions_table(definitions: Sequence[labeling_pb2.TagDefinition]) -> Table:
    """One row per tag definition."""
    table = Table(title=f"{len(definitions)} tag definition(s)", title_justify="left")
    for column in ("name", "id", "version", "tags", "created"):
        table.add_column(column, overflow="fold")
    for definition in definitions:
        table.add_row(
            Text(definition.name),
            definition.id,
            f"v{definition.version}",
            str(len(definition.tags)),
            timestamp_text(definition.create_time),
        )
    return table


def tag_definition_table(definition: labeling_pb2.TagDefinition) -> Table:
    """The tags of one tag definition version."""
    table = Table(
        title=Text(f"tag definition {definition.name} v{definition.version} ({definition.id})"),
        caption=Text(definition.guide_prompt) if definition.guide_prompt else None,
        title_justify="left",
    )
    for column in ("tag", "description", "allowed values", "group"):
        table.add_column(column, overflow="fold")
    for tag in definition.tags:
        table.add_row(
            Text(tag.name), Text(tag.description), Text(", ".join(tag.allowed_values)), Text(tag.group)
        )
    return table


def search_results_table(response: search_pb2.SearchResponse) -> Table:
    """One row per search result, in the service's order."""
    table = Table(title=f"{len(response.results)} result(s)", title_justify="left")
    for column in ("#", "score", "uri", "image", "modified", "tags"):
        table.add_column(column, overflow="fold")
    for rank, result in enumerate(response.results, start=1):
        file = result.file
        image = f"{file.format} {file.width}x{file.height}" if file.format else "-"
        table.add_row(
            str(rank),
            f"{result.score:.4f}" if result.HasField("score") else "-",
            Text(result.uri),
            image,
            timestamp_text(file.last_modified, present=file.HasField("last_modified")),
            Text(", ".join(tag_text(tag) for tag in result.tags)),
        )
    return table


def facets_table(facets: search_pb2.SearchFacets) -> Table:
    """Tag counts over the whole matching set."""
    table = Table(
        title=f"tags of the {facets.matched_files} matching file(s)", title_justify="left", min_width=40
    )
    table.add_column("tag", overflow="fold")
    table.add_column("files", justify="right")
    for count in facets.tag_counts:
        table.add_row(Text(f"{count.name}={count.value}" if count.value else count.name), str(count.count))
    return table
