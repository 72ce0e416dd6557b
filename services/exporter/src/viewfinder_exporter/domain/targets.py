"""Where an export may write: manifest locations in allowed buckets, logical dataset names.

A manifest export writes three keys under the requested prefix::

    <prefix>/manifest.jsonl            (or manifest.csv) the manifest
    <prefix>/_SUCCESS                  the summary, written last
    <prefix>/_temporary/<job id>.jsonl the manifest while it is being written

The manifest is uploaded to the temporary key, then copied to its final key
and the temporary object deleted; only then is ``_SUCCESS`` written. A reader
that waits for ``_SUCCESS`` (the Hadoop/Spark output-committer convention the
names follow) never sees a half-written manifest, and a failed or cancelled
export leaves nothing at the final keys.

Every key is checked before anything is written: a prefix must be relative,
without ``.``/``..``/empty segments, backslashes or control characters, so an
export can never land outside the prefix the caller named, neither in the
bucket nor in a directory a downloaded manifest is mirrored to.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from viewfinder_common.errors import InvalidArgument
from viewfinder_exporter.domain.errors import PermissionDenied

# S3 limits a key to 1024 bytes of UTF-8.
MAX_KEY_BYTES = 1024
SUMMARY_NAME = "_SUCCESS"
TEMPORARY_DIR = "_temporary"
# Unicode categories refused in keys: controls (Cc), invisible format
# characters such as bidi overrides (Cf), line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}
# DNS-compatible bucket names, as S3, OSS and MinIO require.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_LOGICAL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_VERSION_NAME = re.compile(r"^v([1-9][0-9]{0,8})$")


class ManifestFormat(StrEnum):
    """File format of a manifest; the value is the file extension."""

    JSONL = "jsonl"
    CSV = "csv"

    @property
    def content_type(self) -> str:
        """The Content-Type the manifest object is stored with."""
        return "application/x-ndjson" if self is ManifestFormat.JSONL else "text/csv"


@dataclass(frozen=True)
class ManifestLocation:
    """A checked manifest destination: bucket, normalised prefix and format."""

    storage_connection: str
    bucket: str
    prefix: str
    format: ManifestFormat

    @property
    def manifest_key(self) -> str:
        """Final key of the manifest."""
        return f"{self.prefix}/manifest.{self.format.value}"

    @property
    def summary_key(self) -> str:
        """Key of the summary object, written after the manifest is in place."""
        return f"{self.prefix}/{SUMMARY_NAME}"

    def temporary_key(self, job_id: str) -> str:
        """Key the manifest of one job is uploaded to before it is copied to its final key."""
        return f"{self.prefix}/{TEMPORARY_DIR}/{job_id}.{self.format.value}"

    def uri(self, key: str) -> str:
        """The s3:// URI of a key in this bucket."""
        return f"s3://{self.bucket}/{key}"


def check_key_prefix(prefix: str) -> str:
    """The prefix without a trailing '/'; INVALID_ARGUMENT when it could escape or is unreadable."""
    for position, char in enumerate(prefix):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidArgument(
                f"prefix contains a control character (U+{ord(char):04X}) at position {position}"
            )
    if prefix.startswith("/"):
        raise InvalidArgument("prefix must be relative, not start with '/'")
    if "\\" in prefix:
        raise InvalidArgument("prefix must not contain '\\'")
    normalised = prefix.removesuffix("/")
    if not normalised:
        raise InvalidArgument("prefix is required (e.g. 'exports/cars-2025-06')")
    for segment in normalised.split("/"):
        if segment in {"", ".", ".."}:
            raise InvalidArgument(
                f"prefix {prefix!r} has an empty, '.' or '..' segment; give a plain relative path"
            )
    # The longest key written under it is the temporary manifest key.
    longest = f"{normalised}/{TEMPORARY_DIR}/00000000-0000-0000-0000-000000000000.jsonl"
    if len(longest.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(f"prefix is too long: keys under it would exceed {MAX_KEY_BYTES} bytes")
    return normalised


def manifest_location(
    *,
    storage_connection: str,
    bucket: str,
    prefix: str,
    format: ManifestFormat,
    allowed_connections: frozenset[str],
    allowed_buckets: tuple[str, ...],
) -> ManifestLocation:
    """Checks a manifest target: INVALID_ARGUMENT for a malformed one, PERMISSION_DENIED for a disallowed one.

    ``allowed_buckets`` holds bucket names or shell-style patterns
    (``exports-*``); an empty tuple allows no bucket at all.
    """
    normalised = check_key_prefix(prefix)
    if not _BUCKET_NAME.match(bucket):
        raise InvalidArgument(f"bucket {bucket!r} is not a valid bucket name")
    connection = storage_connection or "default"
    if connection not in allowed_connections:
        raise PermissionDenied(
            f"storage connection {connection!r} is not an allowed export target "
            f"(allowed: {', '.join(sorted(allowed_connections))})"
        )
    if not any(fnmatch.fnmatchcase(bucket, pattern) for pattern in allowed_buckets):
        raise PermissionDenied(
            f"bucket {bucket!r} is not an allowed export target; "
            "the exporter's VIEWFINDER_EXPORTER_ALLOWED_BUCKETS setting lists the buckets it may write"
        )
    return ManifestLocation(connection, bucket, normalised, format)


def check_logical_dataset_name(name: str) -> str:
    """The name when it is valid (lowercase letters, digits, '.', '_', '-'; at most 128)."""
    if not _LOGICAL_NAME.match(name):
        raise InvalidArgument(
            f"logical dataset name {name!r} must be 1 to 128 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def parse_version_name(version: str) -> int | None:
    """The number of a version name ("v2" → 2); None for "latest" or empty."""
    if version in {"", "latest"}:
        return None
    match = _VERSION_NAME.match(version)
    if match is None:
        raise InvalidArgument(f"version {version!r} must look like 'v2' or be 'latest'")
    return int(match[1])
