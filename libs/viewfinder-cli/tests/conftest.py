"""Fixtures of the CLI tests: the scripted services (viewfinder_cli.testing) and a CLI runner.

The CLI is a synchronous gRPC client, so ``cli`` runs it in a worker thread
while the in-process servers answer on the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from typer.testing import CliRunner, Result

from viewfinder_cli.app import app
from viewfinder_cli.testing import FakeServices, InvokeCli, serve_fakes


@pytest.fixture
async def services() -> AsyncIterator[FakeServices]:
    """The five scripted services on one ephemeral port."""
    async with serve_fakes() as fakes:
        yield fakes


@pytest.fixture
def cli(services: FakeServices) -> InvokeCli:
    """Invokes `viewfinder` against the fakes in a worker thread; job polls follow at once."""
    runner = CliRunner()

    async def invoke(*args: str, env: dict[str, str] | None = None, root: list[str] | None = None) -> Result:
        root_options = root if root is not None else [*services.address_options(), "--poll-interval=0"]
        # A wide terminal keeps table cells on one line, so that outputs can be searched.
        environment = {"COLUMNS": "250", **(env or {})}
        return await asyncio.to_thread(
            runner.invoke, app, [*root_options, *args], env=environment, catch_exceptions=False
        )

    return invoke
