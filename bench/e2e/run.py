"""The whole system: PUT-to-searchable latency, full-pipeline throughput, peak memory per service.

Runs against the local stack and the five services as processes (``make
services-up``; started here if they are not running) with real images from
Debian's openclipart-png, on a fresh dataset under its own prefix of the demo
bucket, driven only by bucket notifications (no sync call):

* latency: one PUT at a time, timed until a text search restricted to the
  file's name returns it (so its vector is in the store): p50/p95 over
  ``--uploads`` PUTs (default 50; the issue's figure is 200, goal p95 <= 2 s);
* throughput: ``--images`` PUTs at once (default 300; the issue's figure is
  2,000), timed from the first PUT until every file has its vector, and until
  every file is also labelled; the baseline is the embedder's raw model on
  already-decoded pixels of the same images, measured in this process in the
  same run (goal: pipeline >= 0.8 x raw);
* peak RSS of each service (its process and its children, e.g. the
  embedder's decode workers), reset at the start of the run where the kernel
  allows it (``/proc/<pid>/clear_refs``), so it is the peak of this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc

from viewfinder.v1 import (
    dataset_pb2,
    dataset_pb2_grpc,
    labeling_pb2,
    labeling_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import S3Settings
from viewfinder_common.vectorstore.postgres_sql import table_name

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deploy.local import services as local_services  # noqa: E402 - needs the repo root on sys.path

if TYPE_CHECKING:
    from deploy.local import stack
else:
    stack = local_services.stack  # the very module services.py uses
OPENCLIPART = Path("/usr/share/openclipart/png")
TAGS = {
    "animals": "an animal: a dog, cat, bird, fish, horse or another creature",
    "transportation": "a vehicle: a car, a train, a plane, a ship or a bicycle",
    "food": "food and drink: fruit, vegetables, bread or a meal",
    "people": "a person: a man, a woman, a child or a face",
    "plants": "a plant: a tree, a flower or a leaf",
    "computer": "a computer, a screen or an icon",
    "shapes": "a geometric shape or pattern",
}


def _sample(count: int, seed: int) -> list[Path]:
    paths = sorted(OPENCLIPART.rglob("*.png"))
    return random.Random(seed).sample(paths, count)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _family_pids(pid: int) -> list[int]:
    return [proc.pid for proc in stack._family(pid)]


def _reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM of a process family (Linux: writing 5 to clear_refs); False where not allowed."""
    ok = True
    for member in _family_pids(pid):
        try:
            Path(f"/proc/{member}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def _peak_rss_mib(pid: int) -> float:
    """Sum of VmHWM (peak resident set) over a process and its descendants, MiB."""
    total_kib = 0
    for member in _family_pids(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


# The stack's own servers whose CPU the pipeline also spends (pid files of `make up`).
STACK_SERVERS = ("s3", "kafka", "postgres", "relay")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its living descendants so far."""
    ticks = 0
    for member in _family_pids(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / _CLOCK_TICKS


def _stack_pids(cfg: stack.StackConfig) -> dict[str, int]:
    """Pids of the stack's servers from their pid files, where running."""
    pids: dict[str, int] = {}
    for name in STACK_SERVERS:
        try:
            pid = int((cfg.pids_dir / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if Path(f"/proc/{pid}").exists():
            pids[name] = pid
    return pids


def _cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: _cpu_s(pid) for name, pid in pids.items()}


class System:
    """gRPC stubs of the running services and the catalogue, for one benchmark run."""

    def __init__(self, plan: local_services.ServicePlan, db: asyncpg.Connection) -> None:
        self.plan = plan
        self.db = db
        self.channels = {
            name: grpc.aio.insecure_channel(plan.address(name)) for name in local_services.SERVICE_ORDER
        }
        self.search_stub = search_pb2_grpc.SearchServiceStub(self.channels["search"])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()

    async def create_dataset(
        self, name: str, bucket: str, prefix: str, labeling: bool = True
    ) -> tuple[str, str]:
        definition = (
            await labeling_pb2_grpc.LabelingServiceStub(self.channels["tagger"]).CreateTagDefinition(
                labeling_pb2.CreateTagDefinitionRequest(
                    name=f"{name}-tags",
                    tags=[labeling_pb2.TagSpec(name=tag, description=text) for tag, text in TAGS.items()],
                ),
                timeout=30,
            )
        ).tag_definition
        response = await dataset_pb2_grpc.DatasetServiceStub(self.channels["ingest"]).CreateDataset(
            dataset_pb2.CreateDatasetRequest(
                name=name,
                bucket=bucket,
                prefix=prefix,
                labeling=dataset_pb2.LabelingSettings(automatic=labeling, tag_definition_id=definition.id),
            ),
            timeout=30,
        )
        return response.dataset.id, response.version.id

    async def searchable(self, version_id: str, file_name: str) -> bool:
        """Whether a text search restricted to ``file_name`` returns it (it has a vector)."""
        try:
            response = await self.search_stub.Search(
                search_pb2.SearchRequest(
                    dataset_version_id=version_id,
                    text="an image",
                    top_k=5,
                    metadata=search_pb2.MetadataFilter(name_contains=file_name),
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            # The dataset's index is created with its first vector; until then
            # the query cannot be embedded. Anything else is a real failure.
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and "has no index yet" in (
                error.details() or ""
            ):
                return False
            raise
        return any(result.file.key.endswith(file_name) for result in response.results)

    async def progress(self, dataset_id: str, version_id: str) -> tuple[int, int, int, int]:
        """(files catalogued, files with a vector, files labelled, files rejected as corrupt or unsupported).

        Real clip art has a few images over the decompression-bomb limit; ingest
        rejects them with a reason, and they count as done.
        """
        index = await self.db.fetchval(
            "SELECT name FROM embedding_indexes WHERE dataset_id = $1 AND active", dataset_id
        )
        vectors = 0
        if index is not None:
            vectors = await self.db.fetchval(
                f'SELECT count(*) FROM "{table_name(index)}" WHERE dataset_version_id = $1',
                version_id,
            )
        labelled = await self.db.fetchval(
            "SELECT count(*) FROM file_label_runs r JOIN files f ON f.id = r.file_id WHERE f.version_id = $1",
            version_id,
        )
        rejected = await self.db.fetchval(
            "SELECT count(*) FROM files WHERE version_id = $1 AND status IN ('corrupt', 'unsupported')",
            version_id,
        )
        catalogued = await self.db.fetchval("SELECT count(*) FROM files WHERE version_id = $1", version_id)
        return int(catalogued), int(vectors), int(labelled), int(rejected)


async def measure_latency(
    system: System, bucket: str, prefix: str, paths: list[Path], timeout_s: float
) -> list[float]:
    """PUT -> searchable seconds, one upload at a time."""
    dataset_id, version_id = await system.create_dataset(
        f"bench-latency-{uuid.uuid4().hex[:8]}", bucket, prefix
    )
    del dataset_id
    latencies: list[float] = []
    async with s3_client(S3Settings()) as s3:
        for number, path in enumerate(paths):
            file_name = f"{number:04d}-{path.name}"
            body = path.read_bytes()
            began = time.monotonic()
            await s3.put_object(Bucket=bucket, Key=f"{prefix}{file_name}", Body=body)
            while not await system.searchable(version_id, file_name):
                if time.monotonic() - began > timeout_s:
                    raise SystemExit(f"{file_name} not searchable after {timeout_s:.0f} s")
                await asyncio.sleep(0.02)
            latencies.append(time.monotonic() - began)
    return latencies


@dataclass
class PipelineTimes:
    """Seconds from the first PUT until each stage had seen every file."""

    uploaded_s: float  # the last PUT returned
    catalogued_s: float  # ingest has a row for every file (notification relayed and applied)
    embedded_s: float  # every file has a vector (or was rejected as corrupt/unsupported)
    labelled_s: float  # every file is also labelled (the embedding time when labeling is off)
    cpu_s: dict[str, float]  # CPU seconds each process spent during the phase


async def measure_pipeline(
    system: System,
    bucket: str,
    prefix: str,
    paths: list[Path],
    timeout_s: float,
    labeling: bool,
    pids: dict[str, int],
) -> PipelineTimes:
    """When each stage had seen every file, from the first PUT.

    Without ``labeling`` the dataset has automatic labeling off, and the labelled time is the embedding time.
    """
    dataset_id, version_id = await system.create_dataset(
        f"bench-throughput-{uuid.uuid4().hex[:8]}", bucket, prefix, labeling
    )
    bodies = [(f"{prefix}{number:05d}-{path.name}", path.read_bytes()) for number, path in enumerate(paths)]
    semaphore = asyncio.Semaphore(32)
    cpu_before = _cpu_snapshot(pids)
    began = time.monotonic()
    uploaded_s: float | None = None
    async with s3_client(S3Settings()) as s3:

        async def put(key: str, body: bytes) -> None:
            async with semaphore:
                await s3.put_object(Bucket=bucket, Key=key, Body=body)

        async def put_all() -> None:
            nonlocal uploaded_s
            await asyncio.gather(*(put(key, body) for key, body in bodies))
            uploaded_s = time.monotonic() - began

        upload = asyncio.create_task(put_all())
        catalogued_s: float | None = None
        embedded_s: float | None = None
        while True:
            catalogued, vectors, labelled, rejected = await system.progress(dataset_id, version_id)
            vectors, labelled = vectors + rejected, labelled + rejected
            now = time.monotonic() - began
            if catalogued_s is None and catalogued >= len(paths):
                catalogued_s = now
            if embedded_s is None and vectors >= len(paths):
                embedded_s = now
            if embedded_s is not None and (labelled >= len(paths) or not labeling):
                await upload
                assert uploaded_s is not None
                cpu_after = _cpu_snapshot(pids)
                cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_before if name in cpu_after}
                return PipelineTimes(uploaded_s, catalogued_s or now, embedded_s, now, cpu)
            if now > timeout_s:
                raise SystemExit(
                    f"after {timeout_s:.0f} s: {catalogued} catalogued, {vectors} vectors, "
                    f"{labelled} labelled of {len(paths)}"
                )
            await asyncio.sleep(0.2)


def _stages(times: PipelineTimes, count: int) -> str:
    cpu = ", ".join(
        f"{name} {seconds:.1f}" for name, seconds in sorted(times.cpu_s.items(), key=lambda kv: -kv[1])
    )
    return (
        f"    stages from the first PUT: all {count} PUTs done {times.uploaded_s:.1f} s "
        f"({count / times.uploaded_s:.0f}/s), all catalogued by ingest {times.catalogued_s:.1f} s "
        f"({count / times.catalogued_s:.0f}/s), all embedded {times.embedded_s:.1f} s, "
        f"all labelled {times.labelled_s:.1f} s\n"
        f"    CPU seconds in that time ({os.cpu_count()} CPUs x {times.labelled_s:.1f} s wall, shared "
        f"with whatever else runs): {cpu}; total {sum(times.cpu_s.values()):.1f}"
    )


def raw_model_rate(paths: list[Path]) -> tuple[float, float]:
    """Images/s of the embedder's offline model alone on already-decoded pixels (batches of 32), and its CPU s/image."""
    from viewfinder_embedder.adapters.offline_model import OfflineEmbeddingModel  # noqa: PLC0415 - heavy
    from viewfinder_embedder.config import default_model_cache_dir  # noqa: PLC0415
    from viewfinder_embedder.domain.decode import DecodedImage, decode_image  # noqa: PLC0415

    model = OfflineEmbeddingModel.load(default_model_cache_dir(), batch_size=32)
    pixels = []
    for path in paths:
        decoded = decode_image(path.read_bytes(), size=224, max_pixels=100_000_000)
        if isinstance(decoded, DecodedImage):
            pixels.append(decoded.pixels)
    model.embed_images_sync(pixels[:32])  # warm-up
    began, cpu_began = time.monotonic(), time.process_time()
    model.embed_images_sync(pixels)
    return len(pixels) / (time.monotonic() - began), (time.process_time() - cpu_began) / len(pixels)


async def run(args: argparse.Namespace) -> int:
    cfg = stack.StackConfig.from_env(os.environ)
    plan = await local_services.up(cfg)
    pids = {name: stack.running_pid(cfg, server) for name, server in local_services.services(plan).items()}
    measured = {**_stack_pids(cfg), **{name: pid for name, pid in pids.items() if pid is not None}}
    reset = all(_reset_peak_rss(pid) for pid in pids.values() if pid is not None)
    bucket = plan.env.get("VIEWFINDER_DEMO_BUCKET", "viewfinder-demo")
    run_id = uuid.uuid4().hex[:8]
    sample = _sample(args.uploads + 2 * args.images, args.seed)
    db = await asyncpg.connect(plan.env["VIEWFINDER_DB_URL"])
    system = System(plan, db)
    try:
        print(
            f"e2e benchmark: {args.uploads} single uploads, {args.images} concurrent uploads; CPUs {os.cpu_count()}"
        )
        latencies = await measure_latency(
            system, bucket, f"bench-e2e/{run_id}/latency/", sample[: args.uploads], args.timeout
        )
        print(
            f"  PUT -> searchable over {len(latencies)} uploads: p50 {statistics.median(latencies):.2f} s, "
            f"p95 {_percentile(latencies, 0.95):.2f} s, max {max(latencies):.2f} s (goal p95 <= 2 s)"
        )
        images = sample[args.uploads : args.uploads + args.images]
        embed_only = await measure_pipeline(
            system,
            bucket,
            f"bench-e2e/{run_id}/embed-only/",
            images,
            args.timeout,
            labeling=False,
            pids=measured,
        )
        labelled_images = sample[args.uploads + args.images :]
        labelled = await measure_pipeline(
            system,
            bucket,
            f"bench-e2e/{run_id}/labelled/",
            labelled_images,
            args.timeout,
            labeling=True,
            pids=measured,
        )
    finally:
        await system.close()
        await db.close()
    embed_only_s, embedded_s, labelled_s = embed_only.embedded_s, labelled.embedded_s, labelled.labelled_s
    pipeline_rate = len(images) / embed_only_s
    print(
        f"  full pipeline, labeling off (PUT, notification, ingest, embed, store): {len(images)} images "
        f"in {embed_only_s:.1f} s = {pipeline_rate:.0f} images/s"
    )
    print(_stages(embed_only, len(images)))
    print(
        f"  full pipeline, automatic labeling on: every file embedded after {embedded_s:.1f} s "
        f"({len(labelled_images) / embedded_s:.0f} images/s), also labelled after {labelled_s:.1f} s "
        f"({len(labelled_images) / labelled_s:.0f} images/s)"
    )
    print(_stages(labelled, len(labelled_images)))
    peaks = {name: _peak_rss_mib(pid) for name, pid in pids.items() if pid is not None}
    raw_rate, raw_cpu = await asyncio.to_thread(raw_model_rate, images)
    print(
        f"  baseline: the embedder's raw model on decoded pixels, batch 32: {raw_rate:.0f} images/s "
        f"({1000 * raw_cpu:.0f} CPU-ms/image; the pipeline, labeling off: "
        f"{1000 * sum(embed_only.cpu_s.values()) / len(images):.0f} CPU-ms/image over the processes above)"
    )
    print(f"  ratio pipeline (labeling off) / raw model: {pipeline_rate / raw_rate:.2f} (goal >= 0.8)")
    print(
        f"  ratio pipeline (labeling on, until labelled) / raw model: {len(labelled_images) / labelled_s / raw_rate:.2f}"
    )
    print(f"  peak RSS per service ({'this run' if reset else 'since each process started'}), with children:")
    for name, mib in peaks.items():
        print(f"    {name:<9} {mib:7.0f} MiB")
    return 0


def main() -> int:
    """Parses flags and runs the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--uploads", type=int, default=50, help="single uploads timed for latency (issue: 200)"
    )
    parser.add_argument(
        "--images", type=int, default=300, help="concurrent uploads for throughput (issue: 2000)"
    )
    parser.add_argument("--seed", type=int, default=11, help="seed of the image sample")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds any one phase may take")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
