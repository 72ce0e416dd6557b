"""Validation of DatasetService requests: names, buckets, prefixes, ids, pages, update masks.

Every check raises ``InvalidArgument`` with the field name and what a valid
value looks like, so a caller can fix the request without reading the code.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Iterable
from typing import Any

from viewfinder_common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PREFIX_BYTES = 1024

# The same rule as the datasets.name CHECK constraint (migration 0002).
_DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# S3 bucket naming rules (also what OSS and MinIO accept).
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")

# UpdateDataset: the fields a mask may name (dataset.proto).
UPDATABLE_FIELDS = ("description", "labeling", "indexing")
_SUBFIELDS = {
    "labeling": ("automatic", "tag_definition_id", "tag_definition_version", "model_connection"),
    "indexing": ("model_connection", "vector_store_connection", "active_index"),
}


def validate_dataset_name(name: str) -> str:
    """A dataset name: lower-case letters, digits, '.', '_', '-'; 1-128 chars; starts alphanumeric."""
    if not _DATASET_NAME.match(name):
        raise InvalidArgument(
            f"name {name!r} is invalid: use 1-128 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_bucket(bucket: str) -> str:
    """A bucket name by the S3 rules: 3-63 chars of lower-case letters, digits, '.', '-'."""
    if not bucket:
        raise InvalidArgument("bucket is required")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket or _IP_ADDRESS.match(bucket):
        raise InvalidArgument(
            f"bucket {bucket!r} is not a valid bucket name: use 3-63 lower-case letters, digits, "
            "'.' or '-', starting and ending with a letter or digit"
        )
    return bucket


def validate_prefix(prefix: str) -> str:
    """A key prefix: empty (whole bucket) or a key start without a leading '/'."""
    if prefix.startswith("/"):
        raise InvalidArgument(f"prefix {prefix!r} must not start with '/': object keys do not")
    if len(prefix.encode()) > MAX_PREFIX_BYTES:
        raise InvalidArgument(f"prefix is longer than {MAX_PREFIX_BYTES} bytes, the longest key S3 allows")
    if any(ord(ch) < 32 for ch in prefix):
        raise InvalidArgument("prefix must not contain control characters")
    return prefix


def validate_id(value: str, field: str) -> str:
    """A server-assigned id (a UUID); the canonical lower-case form."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{field} {value!r} is not a valid id") from None


def page_size(requested: int, field: str = "page_size") -> int:
    """0 means the default (100); 1-1000 as asked; anything else is INVALID_ARGUMENT."""
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument(f"{field} must be between 1 and {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE})")
    return requested


def encode_page_token(position: dict[str, Any]) -> str:
    """An opaque page token for the position after the last item of a page."""
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode()


def decode_page_token(token: str, expected_keys: Iterable[str]) -> dict[str, Any] | None:
    """The position a page token stands for; None for the first page."""
    if not token:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not a token this service issued") from None
    if not isinstance(position, dict) or any(key not in position for key in expected_keys):
        raise InvalidArgument("page_token is not a token this service issued for this list")
    return position


def validate_update_mask(paths: Iterable[str]) -> list[str]:
    """The update mask's paths, each an updatable field or one of its sub-fields."""
    checked = []
    for path in paths:
        top, _, sub = path.partition(".")
        if top not in UPDATABLE_FIELDS or (sub and sub not in _SUBFIELDS.get(top, ())):
            allowed = ", ".join(
                [*UPDATABLE_FIELDS, *(f"{t}.{s}" for t, subs in _SUBFIELDS.items() for s in subs)]
            )
            raise InvalidArgument(f"update_mask path {path!r} cannot be updated; allowed: {allowed}")
        checked.append(path)
    if not checked:
        raise InvalidArgument("update_mask is required: name the fields to change")
    return checked


def apply_update_mask(
    paths: Iterable[str],
    current: dict[str, Any],
    requested: dict[str, Any],
) -> dict[str, Any]:
    """The updatable fields after applying ``requested`` values at the mask's paths.

    ``current`` and ``requested`` map field names to values (sub-messages as
    dicts); a path names a top-level field or one sub-field.
    """
    updated = {name: (dict(value) if isinstance(value, dict) else value) for name, value in current.items()}
    for path in paths:
        top, _, sub = path.partition(".")
        if not sub:
            updated[top] = requested.get(top, {} if top in _SUBFIELDS else "")
            continue
        section = dict(updated.get(top) or {})
        value = (requested.get(top) or {}).get(sub)
        if value is None:
            section.pop(sub, None)
        else:
            section[sub] = value
        updated[top] = section
    return updated
