"""Page tokens: round trip, and every kind of tampering is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from viewfinder_common.errors import InvalidArgument
from viewfinder_search.domain.page_token import PageCursor, PageTokenCodec, request_fingerprint

CODEC = PageTokenCodec(b"k" * 32)
FINGERPRINT = request_fingerprint(b"request")


@pytest.mark.parametrize(
    "cursor",
    [
        PageCursor(
            FINGERPRINT, last_modified=datetime(2025, 3, 1, 12, 30, 0, 123456, tzinfo=UTC), file_id="f-1"
        ),
        PageCursor(FINGERPRINT, last_modified=None, file_id="f-2"),
        PageCursor(FINGERPRINT, offset=200),
    ],
)
def test_round_trip(cursor: PageCursor) -> None:
    token = CODEC.encode(cursor)
    assert CODEC.decode(token, request_fingerprint=FINGERPRINT) == cursor


def test_token_from_another_key_is_refused() -> None:
    token = PageTokenCodec(b"z" * 32).encode(PageCursor(FINGERPRINT, offset=5))
    with pytest.raises(InvalidArgument, match="malformed or was altered"):
        CODEC.decode(token, request_fingerprint=FINGERPRINT)


def test_every_single_character_change_is_refused() -> None:
    token = CODEC.encode(PageCursor(FINGERPRINT, offset=5))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for position, char in enumerate(token):
        if char == ".":
            continue
        replacement = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        forged = token[:position] + replacement + token[position + 1 :]
        with pytest.raises(InvalidArgument):
            CODEC.decode(forged, request_fingerprint=FINGERPRINT)


def test_token_of_another_request_is_refused() -> None:
    token = CODEC.encode(PageCursor(FINGERPRINT, offset=5))
    with pytest.raises(InvalidArgument, match="different request"):
        CODEC.decode(token, request_fingerprint=request_fingerprint(b"other request"))


@pytest.mark.parametrize("garbage", ["", ".", "abc", "a.b.c", "!!!.???", "e30.AAAA"])
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(InvalidArgument, match="malformed or was altered"):
        CODEC.decode(garbage, request_fingerprint=FINGERPRINT)


def test_short_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PageTokenCodec(b"short")
