#!/usr/bin/env python3
"""The five viewfinder services as local processes: ``python deploy/local/services.py up|down|status``.

``up`` runs ``viewfinder-migrate`` against the catalogue, creates the pipeline
topics, then starts ingest, tagger, embedder, search and exporter, each as a
detached process with its own session, log (``<stack dir>/logs/<name>.log``)
and pid file (``<stack dir>/pids/<name>.pid``), and waits until each answers
the standard gRPC health check with SERVING. Services that already run and
answer are left alone. ``down`` stops exactly the processes whose pid files it
wrote. The process handling (pid files, identity checks, stopping a whole
process family) is the one of ``stack.py``, imported, not copied.

The services read the stack's addresses from ``<stack dir>/stack.env``
(written by ``stack.py up``) and their own ``VIEWFINDER_<NAME>_*`` settings
from the environment; anything set in the environment wins over stack.env.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploy.local import stack
else:
    # Run as a script (or imported by the end-to-end tests), the sibling module
    # is found through its folder; mypy sees it by its package path.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import stack

SERVICE_ORDER = ("embedder", "ingest", "tagger", "search", "exporter")
DEFAULT_PORTS = {"ingest": 7051, "tagger": 7052, "embedder": 7053, "search": 7054, "exporter": 7055}
# Partitions of each pipeline topic: the most replicas one consumer group can use.
PIPELINE_PARTITIONS = 3
# The buckets the exporter may write manifests to, unless configured otherwise.
DEFAULT_EXPORT_BUCKETS = '["viewfinder-demo", "vf-*", "t*"]'


@dataclass(frozen=True)
class ServicePlan:
    """Where the five services listen and the environment they start with."""

    ports: Mapping[str, int]
    env: Mapping[str, str]

    def address(self, name: str) -> str:
        """``host:port`` of one service's gRPC server."""
        return f"{stack.HOST}:{self.ports[name]}"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a stack.env file (empty when it does not exist)."""
    if not path.exists():
        return {}
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def plan(cfg: stack.StackConfig, base_env: Mapping[str, str] | None = None) -> ServicePlan:
    """The ports and environment of the services: stack.env, then ``base_env`` (os.environ) on top.

    Ports come from ``VIEWFINDER_<NAME>_GRPC_PORT``; the addresses one service
    uses to reach another follow them, so a second set of services (the
    end-to-end tests) can run beside the demo's on other ports.
    """
    env = {**read_env_file(cfg.env_file), **(os.environ if base_env is None else base_env)}
    if "VIEWFINDER_DB_URL" not in env:
        raise stack.StackError(f"{cfg.env_file} is missing: start the stack first (`make up`)")
    ports = {
        name: int(env.get(f"VIEWFINDER_{name.upper()}_GRPC_PORT", str(default)))
        for name, default in DEFAULT_PORTS.items()
    }
    embedder = f"{stack.HOST}:{ports['embedder']}"
    env.setdefault("VIEWFINDER_SEARCH_EMBEDDER_TARGET", embedder)
    env.setdefault("VIEWFINDER_INGEST_EMBEDDER_TARGET", embedder)
    env.setdefault("VIEWFINDER_EXPORTER_SEARCH_TARGET", f"{stack.HOST}:{ports['search']}")
    env.setdefault("VIEWFINDER_EXPORTER_ALLOWED_BUCKETS", DEFAULT_EXPORT_BUCKETS)
    env.setdefault(
        "VIEWFINDER_TAGGER_CONNECTIONS",
        f'{{"offline": {{"kind": "zero-shot", "embedder_address": "{embedder}"}}}}',
    )
    for name, port in ports.items():
        env[f"VIEWFINDER_{name.upper()}_GRPC_PORT"] = str(port)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return ServicePlan(ports=ports, env=env)


def services(svc: ServicePlan) -> dict[str, stack.Server]:
    """Every service as a stack.Server, keyed by name, in start order."""
    scripts = Path(sysconfig.get_path("scripts"))
    return {
        name: stack.Server(
            name=name,
            argv=[str(scripts / f"viewfinder-{name}")],
            port=svc.ports[name],
            marker=f"viewfinder-{name}",
            env=dict(svc.env),
        )
        for name in SERVICE_ORDER
    }


async def check_serving(address: str) -> None:
    """Raises unless the gRPC server at ``address`` reports SERVING for the whole server."""
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise stack.StackError(f"{address}: health status {response.status}")


def migrate(svc: ServicePlan) -> None:
    """Brings the catalogue schema up to date before any service uses it."""
    migrate_bin = Path(sysconfig.get_path("scripts")) / "viewfinder-migrate"
    result = subprocess.run(
        [str(migrate_bin)], env=dict(svc.env), capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise stack.StackError(f"viewfinder-migrate failed:\n{result.stdout}{result.stderr}")


async def create_topics(svc: ServicePlan) -> None:
    """The pipeline topics with several partitions (an auto-created topic would get one)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    names = [
        svc.env.get(f"VIEWFINDER_KAFKA_TOPIC_{topic}", default)
        for topic, default in (
            ("FILE_DISCOVERED", "viewfinder.file-discovered"),
            ("FILE_TAGGED", "viewfinder.file-tagged"),
            ("FILE_EMBEDDED", "viewfinder.file-embedded"),
        )
    ]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=svc.env["VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS"], request_timeout_ms=10000
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, PIPELINE_PARTITIONS, 1) for name in names if name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            for topic, code, *_ in response.topic_errors:
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                    raise stack.StackError(f"creating topic {topic} failed with error code {code}")
    finally:
        await admin.close()


async def start_one(cfg: stack.StackConfig, server: stack.Server, address: str) -> int:
    """Starts one service unless it runs, and waits until it reports SERVING; returns its pid.

    The default ports (7051-7055) lie below Linux's ephemeral range
    (32768-60999), so no outgoing connection can hold them when a service binds.
    """
    pid = stack.ensure_started(cfg, server)
    await stack.wait_ready(cfg, server, pid, lambda _cfg: check_serving(address))
    return pid


async def up(cfg: stack.StackConfig, base_env: Mapping[str, str] | None = None) -> ServicePlan:
    """Migrates, creates topics, starts every service and waits until all are SERVING."""
    began = time.monotonic()
    # The embedder's first start exports its model to ONNX, which takes a while.
    cfg = dataclasses.replace(cfg, timeout_s=max(cfg.timeout_s, 240.0))
    for folder in (cfg.logs_dir, cfg.pids_dir):
        folder.mkdir(parents=True, exist_ok=True)
    svc = plan(cfg, base_env)
    procs = services(svc)
    stack.check_ports_free(cfg, procs)
    await asyncio.to_thread(migrate, svc)
    await create_topics(svc)
    # The embedder first: the tagger's offline model and search's query
    # embedding call it, and it takes longest to load its model.
    await start_one(cfg, procs["embedder"], svc.address("embedder"))
    await asyncio.gather(*(start_one(cfg, procs[name], svc.address(name)) for name in SERVICE_ORDER[1:]))
    print(f"services up in {time.monotonic() - began:.1f} s:")
    for name in SERVICE_ORDER:
        print(f"  {name:<9} grpc {svc.address(name)}")
    return svc


def down(cfg: stack.StackConfig, names: tuple[str, ...] = SERVICE_ORDER) -> None:
    """Stops the services this script started, last started first."""
    procs = services(plan_for_stop(cfg))
    for name in reversed(names):
        print(f"  {name}: {stack.stop(cfg, procs[name])}")


def plan_for_stop(cfg: stack.StackConfig) -> ServicePlan:
    """Enough of a plan to find the pid files: stopping needs no stack.env."""
    return ServicePlan(ports=dict(DEFAULT_PORTS), env={})


async def status(cfg: stack.StackConfig) -> bool:
    """Prints each service's state; True when all run and report SERVING."""
    try:
        svc = plan(cfg)
    except stack.StackError:
        svc = plan_for_stop(cfg)
    procs = services(svc)
    all_up = True
    for name in SERVICE_ORDER:
        pid = stack.running_pid(cfg, procs[name])
        state = "down"
        if pid is not None:
            try:
                await asyncio.wait_for(check_serving(svc.address(name)), timeout=5)
                state = "up"
            except Exception as err:  # reported in the table, not raised
                state = f"unhealthy ({type(err).__name__})"
        all_up = all_up and state == "up"
        print(f"  {name:<9} {state:<10} {f'pid {pid}' if pid else '':<11} {svc.address(name)}")
    return all_up


def main(argv: list[str] | None = None) -> int:
    """Command line: up, down, status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="migrate, start the five services and wait until each is SERVING")
    commands.add_parser("down", help="stop every service this script started")
    commands.add_parser("status", help="show which services run and answer")
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        cfg = stack.StackConfig.from_env(os.environ)
        if args.command == "up":
            asyncio.run(up(cfg))
        elif args.command == "down":
            down(cfg)
        else:
            healthy: bool = asyncio.run(status(cfg))
            return 0 if healthy else 1
    except stack.StackError as err:
        print(f"services {args.command}: {err}", file=sys.stderr)
        if args.command == "up":
            print("services started so far keep running; `services.py down` stops them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
