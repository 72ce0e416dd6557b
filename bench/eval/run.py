"""Retrieval evaluation of the embedding model: Precision@k for text→image and image→image.

Data: Debian's ``openclipart-png`` (``apt-get install openclipart-png``), PNG
clip art in category folders under /usr/share/openclipart/png. A category is
a folder holding at least ``--min-images`` PNGs directly (112 of them,
``unsorted`` excluded as it is no category); its tag is the folder path.

Sample (fixed and seeded): up to ``--per-category`` images per category
(default 50, ~3,800 images: the design that reproduces the prototype's
figures, DESIGN §5), or ``--uniform N`` images drawn uniformly from all
category images (the big ``shapes/stars`` folder then dominates), or
``--per-category 20`` (~2,000 images, every category weighed alike: the
hardest of the three).

* image→image: every sampled image queries all the others; relevant = same
  category. Field: the model's image-query field (``visual``).
* text→image: one query per category, its tag as text (the folder's last
  part, ``_``/``-`` read as spaces, e.g. ``big cats``); relevant = images of
  that category. Field: the model's text-query field (``semantic``).

The same decoder (``decode_image`` in a process pool) and model code as the
service are used, so this measures what the service stores.

``--write-reference-mean`` recomputes the offline model's centring mean from
a reference set disjoint from the evaluation sample (up to 30 images from
every folder, images of the sample excluded) and writes it into the package.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from viewfinder_embedder.adapters.offline_model import REFERENCE_MEAN_FILE, OfflineEmbeddingModel
from viewfinder_embedder.config import default_model_cache_dir
from viewfinder_embedder.domain.decode import DecodedImage, decode_image
from viewfinder_embedder.domain.model import QueryKind, fields_for

K_VALUES = (1, 5, 10, 50, 100)
DEFAULT_ROOT = Path("/usr/share/openclipart/png")
MAX_PIXELS = 100_000_000
REFERENCE_PER_FOLDER = 30


def category_files(root: Path, min_images: int, exclude: set[str]) -> dict[str, list[Path]]:
    """Folder path (relative to root) → its PNGs, for folders with at least ``min_images``."""
    by_folder: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*.png")):
        by_folder[str(path.parent.relative_to(root))].append(path)
    return {
        folder: files
        for folder, files in sorted(by_folder.items())
        if len(files) >= min_images and folder not in exclude
    }


def draw_sample(
    categories: dict[str, list[Path]], *, per_category: int, uniform: int, seed: int
) -> list[tuple[Path, str]]:
    """The fixed sample: (file, category) pairs."""
    rng = random.Random(seed)
    if uniform:
        pool = [(path, category) for category, files in categories.items() for path in files]
        return sorted(rng.sample(pool, min(uniform, len(pool))))
    sample: list[tuple[Path, str]] = []
    for category, files in categories.items():
        chosen = rng.sample(files, per_category) if len(files) > per_category else files
        sample.extend((path, category) for path in chosen)
    return sample


def tag_text(category: str) -> str:
    """The query text of a category: its folder's last part, read as words."""
    return category.rsplit("/", 1)[-1].replace("_", " ").replace("-", " ")


def _decode_file(path: Path) -> DecodedImage | str:
    result = decode_image(path.read_bytes(), size=224, max_pixels=MAX_PIXELS, fit="pad")
    return result if isinstance(result, DecodedImage) else result.reason


def decode_all(paths: list[Path], workers: int) -> list[DecodedImage | str]:
    """Decodes files in a process pool, in order; failures are reasons."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_decode_file, paths, chunksize=16))


def precision_at_k(
    scores: npt.NDArray[np.float32],
    query_labels: npt.NDArray[np.str_],
    item_labels: npt.NDArray[np.str_],
    *,
    exclude_self: bool,
) -> list[float]:
    """Mean Precision@k over queries for each k in K_VALUES (relevant = same label)."""
    scores = scores.astype(np.float64, copy=True)
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    depth = min(max(K_VALUES), scores.shape[1] - (1 if exclude_self else 0))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    relevant = item_labels[top] == query_labels[:, None]
    return [float(relevant[:, :k].sum(axis=1).mean() / k) for k in K_VALUES]


def format_table(rows: dict[str, list[float]], chance: dict[str, float]) -> str:
    """A plain-text P@k table."""
    header = f"{'query → result':<18}" + "".join(f"{'P@' + str(k):>8}" for k in K_VALUES) + f"{'chance':>9}"
    lines = [header, "-" * len(header)]
    for name, values in rows.items():
        lines.append(f"{name:<18}" + "".join(f"{v:>8.3f}" for v in values) + f"{chance[name]:>9.3f}")
    return "\n".join(lines)


def write_reference_mean(
    model: OfflineEmbeddingModel,
    categories: dict[str, list[Path]],
    all_folders: dict[str, list[Path]],
    sample: list[tuple[Path, str]],
    args: argparse.Namespace,
) -> None:
    """Centring mean from folders' images outside the sample (up to 30 per folder)."""
    in_sample = {path for path, _ in sample}
    rng = random.Random(args.seed + 1)
    reference: list[Path] = []
    for files in all_folders.values():
        candidates = [path for path in files if path not in in_sample]
        reference.extend(rng.sample(candidates, min(REFERENCE_PER_FOLDER, len(candidates))))
    decoded = [d for d in decode_all(reference, args.workers) if isinstance(d, DecodedImage)]
    features = model.pooled_features_sync([d.pixels for d in decoded])
    mean = features.astype(np.float64).mean(axis=0)
    target = (
        Path(__file__).resolve().parents[2]
        / "services/embedder/src/viewfinder_embedder/data"
        / REFERENCE_MEAN_FILE
    )
    target.write_text(
        json.dumps(
            {
                "note": (
                    "Mean of EfficientNet-Lite0 pooled features (224px, white-padded, (x-127)/128) over a "
                    "reference set: up to 30 images from every folder of Debian openclipart-png, none of "
                    "them in bench/eval's default sample. Written by bench/eval/run.py --write-reference-mean."
                ),
                "count": len(decoded),
                "seed": args.seed,
                "mean": [round(float(v), 6) for v in mean],
            }
        )
        + "\n"
    )
    print(f"wrote {target} from {len(decoded)} reference images (restart to evaluate with it)")


def main() -> int:
    """Runs the evaluation and prints the P@k table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--per-category", type=int, default=50)
    parser.add_argument("--uniform", type=int, default=0, help="draw N images uniformly instead")
    parser.add_argument("--min-images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="decode processes")
    parser.add_argument("--cache-dir", type=Path, default=default_model_cache_dir())
    parser.add_argument("--write-reference-mean", action="store_true")
    args = parser.parse_args()

    if not args.root.is_dir():
        print(f"{args.root} not found: apt-get install openclipart-png", file=sys.stderr)
        return 2
    all_folders = category_files(args.root, 1, set())
    categories = category_files(args.root, args.min_images, {"unsorted"})
    sample = draw_sample(categories, per_category=args.per_category, uniform=args.uniform, seed=args.seed)

    started = time.perf_counter()
    model = OfflineEmbeddingModel.load(args.cache_dir)
    if args.write_reference_mean:
        write_reference_mean(model, categories, all_folders, sample, args)
        return 0
    loaded = time.perf_counter()
    decoded = decode_all([path for path, _ in sample], args.workers)
    kept = [
        (d, category) for d, (_, category) in zip(decoded, sample, strict=True) if isinstance(d, DecodedImage)
    ]
    failed = [reason for reason in decoded if isinstance(reason, str)]
    decoded_at = time.perf_counter()
    vectors = model.embed_images_sync([d.pixels for d, _ in kept])
    embedded_at = time.perf_counter()

    labels = np.asarray([category for _, category in kept])
    query_categories = np.asarray(sorted(set(labels.tolist())))
    image_field = fields_for(model.fields, QueryKind.IMAGE)[0].name
    text_field = fields_for(model.fields, QueryKind.TEXT)[0].name
    text_vectors = model.embed_texts_sync([tag_text(c) for c in query_categories])[text_field]

    image_matrix = vectors[image_field]
    rows = {
        f"image→image ({image_field})": precision_at_k(
            image_matrix @ image_matrix.T, labels, labels, exclude_self=True
        ),
        f"text→image ({text_field})": precision_at_k(
            text_vectors @ vectors[text_field].T, query_categories, labels, exclude_self=False
        ),
    }
    counts = {c: int((labels == c).sum()) for c in query_categories}
    chance = {
        f"image→image ({image_field})": float(np.mean([(counts[c] - 1) / (len(labels) - 1) for c in labels])),
        f"text→image ({text_field})": float(np.mean([counts[c] / len(labels) for c in query_categories])),
    }
    design = f"uniform {args.uniform}" if args.uniform else f"up to {args.per_category} per category"
    print(f"model: {model.identity.id} {model.identity.version}")
    print(
        f"data: {args.root} — {len(query_categories)} categories (folders with ≥{args.min_images} PNGs, "
        f"'unsorted' excluded), sample {design}, seed {args.seed}: {len(kept)} images "
        f"({len(failed)} not decodable: {sorted(set(failed))[:3]})"
    )
    print(
        f"time: model load {loaded - started:.1f}s, decode {len(sample) / (decoded_at - loaded):.0f} img/s "
        f"({args.workers} processes), embed {len(kept) / (embedded_at - decoded_at):.0f} img/s"
    )
    print()
    print(format_table(rows, chance))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
