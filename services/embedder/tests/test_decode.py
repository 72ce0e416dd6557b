"""Decoding: every mode Pillow reads becomes bounded RGB pixels, every failure a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from viewfinder_embedder.domain.decode import DecodedImage, DecodeFailure, decode_image

SIZE = 32
LIMIT = 10_000_000


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decoded(data: bytes, **kwargs: object) -> DecodedImage:
    result = decode_image(data, size=SIZE, max_pixels=kwargs.pop("max_pixels", LIMIT), **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, DecodedImage), result
    assert result.pixels.shape == (SIZE, SIZE, 3)
    assert result.pixels.dtype == np.uint8
    return result


def test_transparent_png_is_composited_on_white() -> None:
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    image.paste((0, 0, 255, 255), (10, 10, 30, 30))  # opaque blue square
    pixels = decoded(encode(image, "PNG")).pixels
    assert tuple(pixels[1, 1]) == (255, 255, 255)  # transparent → white, not red or black
    centre = pixels[SIZE // 2, SIZE // 2]
    assert centre[2] > 200
    assert centre[0] < 50


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (5, 5, 15, 15))
    pixels = decoded(encode(image, "PNG", transparency=0)).pixels
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert pixels[SIZE // 2, SIZE // 2][1] > 200


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # red in CMYK
    pixels = decoded(encode(image, "JPEG")).pixels
    red, green, blue = (int(v) for v in pixels[SIZE // 2, SIZE // 2])
    assert red > 200
    assert green < 60
    assert blue < 60


def test_sixteen_bit_grey_png_keeps_its_contrast() -> None:
    values = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
    image = Image.fromarray(values)  # uint16 → mode I;16
    pixels = decoded(encode(image, "PNG"), fit="squash").pixels
    assert pixels[:, 0].mean() < 30
    assert pixels[:, -1].mean() > 220


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((0, 255, 0), (255, 0, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    pixels = decoded(data).pixels
    assert pixels[SIZE // 2, SIZE // 2][1] > 200  # green, the first frame


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (80, 40), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 40, 40))  # black left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    pixels = decoded(encode(image, "JPEG", exif=exif), fit="squash").pixels
    assert pixels[2, SIZE // 2].mean() < 60  # the black half is now on top
    assert pixels[-3, SIZE // 2].mean() > 200


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    image = Image.new("RGB", (4000, 3000), (10, 200, 10))
    # 12 megapixels, but DCT scaling decodes it at 1/8: under a 1-megapixel limit.
    result = decoded(encode(image, "JPEG", quality=70), max_pixels=1_000_000)
    assert (result.width, result.height) == (4000, 3000)


def test_pixel_limit_refuses_a_big_png_before_decoding() -> None:
    image = Image.new("L", (2000, 2000), 0)
    result = decode_image(encode(image, "PNG"), size=SIZE, max_pixels=1_000_000)
    assert isinstance(result, DecodeFailure)
    assert "4,000,000 pixels" in result.reason
    assert "limit of 1,000,000" in result.reason


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image format"),
        (encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:80], "corrupt or truncated"),
    ],
)
def test_bad_bytes_are_failures_with_reasons(data: bytes, fragment: str) -> None:
    result = decode_image(data, size=SIZE, max_pixels=LIMIT)
    assert isinstance(result, DecodeFailure)
    assert fragment in result.reason


def test_pad_keeps_the_whole_picture_and_crop_cuts_it() -> None:
    image = Image.new("RGB", (100, 20), (0, 0, 0))
    padded = decoded(encode(image, "PNG"), fit="pad").pixels
    cropped = decoded(encode(image, "PNG"), fit="crop").pixels
    assert tuple(padded[0, SIZE // 2]) == (255, 255, 255)  # white bars above and below
    assert padded[SIZE // 2, 0].max() < 10  # the picture spans the full width
    assert cropped.max() < 10  # a centre crop of a black picture is all black


def test_png_with_a_valid_header_and_broken_pixel_data_is_a_failure() -> None:
    valid = encode(Image.new("RGBA", (96, 96), (5, 6, 7, 255)), "PNG")
    result = decode_image(valid[:60] + b"\x00garbage" * 50, size=SIZE, max_pixels=LIMIT)
    assert isinstance(result, DecodeFailure)
    assert "corrupt or truncated" in result.reason
