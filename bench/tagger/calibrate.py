"""Calibrates the offline zero-shot tagger's decision rule on labelled data the demo does not use.

Data: Debian's ``openclipart-png`` (``apt-get install openclipart-png``), the
demo's 18 category folders under /usr/share/openclipart/png; a folder is an
image's one true tag. The demo (``scripts/demo.py``) labels a fixed sample
(``choose_sample(2000, seed 7)``, plus one image held back); calibration
draws ``--calibration-images`` other images of the same folders (seeded), so
the demo sample stays an untouched test set.

Procedure, with the service's own code paths:

1. decode every image as the embedder does (``decode_image``, 224 px, pad)
   and embed it with the offline model; keep the ``semantic`` field (what
   the embedder stores and the zero-shot tagger scores);
2. embed the demo definition's tag texts (``domain.zero_shot.tag_texts``:
   ``"<name>: <description>"``) with the same model's text path (EmbedText);
3. score every (image, tag) by cosine and decide with ``domain.zero_shot``'s
   rule, calibrating its parameters on the calibration images only:
   * ``threshold``: score >= threshold (the old rule; ``calibrate_threshold``
     picks the F1-best threshold);
   * ``margin``: score >= best score of the image - margin, and score >=
     threshold (the new default; relative to the definition's other tags, so
     a tag text that scores high on every image no longer fires everywhere);
4. print precision and recall of both rules on the demo sample: precision =
   correct tags / tags given, recall = images whose folder tag was given.

    python bench/tagger/calibrate.py                       # ~2,000 + 2,000 images, a few minutes
    python bench/tagger/calibrate.py --calibration-images 4000 --vectors /tmp/vf-calibration.npz

``--vectors`` keeps the embedded vectors, so a second run only re-scores.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt

from viewfinder_embedder.adapters.offline_model import OfflineEmbeddingModel
from viewfinder_embedder.config import EmbedderSettings, default_model_cache_dir
from viewfinder_embedder.domain.decode import DecodedImage, decode_image
from viewfinder_tagger.config import ZeroShotConnection
from viewfinder_tagger.domain.definitions import DefinitionContent, TagDefinition, TagSpec
from viewfinder_tagger.domain.zero_shot import (
    calibrate_margin,
    calibrate_threshold,
    propose_tags,
    tag_texts,
)

REPO = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 224
DEMO_PREFIX = "demo/calibration/"


def load_demo() -> ModuleType:
    """``scripts/demo.py`` as a module: its sample and its category descriptions are the reference."""
    spec = importlib.util.spec_from_file_location("viewfinder_demo", REPO / "scripts" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def demo_definition(descriptions: dict[str, str]) -> TagDefinition:
    """The definition the demo creates: one presence tag per category folder."""
    content = DefinitionContent(
        description="openclipart's category folders",
        guide_prompt="Pick the categories that describe the clip-art image.",
        tags=tuple(TagSpec(name, descriptions[name]) for name in sorted(descriptions)),
    )
    return TagDefinition("demo", "demo-categories", 1, content, datetime.now(UTC))


def _decode(path: Path) -> DecodedImage | None:
    result = decode_image(
        path.read_bytes(),
        size=IMAGE_SIZE,
        max_pixels=EmbedderSettings.model_fields["max_image_pixels"].default,
        fit="pad",
    )
    return result if isinstance(result, DecodedImage) else None


def embed(
    model: OfflineEmbeddingModel, images: Sequence[tuple[Path, str]], workers: int
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """(semantic vectors, true categories) of the images that decode."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        decoded = list(pool.map(_decode, [path for path, _ in images], chunksize=16))
    kept = [(d, category) for d, (_, category) in zip(decoded, images, strict=True) if d is not None]
    vectors = model.embed_images_sync([d.pixels for d, _ in kept])["semantic"]
    return np.asarray(vectors, dtype=np.float32), [category for _, category in kept]


def normalised(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length (cosine = dot product)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.where(norms == 0, 1, norms), dtype=np.float32)


def decide(
    scores: npt.NDArray[np.float32], tags: Sequence[str], *, threshold: float, margin: float | None
) -> list[set[str]]:
    """The tags each image gets, by ``domain.zero_shot.propose_from_scores``."""
    return [
        {
            p.name
            for p in propose_tags(
                {tag: (score, "") for tag, score in zip(tags, row.tolist(), strict=True)},
                threshold=threshold,
                margin=margin,
            )
        }
        for row in scores
    ]


def precision_recall(given: Sequence[set[str]], truth: Sequence[str]) -> tuple[float, float, float]:
    """(precision, recall, tags per image) against one true tag per image."""
    tags_given = sum(len(g) for g in given)
    correct = sum(1 for g, t in zip(given, truth, strict=True) if t in g)
    return (correct / tags_given if tags_given else 0.0, correct / len(truth), tags_given / len(truth))


def main() -> int:
    """Embeds, calibrates on the disjoint images and reports both rules on the demo sample."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calibration-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=11, help="seed of the calibration sample")
    parser.add_argument("--demo-images", type=int, default=2000)
    parser.add_argument("--demo-seed", type=int, default=7)
    parser.add_argument("--old-threshold", type=float, default=0.3, help="the rule before calibration")
    parser.add_argument("--workers", type=int, default=2, help="decode processes")
    parser.add_argument("--cache-dir", type=Path, default=default_model_cache_dir())
    parser.add_argument("--vectors", type=Path, help="keep/reuse the embedded vectors in this .npz")
    args = parser.parse_args()

    demo = load_demo()
    if not demo.OPENCLIPART.is_dir():
        print(f"{demo.OPENCLIPART} not found: apt-get install openclipart-png", file=sys.stderr)
        return 2
    sample, held_back = demo.choose_sample(args.demo_images, args.demo_seed, DEMO_PREFIX)
    demo_images = [(image.path, image.category) for image in sample]
    excluded = {image.path for image in (*sample, held_back)}
    pool = sorted(
        (path, path.relative_to(demo.OPENCLIPART).parts[0])
        for path in demo.OPENCLIPART.rglob("*.png")
        if path.relative_to(demo.OPENCLIPART).parts[0] in demo.CATEGORY_DESCRIPTIONS and path not in excluded
    )
    calibration_images = random.Random(args.seed).sample(pool, min(args.calibration_images, len(pool)))

    definition = demo_definition(demo.CATEGORY_DESCRIPTIONS)
    texts = tag_texts(definition)
    tags = [text.tag for text in texts]
    started = time.perf_counter()
    model = OfflineEmbeddingModel.load(args.cache_dir)
    if args.vectors is not None and args.vectors.exists():
        stored = np.load(args.vectors)
        calibration_vectors, demo_vectors = stored["calibration"], stored["demo"]
        calibration_truth, demo_truth = list(stored["calibration_truth"]), list(stored["demo_truth"])
    else:
        calibration_vectors, calibration_truth = embed(model, calibration_images, args.workers)
        demo_vectors, demo_truth = embed(model, demo_images, args.workers)
        if args.vectors is not None:
            np.savez(
                args.vectors,
                calibration=calibration_vectors,
                demo=demo_vectors,
                calibration_truth=np.asarray(calibration_truth),
                demo_truth=np.asarray(demo_truth),
            )
    text_vectors = normalised(np.asarray(model.embed_texts_sync([t.text for t in texts])["semantic"]))
    calibration_scores = normalised(calibration_vectors) @ text_vectors.T
    demo_scores = normalised(demo_vectors) @ text_vectors.T
    print(
        f"model: {model.identity.id} {model.identity.version}; {time.perf_counter() - started:.0f} s to load and embed"
    )
    print(
        f"data: {len(tags)} categories; calibration {len(calibration_truth)} images (seed {args.seed}, "
        f"disjoint from the demo sample); demo sample {len(demo_truth)} images (seed {args.demo_seed})"
    )
    print(
        f"scores: calibration cosine range {calibration_scores.min():.3f}..{calibration_scores.max():.3f}, "
        f"median {np.median(calibration_scores):.3f}"
    )

    # Rule 1, the old one: one global threshold, F1-best on the calibration images.
    pairs = [
        (float(score), tag == truth)
        for row, truth in zip(calibration_scores, calibration_truth, strict=True)
        for score, tag in zip(row.tolist(), tags, strict=True)
    ]
    by_threshold = calibrate_threshold(pairs)
    # Rule 2, the new default: within a margin of the image's best tag, above a floor.
    by_margin = calibrate_margin(
        [dict(zip(tags, row.tolist(), strict=True)) for row in calibration_scores],
        [{truth} for truth in calibration_truth],
    )
    print(
        f"calibrated threshold rule: threshold {by_threshold.threshold:.4f} "
        f"(calibration F1 {by_threshold.f1:.3f}, P {by_threshold.precision:.3f}, R {by_threshold.recall:.3f})"
    )
    print(
        f"calibrated margin rule: threshold {by_margin.threshold:.4f}, margin {by_margin.margin:.4f} "
        f"(calibration F1 {by_margin.f1:.3f}, P {by_margin.precision:.3f}, R {by_margin.recall:.3f})"
    )
    current = ZeroShotConnection()
    print()
    print(f"on the demo sample ({len(demo_truth)} images):")
    rules = {
        f"threshold {args.old_threshold} (before)": (args.old_threshold, None),
        f"threshold {by_threshold.threshold:.4f} (calibrated)": (by_threshold.threshold, None),
        f"threshold {by_margin.threshold:.4f} + margin {by_margin.margin:.4f} (calibrated)": (
            by_margin.threshold,
            by_margin.margin,
        ),
        f"service default now: threshold {current.threshold} + margin {current.margin}": (
            current.threshold,
            current.margin,
        ),
    }
    for name, (threshold, margin) in rules.items():
        precision, recall, per_image = precision_recall(
            decide(demo_scores, tags, threshold=threshold, margin=margin), demo_truth
        )
        print(f"  {name:<58} precision {precision:.3f}  recall {recall:.3f}  tags/image {per_image:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
