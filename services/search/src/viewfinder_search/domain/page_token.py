"""Opaque, tamper-checked page tokens.

A token is ``base64url(JSON cursor) . base64url(HMAC-SHA256)``. The cursor
holds where the previous page ended (keyset: last-modified time and file id
of its last row, or an offset into a vector result) and a fingerprint of the
request it belongs to, so a token replayed with a different request, or
edited by hand, is INVALID_ARGUMENT instead of a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime

from viewfinder_common.errors import InvalidArgument

_VERSION = 1
_MAC_BYTES = 16


@dataclass(frozen=True)
class PageCursor:
    """Where the next page starts.

    For filter results the keyset of the last row returned
    (``last_modified`` may be None: files without a time sort after every
    timed file); for vector results an offset into the ranked hits.
    """

    request_fingerprint: str
    last_modified: datetime | None = None
    file_id: str | None = None
    offset: int | None = None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokenCodec:
    """Encodes and checks page tokens with a secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the page token key needs at least 16 bytes")
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, cursor: PageCursor) -> str:
        """The opaque token for ``cursor``."""
        body: dict[str, object] = {"v": _VERSION, "r": cursor.request_fingerprint}
        if cursor.offset is not None:
            body["o"] = cursor.offset
        else:
            body["m"] = cursor.last_modified.isoformat() if cursor.last_modified else None
            body["i"] = cursor.file_id
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64encode(payload)}.{_b64encode(self._mac(payload))}"

    def decode(self, token: str, *, request_fingerprint: str) -> PageCursor:
        """The cursor in ``token``; INVALID_ARGUMENT if it was altered or belongs to another request."""
        invalid = InvalidArgument("page_token is malformed or was altered; start again without it")
        try:
            payload_text, mac_text = token.split(".")
            payload, mac = _b64decode(payload_text), _b64decode(mac_text)
        except (ValueError, binascii.Error):
            raise invalid from None
        # Only the canonical spelling is accepted: base64's spare low bits would
        # otherwise give one token several valid spellings.
        canonical = _b64encode(payload) == payload_text and _b64encode(mac) == mac_text
        if not canonical or not hmac.compare_digest(mac, self._mac(payload)):
            raise invalid
        try:
            body = json.loads(payload)
            if body["v"] != _VERSION:
                raise invalid
            if body["r"] != request_fingerprint:
                raise InvalidArgument(
                    "page_token belongs to a different request; repeat the request that returned it "
                    "(only page_size and page_token may change)"
                )
            if "o" in body:
                return PageCursor(request_fingerprint, offset=int(body["o"]))
            modified = datetime.fromisoformat(body["m"]) if body["m"] is not None else None
            return PageCursor(request_fingerprint, last_modified=modified, file_id=str(body["i"]))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError):
            raise invalid from None


def request_fingerprint(serialized_request: bytes) -> str:
    """A short digest of a request (serialized without page_token and page_size)."""
    return hashlib.sha256(serialized_request).hexdigest()[:32]
