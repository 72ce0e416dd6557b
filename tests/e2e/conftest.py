"""The whole system as processes, for the end-to-end tests in this folder.

One pipeline per test session, isolated from the shared stack's data and from
the demo's services, but on the same real servers where they can be shared:

* its own tansu broker on a free port with its log on the S3 API server
  (``s3://<bucket>/``), so that the broker-restart test can restart it without
  touching the broker other developers use, and restart it honestly;
* its own bucket with an S3 -> SQS notification to its own queue, and its own
  relay from that queue to its broker's storage-events topic;
* a fresh PostgreSQL database (catalogue and pgvector indexes);
* the five services, started by ``deploy/local/services.py`` on free ports,
  with their pid files and logs under the session's temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aioboto3
import asyncpg
import grpc
import pytest

from viewfinder.v1 import (
    dataset_pb2,
    dataset_pb2_grpc,
    labeling_pb2,
    labeling_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from viewfinder_common.db import migrate

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.local import services as local_services  # noqa: E402 - needs the repo root on sys.path

if TYPE_CHECKING:
    from deploy.local import stack
else:
    stack = local_services.stack  # the very module services.py uses, not a second copy
RELAY_READY_MESSAGE = "storage relay ready"
STORAGE_EVENTS_TOPIC = "viewfinder.storage-events"
OPENCLIPART = Path("/usr/share/openclipart/png")


def _free_ports(count: int) -> list[int]:
    """Ports below Linux's ephemeral range (32768+), so no outgoing connection can hold them."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 29999)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((stack.HOST, port))
            except OSError:
                continue
        if port not in chosen:
            chosen.append(port)
    return chosen


@dataclass
class Pipeline:
    """The session's broker, relay, database and five services, and how to reach and hurt them."""

    cfg: stack.StackConfig  # the session's own stack dir and broker port
    env: dict[str, str]
    db_url: str
    bucket: str
    broker_bucket: str
    ports: dict[str, int]
    processes: dict[str, Any] = field(default_factory=dict)  # name -> stack.Server

    def address(self, name: str) -> str:
        """``host:port`` of one service's gRPC server."""
        return f"{stack.HOST}:{self.ports[name]}"

    @property
    def topic_file_discovered(self) -> str:
        """The file-discovered topic of this pipeline."""
        return "viewfinder.file-discovered"

    def pid(self, name: str) -> int | None:
        """The pid of one of the session's processes while it runs."""
        pid: int | None = stack.running_pid(self.cfg, self.processes[name])
        return pid

    def kill(self, name: str) -> None:
        """SIGKILL a process and its whole process group (as a crashed pod loses its children too)."""
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running"
        family = stack._family(pid)
        os.killpg(pid, signal.SIGKILL)
        left = stack._wait_gone(family, 10.0)
        assert not left, f"{name}: pids {[p.pid for p in left]} survived SIGKILL"

    def stop(self, name: str) -> None:
        """Stops a process the way `make down` does (SIGTERM, then SIGKILL after a grace period)."""
        stack.stop(self.cfg, self.processes[name])

    async def start(self, name: str) -> None:
        """(Re)starts one process and waits until it is ready."""
        server = self.processes[name]
        if name == "kafka":
            pid = stack.ensure_started(self.cfg, server)
            await stack.wait_ready(self.cfg, server, pid, stack.check_kafka)
        elif name == "relay":
            offset = _log_size(self.cfg, "relay")
            pid = stack.ensure_started(self.cfg, server)
            await stack.wait_ready(self.cfg, server, pid, _relay_ready(self.cfg, offset))
        else:
            await local_services.start_one(self.cfg, server, self.address(name))

    def log(self, name: str) -> str:
        """A process's log so far."""
        return (self.cfg.logs_dir / f"{name}.log").read_text(errors="replace")

    def assert_all_running(self) -> None:
        """Every process of the pipeline still runs (none crashed)."""
        dead = [name for name in self.processes if self.pid(name) is None]
        assert not dead, f"processes died: {dead}; see logs in {self.cfg.logs_dir}"

    # --- clients -------------------------------------------------------------

    def s3(self) -> Any:
        """An aioboto3 S3 client context manager for the local S3 API server."""
        return _aws_session(self.env).client("s3", endpoint_url=self.env["VIEWFINDER_S3_ENDPOINT_URL"])

    async def db(self) -> asyncpg.Connection:
        """A connection to the session's catalogue database."""
        return await asyncpg.connect(self.db_url)

    @contextlib.asynccontextmanager
    async def channel(self, name: str) -> AsyncIterator[grpc.aio.Channel]:
        """A gRPC channel to one service."""
        async with grpc.aio.insecure_channel(self.address(name)) as channel:
            yield channel

    async def create_dataset(
        self, name: str, prefix: str, tags: Mapping[str, str]
    ) -> tuple[dataset_pb2.Dataset, dataset_pb2.DatasetVersion]:
        """A tag definition with ``tags`` (name -> description) and a dataset labelled automatically with it."""
        async with self.channel("tagger") as tagger_channel, self.channel("ingest") as ingest_channel:
            definition = (
                await labeling_pb2_grpc.LabelingServiceStub(tagger_channel).CreateTagDefinition(
                    labeling_pb2.CreateTagDefinitionRequest(
                        name=f"{name}-tags",
                        description="end-to-end test tags",
                        tags=[labeling_pb2.TagSpec(name=tag, description=text) for tag, text in tags.items()],
                    ),
                    timeout=30,
                )
            ).tag_definition
            response = await dataset_pb2_grpc.DatasetServiceStub(ingest_channel).CreateDataset(
                dataset_pb2.CreateDatasetRequest(
                    name=name,
                    bucket=self.bucket,
                    prefix=prefix,
                    labeling=dataset_pb2.LabelingSettings(automatic=True, tag_definition_id=definition.id),
                ),
                timeout=30,
            )
        return response.dataset, response.version

    async def search(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        """One Search call to the search service.

        A similarity query on a dataset whose index does not exist yet (it is
        created with the first vector) answers no results here: search reports
        it as FAILED_PRECONDITION "has no index yet", which is "nothing
        searchable yet", not a failure of the test.
        """
        async with self.channel("search") as channel:
            try:
                response: search_pb2.SearchResponse = await search_pb2_grpc.SearchServiceStub(channel).Search(
                    request, timeout=30
                )
            except grpc.aio.AioRpcError as error:
                if (
                    request.HasField("text")
                    and error.code() == grpc.StatusCode.FAILED_PRECONDITION
                    and "has no index yet" in (error.details() or "")
                ):
                    return search_pb2.SearchResponse()
                raise
        return response


def _aws_session(env: Mapping[str, str]) -> aioboto3.Session:
    return aioboto3.Session(
        aws_access_key_id=env["VIEWFINDER_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["VIEWFINDER_S3_SECRET_ACCESS_KEY"],
        region_name=env["VIEWFINDER_S3_REGION"],
    )


def _log_size(cfg: Any, name: str) -> int:
    path: Path = cfg.logs_dir / f"{name}.log"
    return path.stat().st_size if path.exists() else 0


def _relay_ready(cfg: Any, offset: int) -> Any:
    async def check(_cfg: Any) -> None:
        with (cfg.logs_dir / "relay.log").open("rb") as log:
            log.seek(offset)
            if RELAY_READY_MESSAGE.encode() not in log.read():
                raise stack.StackError("the relay has not reported ready yet")

    return check


async def _create_bucket_with_notifications(env: Mapping[str, str], bucket: str, broker_bucket: str) -> str:
    """The session's image bucket notifying its own new queue, and the broker's bucket; returns the queue URL."""
    session = _aws_session(env)
    endpoint = env["VIEWFINDER_S3_ENDPOINT_URL"]
    async with (
        session.client("s3", endpoint_url=endpoint) as s3,
        session.client("sqs", endpoint_url=endpoint) as sqs,
    ):
        await s3.create_bucket(Bucket=bucket)
        await s3.create_bucket(Bucket=broker_bucket)
        queue_url: str = (await sqs.create_queue(QueueName=f"{bucket}-events"))["QueueUrl"]
        arn = (await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"]))["Attributes"][
            "QueueArn"
        ]
        await s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
                ]
            },
        )
    return queue_url


async def _create_database(base_url: str) -> str:
    base, _, _ = base_url.rpartition("/")
    name = f"e2e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(f"{base}/{name}")
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return f"{base}/{name}"


async def _drop_database(base_url: str, url: str) -> None:
    admin = await asyncpg.connect(base_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
    finally:
        await admin.close()


async def _start_pipeline(pipeline: Pipeline) -> None:
    await pipeline.start("kafka")
    await stack.configure_kafka(pipeline.cfg)  # the storage-events topic, on this broker
    await pipeline.start("relay")
    svc = local_services.plan(pipeline.cfg, pipeline.env)
    await asyncio.to_thread(local_services.migrate, svc)
    await local_services.create_topics(svc)
    await pipeline.start("embedder")
    await asyncio.gather(*(pipeline.start(name) for name in ("ingest", "tagger", "search", "exporter")))


def _stop_pipeline(pipeline: Pipeline) -> None:
    for name in reversed(list(pipeline.processes)):
        with contextlib.suppress(stack.StackError):
            stack.stop(pipeline.cfg, pipeline.processes[name])


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """The session's pipeline, started once; stopped (exactly what it started) at the end."""
    if "VIEWFINDER_DB_URL" not in os.environ:
        pytest.fail("the local stack is not running: `make up` (it writes .local/stack.env)")
    run = uuid.uuid4().hex[:8]
    kafka_port, webhook_port, *grpc_ports = _free_ports(7)
    base_cfg = stack.StackConfig.from_env(os.environ)
    cfg = dataclasses.replace(
        base_cfg,
        stack_dir=tmp_path_factory.mktemp("e2e-stack"),
        kafka_port=kafka_port,
        kafka_storage="s3",
        timeout_s=240.0,
    )
    for folder in (cfg.logs_dir, cfg.pids_dir):
        folder.mkdir(parents=True, exist_ok=True)
    bucket, broker_bucket = f"vf-e2e-{run}", f"vf-e2e-{run}-broker"
    base_db_url = os.environ["VIEWFINDER_DB_URL"]
    db_url = asyncio.run(_create_database(base_db_url))
    queue_url = asyncio.run(_create_bucket_with_notifications(os.environ, bucket, broker_bucket))
    ports = dict(zip(local_services.DEFAULT_PORTS, grpc_ports, strict=True))
    env = {
        **os.environ,
        "VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS": cfg.kafka_address,
        "VIEWFINDER_DB_URL": db_url,
        "VIEWFINDER_RELAY_QUEUE_URL": queue_url,
        "VIEWFINDER_RELAY_TOPIC": STORAGE_EVENTS_TOPIC,
        "VIEWFINDER_INGEST_WEBHOOK_PORT": str(webhook_port),
        "VIEWFINDER_EMBEDDER_DECODE_WORKERS": "1",
        "VIEWFINDER_EXPORTER_ALLOWED_BUCKETS": f'["{bucket}"]',
        # A low zero-shot threshold: these tests are about the plumbing (every
        # file gets its tag set), not about the offline tagger's precision,
        # which bench/eval measures.
        "VIEWFINDER_TAGGER_CONNECTIONS": (
            '{"offline": {"kind": "zero-shot", "threshold": 0.05, '
            f'"embedder_address": "{stack.HOST}:{ports["embedder"]}"}}}}'
        ),
        **{f"VIEWFINDER_{name.upper()}_GRPC_PORT": str(port) for name, port in ports.items()},
    }
    # Services configured by plan() from this environment; the shared broker's
    # and the demo's settings never reach them.
    svc = local_services.plan(cfg, env)
    processes: dict[str, Any] = {}
    stack_servers = stack.servers(cfg)
    kafka = stack_servers["kafka"]
    kafka.argv[-1] = f"s3://{broker_bucket}/"
    processes["kafka"] = kafka
    relay = stack_servers["relay"]
    relay.env.update({key: value for key, value in svc.env.items() if key.startswith("VIEWFINDER_")})
    processes["relay"] = relay
    processes.update(local_services.services(svc))
    pipeline = Pipeline(
        cfg=cfg,
        env=dict(svc.env),
        db_url=db_url,
        bucket=bucket,
        broker_bucket=broker_bucket,
        ports=ports,
        processes=processes,
    )
    try:
        asyncio.run(_start_pipeline(pipeline))
        yield pipeline
    finally:
        _stop_pipeline(pipeline)
        asyncio.run(_drop_database(base_db_url, db_url))


def clipart(category: str, count: int, skip: int = 0) -> list[Path]:
    """``count`` openclipart images of one category folder, in a stable order."""
    paths = sorted((OPENCLIPART / category).rglob("*.png"))[skip : skip + count]
    assert len(paths) == count, f"openclipart-png has too few images in {category}"
    return paths
