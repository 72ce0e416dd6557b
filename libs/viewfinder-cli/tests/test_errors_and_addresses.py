"""gRPC errors as one line and an exit code; service addresses from options and environment."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
import pytest
from google.protobuf import message

from viewfinder.v1 import dataset_pb2
from viewfinder_cli.errors import ExitCode
from viewfinder_cli.testing import DATASET_ID, Failure, FakeServices, InvokeCli


async def test_not_found_is_one_line_and_exit_code_4(services: FakeServices, cli: InvokeCli) -> None:
    services.ingest.on("GetDataset", Failure(grpc.StatusCode.NOT_FOUND, "no dataset named 'trucks'"))

    result = await cli("dataset", "show", "trucks")

    assert result.exit_code == ExitCode.NOT_FOUND
    assert int(ExitCode.NOT_FOUND) == 4
    assert result.stdout == ""
    assert result.stderr == (
        f"error: NOT_FOUND: no dataset named 'trucks' [ingest at {services.address}, GetDataset]\n"
    )


async def test_a_dataset_id_is_looked_up_when_no_name_matches(services: FakeServices, cli: InvokeCli) -> None:
    services.ingest.on(
        "GetDataset",
        Failure(grpc.StatusCode.NOT_FOUND, "no dataset with that name"),
        dataset_pb2.GetDatasetResponse(dataset=dataset_pb2.Dataset(id=DATASET_ID, name="cars")),
    )
    services.ingest.on("ListDatasetVersions", dataset_pb2.ListDatasetVersionsResponse())

    result = await cli("dataset", "show", DATASET_ID, "--json")

    assert result.exit_code == 0, result.output
    assert services.ingest.requests("GetDataset") == [
        dataset_pb2.GetDatasetRequest(name=DATASET_ID),
        dataset_pb2.GetDatasetRequest(dataset_id=DATASET_ID),
    ]


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, ExitCode.INVALID_ARGUMENT),
        (grpc.StatusCode.ALREADY_EXISTS, ExitCode.ALREADY_EXISTS),
        (grpc.StatusCode.FAILED_PRECONDITION, ExitCode.FAILED_PRECONDITION),
        (grpc.StatusCode.PERMISSION_DENIED, ExitCode.PERMISSION_DENIED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ExitCode.RESOURCE_EXHAUSTED),
        (grpc.StatusCode.INTERNAL, ExitCode.OTHER_STATUS),
    ],
)
async def test_each_status_has_its_exit_code(
    services: FakeServices, cli: InvokeCli, code: grpc.StatusCode, exit_code: ExitCode
) -> None:
    services.ingest.on("CreateDataset", Failure(code, "the reason\nover two lines"))

    result = await cli("dataset", "create", "cars", "--bucket=images")

    assert result.exit_code == exit_code
    assert result.stderr == (
        f"error: {code.name}: the reason over two lines [ingest at {services.address}, CreateDataset]\n"
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_service_says_which_and_how_to_point_at_it(cli: InvokeCli) -> None:
    address = f"127.0.0.1:{_closed_port()}"

    result = await cli("dataset", "list", root=[f"--ingest-addr={address}", "--timeout=5"])

    assert result.exit_code == ExitCode.UNAVAILABLE
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: UNAVAILABLE: ")
    assert f"[ingest at {address}, ListDatasets]" in line
    assert "is the ingest service running? set --ingest-addr or VIEWFINDER_CLI_INGEST_ADDR" in line


async def test_every_call_has_a_deadline(services: FakeServices, cli: InvokeCli) -> None:
    released = asyncio.Event()

    async def never_answers(_request: Any, _context: Any) -> message.Message:
        await released.wait()
        return dataset_pb2.ListDatasetsResponse()

    services.ingest.on("ListDatasets", never_answers)
    try:
        result = await cli("dataset", "list", root=[f"--ingest-addr={services.address}", "--timeout=0.2"])
    finally:
        released.set()

    assert result.exit_code == ExitCode.UNAVAILABLE
    assert result.stderr.startswith("error: DEADLINE_EXCEEDED: ")


async def test_addresses_come_from_the_environment(services: FakeServices, cli: InvokeCli) -> None:
    services.ingest.on("ListDatasets", dataset_pb2.ListDatasetsResponse())

    result = await cli(
        "dataset", "list", "--json", root=[], env={"VIEWFINDER_CLI_INGEST_ADDR": services.address}
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("{")
    assert len(services.ingest.requests("ListDatasets")) == 1


async def test_an_option_wins_over_the_environment(services: FakeServices, cli: InvokeCli) -> None:
    services.ingest.on("ListDatasets", dataset_pb2.ListDatasetsResponse())
    unreachable = f"127.0.0.1:{_closed_port()}"

    result = await cli(
        "dataset",
        "list",
        root=[f"--ingest-addr={services.address}"],
        env={"VIEWFINDER_CLI_INGEST_ADDR": unreachable},
    )

    assert result.exit_code == 0, result.output
    assert len(services.ingest.requests("ListDatasets")) == 1
