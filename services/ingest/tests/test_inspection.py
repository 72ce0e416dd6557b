"""Header-only inspection: the format comes from the bytes, every bad object gets a reason."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from viewfinder_ingest.domain.inspection import (
    InspectionLimits,
    NeedMoreBytes,
    inspect_image,
    sniff_format,
)
from viewfinder_ingest.domain.models import FileStatus, ImageInfo


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_every_supported_format_is_read_from_its_bytes(fmt: str, images: Any) -> None:
    data = images.encode(fmt, size=(24, 16))
    info = inspect_image(data, len(data))
    assert isinstance(info, ImageInfo)
    assert info.status is FileStatus.ACTIVE
    assert (info.format, info.width, info.height, info.frames) == (fmt, 24, 16, 1)
    assert info.mode in {"RGB", "P", "RGBA"}


def test_format_ignores_the_extension_and_mode_is_reported(images: Any) -> None:
    data = images.encode("PNG", size=(5, 7), mode="L")
    assert sniff_format(data) == "PNG"
    info = inspect_image(data, len(data))
    assert isinstance(info, ImageInfo)
    assert (info.format, info.mode, info.width, info.height) == ("PNG", "L", 5, 7)


def test_animated_gif_counts_frames_when_read_whole(images: Any) -> None:
    data = images.animated_gif(frames=4)
    info = inspect_image(data, len(data))
    assert isinstance(info, ImageInfo)
    assert (info.status, info.format, info.frames) == (FileStatus.ACTIVE, "GIF", 4)


def test_zero_byte_object_is_corrupt() -> None:
    info = inspect_image(b"", 0)
    assert info == ImageInfo(FileStatus.CORRUPT, error="zero-byte object")


def test_text_is_unsupported_with_a_reason() -> None:
    info = inspect_image(b"hello, this is a text file\n", 27)
    assert isinstance(info, ImageInfo)
    assert info.status is FileStatus.UNSUPPORTED
    assert "not an image of a supported format" in (info.error or "")


def test_an_image_format_pillow_knows_but_we_do_not_support_is_named() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "ICO")
    data = buffer.getvalue()
    info = inspect_image(data, len(data))
    assert isinstance(info, ImageInfo)
    assert info.status is FileStatus.UNSUPPORTED
    assert info.error is not None
    assert info.error.startswith("ICO is not a supported image format")


def test_truncated_png_read_whole_is_corrupt(images: Any) -> None:
    data = images.encode("PNG", size=(64, 64), seed=3)
    truncated = data[: len(data) // 2]
    info = inspect_image(truncated, len(truncated))
    assert isinstance(info, ImageInfo)
    assert info.status is FileStatus.CORRUPT
    assert "truncated" in (info.error or "")


def test_truncated_jpeg_header_is_corrupt(images: Any) -> None:
    data = images.encode("JPEG", size=(64, 64))[:40]
    info = inspect_image(data, len(data))
    assert isinstance(info, ImageInfo)
    assert info.status is FileStatus.CORRUPT
    assert info.format == "JPEG"


def test_decompression_bomb_is_corrupt_with_the_pixel_count(images: Any) -> None:
    data = images.png_bomb(50_000, 50_000)
    info = inspect_image(data, len(data))
    assert isinstance(info, ImageInfo)
    assert info.status is FileStatus.CORRUPT
    assert (info.error or "").startswith("decompression bomb")


def test_configured_pixel_limit_applies_below_pillows_own(images: Any) -> None:
    data = images.encode("PNG", size=(100, 100))
    info = inspect_image(data, len(data), InspectionLimits(max_image_pixels=9_999))
    assert isinstance(info, ImageInfo)
    assert info.status is FileStatus.CORRUPT
    assert "100x100 = 10000 pixels exceeds the limit of 9999" in (info.error or "")


def test_partial_read_of_a_large_jpeg_asks_for_more_bytes(images: Any) -> None:
    # An EXIF-like APP1 block pushes the frame header past the first bytes.
    jpeg = images.encode("JPEG", size=(32, 32))
    padding = b"\xff\xe1" + (20_000).to_bytes(2, "big") + b"\x00" * 19_998
    data = jpeg[:2] + padding + jpeg[2:]
    assert isinstance(inspect_image(data[:4096], len(data)), NeedMoreBytes)
    info = inspect_image(data, len(data))
    assert isinstance(info, ImageInfo)
    assert (info.status, info.width) == (FileStatus.ACTIVE, 32)


def test_partial_png_header_is_enough(images: Any) -> None:
    data = images.encode("PNG", size=(300, 200), seed=5)
    info = inspect_image(data[:64], len(data))
    assert isinstance(info, ImageInfo)
    assert (info.status, info.width, info.height, info.frames) == (FileStatus.ACTIVE, 300, 200, 1)


@pytest.mark.parametrize(("lossless", "mode"), [(False, "RGB"), (True, "RGBA")])
def test_partial_webp_reads_the_canvas_from_the_riff_header(lossless: bool, mode: str) -> None:
    buffer = io.BytesIO()
    Image.new(mode, (123, 45), color=(1, 2, 3, 4)[: len(mode)]).save(buffer, "WEBP", lossless=lossless)
    data = buffer.getvalue()
    info = inspect_image(data[:40], len(data) + 1000)
    assert isinstance(info, ImageInfo)
    assert (info.status, info.format, info.width, info.height) == (FileStatus.ACTIVE, "WEBP", 123, 45)


def test_partial_gif_reports_frames_as_unknown(images: Any) -> None:
    data = images.animated_gif(frames=3)
    info = inspect_image(data[: len(data) // 2], len(data) * 10)
    assert isinstance(info, ImageInfo)
    assert (info.status, info.frames) == (FileStatus.ACTIVE, 0)
