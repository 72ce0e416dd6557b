"""Page tokens of the list RPCs: an opaque, URL-safe form of the keyset where the next page starts.

The keyset values only ever reach SQL as bound parameters, so a token edited
by hand can at worst point at another page of data the caller may read
anyway; it is still refused with INVALID_ARGUMENT when it does not decode.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from viewfinder_common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """The page size of a list request: 0 means the default, otherwise 1 to 1000."""
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= requested <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {requested}")
    return requested


def encode_page_token(kind: str, keyset: list[Any]) -> str:
    """The token of a keyset; ``kind`` keeps tokens of different lists apart."""
    payload = json.dumps({"k": kind, "s": keyset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def decode_page_token(kind: str, token: str) -> list[Any] | None:
    """The keyset of a token (None for the empty token); INVALID_ARGUMENT when it is not one of ``kind``."""
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidArgument("page_token is malformed; start again without it") from None
    if not isinstance(body, dict) or body.get("k") != kind or not isinstance(body.get("s"), list):
        raise InvalidArgument("page_token does not belong to this list; start again without it")
    keyset: list[Any] = body["s"]
    return keyset
