"""``make demo``: the main job end to end on the local stack and the five services.

``make demo`` starts the stack (``make up``) and the services (``make
services-up``) first; this script then

1. uploads a fixed, seeded sample of Debian's openclipart-png images into the
   local bucket (category folders are the ground-truth tags),
2. defines a tag definition from the categories and registers the dataset with
   automatic labeling,
3. runs sync, indexing and labeling through the ``viewfinder`` CLI, with its
   progress bars,
4. runs example searches (text, image, tag, metadata, DSL) and an export (a
   manifest in the bucket, and a logical dataset version loaded back with the SDK),
5. uploads one new image and shows it becoming searchable through the bucket
   notification alone (S3 -> SQS -> relay -> Kafka -> ingest -> embedder/tagger),
6. prints how to go on with the CLI and grpcurl.

Every CLI command it runs is printed before it runs. Settings (environment):
``VIEWFINDER_DEMO_IMAGES`` (default 2000), ``VIEWFINDER_DEMO_SEED`` (default 7),
``VIEWFINDER_DEMO_BUCKET`` (from stack.env).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from viewfinder_common.s3 import s3_client
from viewfinder_common.settings import S3Settings

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "viewfinder")
OPENCLIPART = Path("/usr/share/openclipart/png")
# Folders that are no subject a person would search for, or too small to be a class.
SKIPPED_CATEGORIES = {"unsorted", "special", "buttons", "logos"}
UPLOAD_CONCURRENCY = 32
NOTIFICATION_TIMEOUT_S = 120.0
# The zero-shot tagger may give no tag above its threshold; the demo does not wait long for one.
TAGS_TIMEOUT_S = 20.0
# What each openclipart category means, for the zero-shot tagger (it scores
# these texts against the image) and for people reading the definition.
CATEGORY_DESCRIPTIONS = {
    "animals": "an animal: a dog, cat, bird, fish, horse, insect or another creature",
    "buildings": "a building: a house, church, tower, castle or skyline",
    "computer": "a computer, a screen, an icon of a desktop application or a keyboard",
    "containers": "a container: a box, bottle, jar, bag or barrel",
    "decorations": "a decoration: an ornament, a frame, a border or a flourish",
    "education": "education: a school, a book, a pencil, a blackboard or a graduation cap",
    "electronics": "electronics: a radio, a phone, a circuit, a battery or a television",
    "food": "food and drink: fruit, vegetables, bread, a meal, a cup or a bottle of wine",
    "geography": "geography: a map, a globe, a flag or a country outline",
    "office": "office things: paper, a folder, a stapler, scissors, a desk or a chart",
    "people": "a person: a man, a woman, a child, a face or a crowd",
    "plants": "a plant: a tree, a flower, a leaf or grass",
    "recreation": "recreation: sports, games, music, toys, holidays or a ball",
    "science": "science: a laboratory flask, a microscope, an atom or medicine",
    "shapes": "a geometric shape, a pattern, an arrow or an abstract symbol",
    "signs_and_symbols": "a sign or a symbol: a road sign, a warning sign or a pictogram",
    "tools": "a tool: a hammer, a wrench, a saw, a screwdriver or a drill",
    "transportation": "transportation: a car, a train, a plane, a ship, a bicycle or a bus",
}

console = Console(highlight=False)


@dataclass(frozen=True)
class SampleImage:
    """One openclipart image: where it is on disk, its category and its key in the bucket."""

    path: Path
    category: str
    key: str


def choose_sample(count: int, seed: int, prefix: str) -> tuple[list[SampleImage], SampleImage]:
    """A seeded sample of ``count`` images and one more held back for the notification step."""
    paths = sorted(
        path
        for path in OPENCLIPART.rglob("*.png")
        if path.relative_to(OPENCLIPART).parts[0] in CATEGORY_DESCRIPTIONS
    )
    if len(paths) < count + 1:
        raise SystemExit(
            f"only {len(paths)} images under {OPENCLIPART}; ask for fewer (VIEWFINDER_DEMO_IMAGES)"
        )
    chosen = random.Random(seed).sample(paths, count + 1)  # noqa: S311 - a reproducible sample, no secret
    images = []
    for path in chosen:
        relative = path.relative_to(OPENCLIPART)
        images.append(SampleImage(path, relative.parts[0], f"{prefix}{relative.as_posix()}"))
    return images[:-1], images[-1]


async def upload(bucket: str, images: list[SampleImage]) -> float:
    """PUTs the images concurrently with a progress bar; returns the seconds it took."""
    began = time.monotonic()
    semaphore = asyncio.Semaphore(UPLOAD_CONCURRENCY)
    with Progress(
        TextColumn("uploading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("upload", total=len(images))
        async with s3_client(S3Settings()) as s3:

            async def put(image: SampleImage) -> None:
                async with semaphore:
                    body = await asyncio.to_thread(image.path.read_bytes)
                    await s3.put_object(Bucket=bucket, Key=image.key, Body=body, ContentType="image/png")
                progress.advance(task)

            await asyncio.gather(*(put(image) for image in images))
    return time.monotonic() - began


def cli(*args: str, capture_json: bool = False, check: bool = True) -> Any:
    """Runs ``viewfinder <args>`` with the command printed first; its output goes to the terminal.

    With ``capture_json`` the command gets ``--json`` and its parsed output is returned instead.
    """
    argv = [CLI, *args, *(["--json"] if capture_json else [])]
    console.print(f"[bold cyan]$ viewfinder {shlex.join(args)}[/bold cyan]")
    sys.stdout.flush()
    if capture_json:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - our CLI
        if result.returncode != 0:
            raise SystemExit(f"viewfinder {shlex.join(args)} failed:\n{result.stderr}")
        return json.loads(result.stdout) if result.stdout.strip() else None
    returncode = subprocess.run(argv, check=False).returncode  # noqa: S603 - our CLI
    if check and returncode != 0:
        raise SystemExit(f"viewfinder {shlex.join(args)} failed (exit {returncode})")
    return returncode


def heading(text: str) -> None:
    """A step's title."""
    console.print()
    console.rule(f"[bold]{text}")


def result_keys(response: Any) -> list[str]:
    """Object keys of a search response printed with --json."""
    return [str(hit.get("file", {}).get("key", "")) for hit in (response or {}).get("results", [])]


def category_of(key: str, prefix: str) -> str:
    """Ground truth of a sample key: its top folder under the demo prefix."""
    return key[len(prefix) :].split("/", 1)[0] if key.startswith(prefix) else "?"


def show_precision(label: str, keys: list[str], prefix: str, expected: str) -> None:
    """How many of the hits carry the expected ground-truth category (a person's relevance check)."""
    if not keys:
        console.print(f"  {label}: no results")
        return
    right = sum(category_of(key, prefix) == expected for key in keys)
    console.print(f"  {label}: {right}/{len(keys)} of the hits are in the openclipart folder '{expected}'")


def define_tags(dataset: str, workdir: Path, categories: list[str]) -> str:
    """Writes the tag definition file from the categories and creates it with the CLI."""
    name = f"{dataset}-categories"
    document = {
        "name": name,
        "description": "openclipart's category folders",
        "guide_prompt": "Pick the categories that describe the clip-art image.",
        "tags": [
            {"name": category, "description": CATEGORY_DESCRIPTIONS[category]} for category in categories
        ],
    }
    path = workdir / "categories.json"
    path.write_text(json.dumps(document, indent=2))
    cli("tags", "define", str(path))
    return name


async def quiet_json(*args: str) -> Any:
    """``viewfinder <args> --json`` run without printing; its parsed output, None when it failed."""
    process = await asyncio.create_subprocess_exec(
        CLI, *args, "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    stdout, _ = await process.communicate()
    return json.loads(stdout) if process.returncode == 0 and stdout.strip() else None


async def wait_searchable(dataset: str, name: str, timeout_s: float) -> float | None:
    """Seconds until a search by file name finds ``name`` (None after the timeout)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if any(
            key.endswith(name) for key in result_keys(await quiet_json("search", dataset, "--name", name))
        ):
            return time.monotonic() - began
        await asyncio.sleep(0.5)
    return None


async def wait_for_tags(dataset: str, key: str, timeout_s: float) -> list[str]:
    """The tags of the file ``key`` once the tagger has written them (empty after the timeout)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        response = await quiet_json("search", dataset, "--path-prefix", key)
        for hit in (response or {}).get("results", []):
            tags = [str(tag.get("name")) for tag in hit.get("tags", [])]
            if tags:
                return tags
        await asyncio.sleep(0.5)
    return []


async def main() -> int:  # noqa: PLR0915 - one linear story, told step by step
    count = int(os.environ.get("VIEWFINDER_DEMO_IMAGES", "2000"))
    seed = int(os.environ.get("VIEWFINDER_DEMO_SEED", "7"))
    bucket = os.environ.get("VIEWFINDER_DEMO_BUCKET", "viewfinder-demo")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dataset = f"openclipart-{stamp}"
    prefix = f"demo/{dataset}/"
    workdir = Path(tempfile.mkdtemp(prefix="viewfinder-demo-"))

    heading(f"1. A labelled sample: {count} openclipart images (seed {seed})")
    images, held_back = choose_sample(count, seed, prefix)
    counts = Counter(image.category for image in images)
    console.print("  ground truth per folder: " + ", ".join(f"{c} {n}" for c, n in counts.most_common()))
    seconds = await upload(bucket, images)
    console.print(
        f"  uploaded to s3://{bucket}/{prefix} in {seconds:.1f} s ({len(images) / seconds:.0f} images/s)"
    )

    heading("2. A tag definition from the categories, and the dataset (automatic labeling on)")
    definition = define_tags(dataset, workdir, sorted(counts))
    cli("dataset", "create", dataset, "--bucket", bucket, "--prefix", prefix, "--auto-label", definition)

    heading("3. Sync, index and label (the offline models)")
    began = time.monotonic()
    cli("sync", dataset, "--wait")
    sync_s = time.monotonic() - began
    began = time.monotonic()
    # The sync's file-discovered events already drive the embedder (and the
    # tagger, automatic labeling being on); the incremental jobs embed and
    # label what those have not reached yet, and show the progress.
    cli("index", dataset, "--incremental", "--wait")
    index_s = time.monotonic() - began
    began = time.monotonic()
    cli("label", dataset, "--definition", definition, "--incremental", "--wait")
    label_s = time.monotonic() - began
    console.print(f"  sync {sync_s:.1f} s, index {index_s:.1f} s, label {label_s:.1f} s")

    heading("4. Searches")
    console.print("[bold]text[/bold]")
    cli("search", dataset, "--text", "a car", "--top-k", "5")
    text_hits = result_keys(cli("search", dataset, "--text", "a car", "--top-k", "10", capture_json=True))
    show_precision("text 'a car', top 10", text_hits, prefix, "transportation")

    probe = next(image for image in images if image.category == "animals")
    console.print(f"\n[bold]image[/bold] (like s3://{bucket}/{probe.key})")
    cli("search", dataset, "--image", f"s3://{bucket}/{probe.key}", "--top-k", "5")
    image_hits = result_keys(
        cli("search", dataset, "--image", f"s3://{bucket}/{probe.key}", "--top-k", "10", capture_json=True)
    )
    show_precision("image query, top 10", image_hits, prefix, probe.category)

    console.print("\n[bold]tag[/bold] (the tags the offline tagger gave, counted over the whole dataset)")
    cli("search", dataset, "--facets", "--page-size", "1")
    facets = (cli("search", dataset, "--facets", "--page-size", "1", capture_json=True) or {}).get(
        "facets", {}
    )
    tag_counts = facets.get("tag_counts", [])
    if tag_counts:
        top_tag = str(tag_counts[0]["name"])
        cli("search", dataset, "--any-tag", top_tag, "--page-size", "5")
        tag_hits = result_keys(
            cli("search", dataset, "--any-tag", top_tag, "--page-size", "50", capture_json=True)
        )
        show_precision(f"tag '{top_tag}', first 50", tag_hits, prefix, top_tag)
    else:
        console.print("  [yellow]the tagger gave no tag above its threshold[/yellow]")

    console.print("\n[bold]metadata[/bold] (name contains 'cat', PNG, at least 200 px wide)")
    cli("search", dataset, "--name", "cat", "--image-format", "PNG", "--min-width", "200", "--page-size", "5")

    dsl = f'FileDir:"{prefix}plants" AND Content:"a tree with green leaves" AND TopK=5'
    console.print("\n[bold]DSL[/bold]")
    cli("search", dataset, "--dsl", dsl)

    heading("5. Export")
    manifest_prefix = f"s3://{bucket}/exports/{dataset}/"
    cli("export", dataset, "--any-tag", "transportation", "--to", manifest_prefix)
    logical = f"{dataset}-vehicles"
    cli("export", dataset, "--text", "a car", "--top-k", "20", "--logical", logical, "--description", "cars")
    console.print("[bold]loaded back with the SDK[/bold]")
    from viewfinder import load_dataset  # noqa: PLC0415 - shown where it is used, as a reader would write it

    version = load_dataset(logical)
    first = version[0]
    console.print(
        f"  >>> ds = load_dataset({logical!r}); len(ds), ds.version -> {len(version)}, {version.version}"
    )
    console.print(f"  >>> ds[0].key, ds[0].width, ds[0].height -> {first.key}, {first.width}, {first.height}")
    console.print(f"  >>> ds.image(0).size -> {version.image(0).size}")

    heading("6. A new image becomes searchable through the bucket notification (no sync)")
    async with s3_client(S3Settings()) as s3:
        await s3.put_object(
            Bucket=bucket, Key=held_back.key, Body=held_back.path.read_bytes(), ContentType="image/png"
        )
    name = held_back.key.rsplit("/", 1)[-1]
    console.print(f"  PUT s3://{bucket}/{held_back.key} (folder '{held_back.category}')")
    searchable_s = await wait_searchable(dataset, name, NOTIFICATION_TIMEOUT_S)
    if searchable_s is None:
        console.print(
            f"  [red]not searchable after {NOTIFICATION_TIMEOUT_S:.0f} s; see .local/logs/*.log[/red]"
        )
        return 1
    console.print(
        f"  in the catalogue (found by name) after {searchable_s:.1f} s (S3 -> SQS -> relay -> Kafka -> ingest)"
    )
    tags = await wait_for_tags(dataset, held_back.key, TAGS_TIMEOUT_S)
    console.print(f"  tagged automatically: {', '.join(tags) if tags else '(no tag passed the threshold)'}")
    console.print("  and by similarity (its own vector scores 1.0):")
    cli("search", dataset, "--image", f"s3://{bucket}/{held_back.key}", "--top-k", "3")

    heading("Go on")
    console.print(
        f"""  The stack and the five services keep running; `make down` stops everything.
  The CLI (.venv/bin/viewfinder, --json for scripts):
    viewfinder dataset list
    viewfinder search {dataset} --text "a red flower" --top-k 10
    viewfinder search {dataset} --dsl 'HAS Tags.ai AND Content:"a boat" AND TopK=10'
    viewfinder export {dataset} --dsl 'HAS Tags.ai' --to s3://{bucket}/exports/tagged/ --format csv
  grpcurl (every service has reflection and the health service):
    grpcurl -plaintext 127.0.0.1:7051 list
    grpcurl -plaintext -d '{{"page_size": 5}}' 127.0.0.1:7051 viewfinder.v1.DatasetService/ListDatasets
    grpcurl -plaintext 127.0.0.1:7054 grpc.health.v1.Health/Check
  Services: ingest :7051, tagger :7052, embedder :7053, search :7054, exporter :7055
  (logs in .local/logs/, pids in .local/pids/)."""
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
