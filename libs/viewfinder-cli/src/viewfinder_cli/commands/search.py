"""`viewfinder search` and `viewfinder export`: select files by similarity, tags, metadata or the DSL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from viewfinder.v1 import export_pb2
from viewfinder_cli.commands.options import DatasetArgument, JsonOption, VersionOption
from viewfinder_cli.errors import CliError, ServiceCallError
from viewfinder_cli.jobs import JobService, JobSnapshot
from viewfinder_cli.output import facets_table, print_json, search_results_table
from viewfinder_cli.requests import (
    SearchOptions,
    build_search_request,
    check_search_options,
    parse_bucket_uri,
    parse_manifest_format,
)
from viewfinder_cli.session import follow_job, resolve_dataset, resolve_version, session_of

TextOption = Annotated[str | None, typer.Option("--text", help="Find images that match this description.")]
ImageOption = Annotated[
    str | None,
    typer.Option(
        "--image",
        metavar="PATH|s3://...",
        help="Find images like this one (a local file or a bucket object).",
    ),
]
TopKOption = Annotated[
    int | None,
    typer.Option("--top-k", min=1, max=1000, help="Most results of a --text/--image query (default 100)."),
]
ThresholdOption = Annotated[
    float | None, typer.Option("--threshold", help="Drop --text/--image results scoring below this.")
]
AnyTagOption = Annotated[
    list[str] | None,
    typer.Option(
        "--any-tag", metavar="NAME[=VALUE]", help="The file carries at least one of these tags (repeat)."
    ),
]
AllTagsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--all-tags", metavar="NAME[=VALUE]", help="The file carries every one of these tags (repeat)."
    ),
]
ExcludeTagOption = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude-tag", metavar="NAME[=VALUE]", help="The file carries none of these tags (repeat)."
    ),
]
TagSourceOption = Annotated[
    str | None, typer.Option("--tag-source", metavar="ai|user", help="Only tags from this source count.")
]
NameOption = Annotated[
    str | None, typer.Option("--name", help="The file name contains this text (case-insensitive).")
]
PathPrefixOption = Annotated[
    str | None, typer.Option("--path-prefix", help="The object key starts with this.")
]
ModifiedAfterOption = Annotated[
    str | None,
    typer.Option(
        "--modified-after",
        metavar="TIME",
        help="Last modified at or after this ISO 8601 time (UTC if no zone).",
    ),
]
ModifiedBeforeOption = Annotated[
    str | None,
    typer.Option(
        "--modified-before", metavar="TIME", help="Last modified before this ISO 8601 time (UTC if no zone)."
    ),
]
ImageFormatOption = Annotated[
    list[str] | None,
    typer.Option(
        "--image-format", metavar="FORMAT", help="Image format is one of these, e.g. JPEG, PNG (repeat)."
    ),
]
MinWidthOption = Annotated[int | None, typer.Option("--min-width", help="Width at least this many pixels.")]
MaxWidthOption = Annotated[int | None, typer.Option("--max-width", help="Width at most this many pixels.")]
MinHeightOption = Annotated[
    int | None, typer.Option("--min-height", help="Height at least this many pixels.")
]
MaxHeightOption = Annotated[int | None, typer.Option("--max-height", help="Height at most this many pixels.")]
MinSizeOption = Annotated[
    int | None, typer.Option("--min-size", help="Object size at least this many bytes.")
]
MaxSizeOption = Annotated[int | None, typer.Option("--max-size", help="Object size at most this many bytes.")]
DslOption = Annotated[
    str | None,
    typer.Option(
        "--dsl",
        metavar="QUERY",
        help='The whole query in the DSL, e.g. \'FileDir:"cars" AND HAS Tags.ai AND Content:"a red car" AND TopK=10\'.',
    ),
]
SortOption = Annotated[
    str | None,
    typer.Option("--sort", metavar="relevance|modified[:asc|desc]", help="Order of the results."),
]
IndexNameOption = Annotated[
    str | None, typer.Option("--index-name", help="Index to search; default: the dataset's active index.")
]


def _read_image(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CliError(f"--image: cannot read {path}: {error.strerror or error}") from None


def search(
    ctx: typer.Context,
    *,
    dataset: DatasetArgument,
    text: TextOption = None,
    image: ImageOption = None,
    top_k: TopKOption = None,
    threshold: ThresholdOption = None,
    any_tag: AnyTagOption = None,
    all_tags: AllTagsOption = None,
    exclude_tag: ExcludeTagOption = None,
    tag_source: TagSourceOption = None,
    name: NameOption = None,
    path_prefix: PathPrefixOption = None,
    modified_after: ModifiedAfterOption = None,
    modified_before: ModifiedBeforeOption = None,
    image_format: ImageFormatOption = None,
    min_width: MinWidthOption = None,
    max_width: MaxWidthOption = None,
    min_height: MinHeightOption = None,
    max_height: MaxHeightOption = None,
    min_size: MinSizeOption = None,
    max_size: MaxSizeOption = None,
    dsl: DslOption = None,
    sort: SortOption = None,
    page_size: Annotated[
        int | None, typer.Option("--page-size", min=1, max=1000, help="Results per page (default 100).")
    ] = None,
    page_token: Annotated[
        str | None, typer.Option("--page-token", help="Next page of an identical search.")
    ] = None,
    facets: Annotated[
        bool, typer.Option("--facets", help="Also count tags over the whole matching set.")
    ] = False,
    preview_urls: Annotated[
        bool, typer.Option("--preview-urls", help="Also return presigned preview URLs.")
    ] = False,
    index_name: IndexNameOption = None,
    version: VersionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search a dataset version: similarity (--text/--image), tags, metadata, or the DSL; all ANDed."""
    session = session_of(ctx)
    options = SearchOptions(
        text=text,
        image=image,
        top_k=top_k,
        threshold=threshold,
        any_tags=any_tag or (),
        all_tags=all_tags or (),
        exclude_tags=exclude_tag or (),
        tag_source=tag_source,
        name=name,
        path_prefix=path_prefix,
        modified_after=modified_after,
        modified_before=modified_before,
        image_formats=image_format or (),
        min_width=min_width,
        max_width=max_width,
        min_height=min_height,
        max_height=max_height,
        min_size=min_size,
        max_size=max_size,
        dsl=dsl,
        sort=sort,
        page_size=page_size,
        page_token=page_token,
        facets=facets,
        preview_urls=preview_urls,
        index_name=index_name,
    )
    # Check the options before any call, so that a typo costs no round trip.
    check_search_options(options)
    target = resolve_version(session, resolve_dataset(session, dataset), version)
    request = build_search_request(target.id, options, _read_image)
    searcher = session.connections.search()
    try:
        response = searcher.call(searcher.stub.Search, request)
    except ServiceCallError as error:
        error.query_text = dsl
        raise
    if as_json:
        print_json(response)
        return
    session.out.print(search_results_table(response))
    if response.HasField("facets"):
        session.out.print(facets_table(response.facets))
    if response.next_page_token:
        session.out.print(
            f"more results: repeat the search with --page-token {escape(response.next_page_token)}"
        )


def export(
    ctx: typer.Context,
    *,
    dataset: DatasetArgument,
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="s3://BUCKET/PREFIX", help="Write a manifest under this prefix."),
    ] = None,
    manifest_format: Annotated[
        str, typer.Option("--format", metavar="jsonl|csv", help="Manifest format.")
    ] = "jsonl",
    storage_connection: Annotated[
        str,
        typer.Option(
            "--storage-connection", help="Storage connection to write the manifest with; empty: default."
        ),
    ] = "",
    logical: Annotated[
        str | None,
        typer.Option(
            "--logical",
            metavar="NAME",
            help="Freeze the selection as the next version of this logical dataset.",
        ),
    ] = None,
    append: Annotated[
        bool,
        typer.Option(
            "--append", help="With --logical: keep the previous version's items and add the selection."
        ),
    ] = False,
    description: Annotated[
        str, typer.Option("--description", help="With --logical: the new version's description.")
    ] = "",
    file_id: Annotated[
        list[str] | None,
        typer.Option("--file-id", help="Export exactly these files (repeat) instead of a search."),
    ] = None,
    text: TextOption = None,
    image: ImageOption = None,
    top_k: TopKOption = None,
    threshold: ThresholdOption = None,
    any_tag: AnyTagOption = None,
    all_tags: AllTagsOption = None,
    exclude_tag: ExcludeTagOption = None,
    tag_source: TagSourceOption = None,
    name: NameOption = None,
    path_prefix: PathPrefixOption = None,
    modified_after: ModifiedAfterOption = None,
    modified_before: ModifiedBeforeOption = None,
    image_format: ImageFormatOption = None,
    min_width: MinWidthOption = None,
    max_width: MaxWidthOption = None,
    min_height: MinHeightOption = None,
    max_height: MaxHeightOption = None,
    min_size: MinSizeOption = None,
    max_size: MaxSizeOption = None,
    dsl: DslOption = None,
    sort: SortOption = None,
    index_name: IndexNameOption = None,
    version: VersionOption = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the export with a progress bar until it ends.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Export a selection (--dsl, search options, or --file-id) to a manifest (--to) or a logical dataset (--logical)."""
    session = session_of(ctx)
    if (to is None) == (logical is None):
        raise CliError("give exactly one target: --to s3://bucket/prefix or --logical NAME")
    options = SearchOptions(
        text=text,
        image=image,
        top_k=top_k,
        threshold=threshold,
        any_tags=any_tag or (),
        all_tags=all_tags or (),
        exclude_tags=exclude_tag or (),
        tag_source=tag_source,
        name=name,
        path_prefix=path_prefix,
        modified_after=modified_after,
        modified_before=modified_before,
        image_formats=image_format or (),
        min_width=min_width,
        max_width=max_width,
        min_height=min_height,
        max_height=max_height,
        min_size=min_size,
        max_size=max_size,
        dsl=dsl,
        sort=sort,
        index_name=index_name,
    )
    if file_id and (
        dsl is not None or sort is not None or index_name is not None or options.structured_flags()
    ):
        raise CliError("--file-id selects the files itself; drop the search options")
    request = export_pb2.StartExportRequest()
    if to is not None:
        bucket, prefix = parse_bucket_uri(to, "--to")
        request.manifest.CopyFrom(
            export_pb2.ManifestTarget(
                storage_connection=storage_connection,
                bucket=bucket,
                prefix=prefix,
                format=parse_manifest_format(manifest_format),
            )
        )
    elif logical is not None:
        request.logical_dataset.CopyFrom(
            export_pb2.LogicalDatasetTarget(name=logical, description=description, append=append)
        )
    check_search_options(options)
    target = resolve_version(session, resolve_dataset(session, dataset), version)
    if file_id:
        request.files.CopyFrom(export_pb2.FileSelection(dataset_version_id=target.id, file_ids=file_id))
    elif dsl is not None and sort is None and index_name is None:
        # A bare DSL query has its own selection; with a sort or an index it travels as a search.
        request.query.CopyFrom(export_pb2.QuerySelection(dataset_version_id=target.id, query=dsl))
    else:
        request.search.CopyFrom(build_search_request(target.id, options, _read_image))
    exporter = session.connections.export()
    try:
        response = exporter.call(exporter.stub.StartExport, request)
    except ServiceCallError as error:
        error.query_text = dsl
        raise
    follow_job(session, JobSnapshot(JobService.EXPORT, response.job), wait=wait, as_json=as_json)
