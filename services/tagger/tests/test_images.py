"""Image preparation: small images pass untouched, big ones are downscaled, broken ones refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from viewfinder_tagger.domain.images import UnreadableImage, prepare_image


def _encoded(size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 30, 30) if mode == "RGB" else (200, 30, 30, 128)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_small_png_is_sent_as_is() -> None:
    data = _encoded((40, 30), "PNG")
    prepared = prepare_image(data, max_side=1024, max_bytes=1_000_000)
    assert prepared.data == data
    assert (prepared.mime_type, prepared.width, prepared.height, prepared.resized) == (
        "image/png",
        40,
        30,
        False,
    )


def test_big_image_is_downscaled_to_a_jpeg_within_the_limits() -> None:
    data = _encoded((3000, 1500), "PNG")
    prepared = prepare_image(data, max_side=512, max_bytes=1_000_000)
    assert prepared.resized
    assert prepared.mime_type == "image/jpeg"
    assert (prepared.width, prepared.height) == (512, 256)
    with Image.open(io.BytesIO(prepared.data)) as image:
        assert image.format == "JPEG"
        assert image.size == (512, 256)


def test_transparent_and_uncommon_formats_are_converted() -> None:
    prepared = prepare_image(_encoded((50, 50), "PNG", mode="RGBA"), max_side=1024, max_bytes=1_000_000)
    assert prepared.mime_type == "image/png"  # PNG with alpha is readable by VLMs: untouched
    prepared = prepare_image(_encoded((50, 50), "BMP"), max_side=1024, max_bytes=1_000_000)
    assert prepared.mime_type == "image/jpeg"
    assert prepared.resized


def test_broken_image_is_refused_with_a_reason() -> None:
    with pytest.raises(UnreadableImage, match="not a decodable image"):
        prepare_image(b"not an image at all", max_side=1024, max_bytes=1_000_000)
    truncated = _encoded((300, 300), "PNG")[:200]
    with pytest.raises(UnreadableImage):
        prepare_image(truncated, max_side=64, max_bytes=1_000_000)
