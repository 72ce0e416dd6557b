"""Decoding an encoded image into the model's input pixels, with bounded cost.

Runs in a worker process of the decode pool (never on the event loop). Every
outcome is a value: a :class:`DecodedImage` or a :class:`DecodeFailure` with a
reason a user can act on, so one bad file never stops a batch.

Cost is bounded before the pixels are decoded: the header's pixel count is
checked against a limit (after JPEG's DCT scaling, which ``draft`` applies for
free), large images are shrunk with ``reduce``-style box filtering before any
mode conversion, and only the first frame of an animation is read.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

# How an image that is not square becomes the model's square input.
# "pad": keep the whole picture, pad the short side with white (what clip art
# and product shots need: nothing is cut off); "crop": centre crop;
# "squash": stretch to square.
FitMode = Literal["pad", "crop", "squash"]

WHITE = (255, 255, 255)
# Modes with an alpha channel (or palette transparency) are composited on white.
_ALPHA_MODES = frozenset({"RGBA", "LA"})
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


@dataclass(frozen=True)
class DecodedImage:
    """Pixels ready for a model: ``size`` x ``size`` x 3, uint8 RGB."""

    pixels: npt.NDArray[np.uint8]
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class DecodeFailure:
    """Why an image could not be decoded, in words a user can act on."""

    reason: str


DecodeResult = DecodedImage | DecodeFailure


def decode_image(
    data: bytes,
    *,
    size: int,
    max_pixels: int,
    fit: FitMode = "pad",
) -> DecodeResult:
    """Decodes ``data`` into a ``size`` x ``size`` RGB array, or says why it cannot.

    ``max_pixels`` bounds the pixels actually decoded (JPEG counts after DCT
    scaling), so a decompression bomb or a 600-megapixel poster costs nothing
    but a header read.
    """
    if not data:
        return DecodeFailure("the object is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit replaces Pillow's global bomb check (a process-wide setting).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _decode(data, size=size, max_pixels=max_pixels, fit=fit)
    except Image.DecompressionBombError as exc:
        return DecodeFailure(f"image refused as a decompression bomb: {exc}")
    except UnidentifiedImageError:
        return DecodeFailure("not an image format Pillow can read")
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports truncated or corrupt data with these.
        return DecodeFailure(f"corrupt or truncated image data: {type(exc).__name__}: {exc}")
    except MemoryError:
        return DecodeFailure("not enough memory to decode the image")


def _decode(data: bytes, *, size: int, max_pixels: int, fit: FitMode) -> DecodeResult:
    # Disable Pillow's own limit only for this open: ours (max_pixels) is applied below.
    saved_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        opened = Image.open(io.BytesIO(data))
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    with opened:
        image: Image.Image = opened
        fmt = image.format or "unknown"
        width, height = image.size
        if width <= 0 or height <= 0:
            return DecodeFailure(f"image has no pixels ({width}x{height})")
        # Animated formats open on frame 0; be explicit for formats that remember a position.
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        if fmt == "JPEG":
            # DCT scaling: decode at 1/2, 1/4 or 1/8 directly, never below what the
            # fit needs (the scaling is itself a good low-pass filter, so little is lost).
            image.draft("RGB", _draft_request(width, height, size, fit))
        decoded_pixels = image.size[0] * image.size[1]
        if decoded_pixels > max_pixels:
            return DecodeFailure(
                f"image is {width}x{height} ({width * height:,} pixels); decoding it needs "
                f"{decoded_pixels:,} pixels, more than the limit of {max_pixels:,}"
            )
        image.load()
        # After load(): for PNG, reading EXIF loads the pixels itself and would
        # swallow a decoding error that the next load() then no longer reports.
        orientation = _exif_orientation(image)
        image = _to_rgb(image, size)
        if orientation in _ORIENTATION_TRANSPOSE:
            # Applied on the shrunk image: rotating the full-size one would double the memory.
            image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
        return DecodedImage(pixels=_fit_square(image, size, fit), format=fmt, width=width, height=height)


def _to_rgb(image: Image.Image, size: int) -> Image.Image:
    """Shrinks first (cheap box filter), then converts any mode to RGB on white."""
    mode = image.mode
    if mode in _HIGH_BIT_MODES:
        image = _high_bit_to_l(image)
    elif mode in {"P", "PA"}:
        # Palette images cannot be resampled; expand them, with alpha if transparent.
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode not in {"RGB", "RGBA", "L", "LA"}:
        # CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, LAB, HSV, premultiplied alpha ...
        image = image.convert("RGBA" if mode in {"RGBa", "La"} else "RGB")
    _shrink(image, size)
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _draft_request(width: int, height: int, size: int, fit: FitMode) -> tuple[int, int]:
    """The smallest decoded size ``fit`` can use: "pad" needs the long side at ``size``, the others both sides."""
    if fit != "pad":
        return (size, size)
    scale = size / max(width, height)
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except (ValueError, TypeError, OSError):  # a broken EXIF block must not fail the image
        return 1


def _shrink(image: Image.Image, size: int) -> None:
    """In place: box-reduce by an integer factor, then resample to at most 2x the target.

    ``reducing_gap`` makes ``thumbnail`` use ``Image.reduce`` first, which is
    what keeps a 100-megapixel PNG at tens of milliseconds after decoding.
    """
    limit = size * 2
    if image.size[0] > limit or image.size[1] > limit:
        image.thumbnail((limit, limit), Image.Resampling.BILINEAR, reducing_gap=2.0)


def _high_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit and float grey images to 8-bit by their value range (keeps contrast)."""
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
    else:
        low, high = 0.0, 65535.0 if values.max() > 255 else 255.0
    scale = 255.0 / (high - low) if high > low else 0.0
    eight_bit = np.clip((values - low) * scale, 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit, mode="L")


def _fit_square(image: Image.Image, size: int, fit: FitMode) -> npt.NDArray[np.uint8]:
    width, height = image.size
    if fit == "squash" or width == height:
        square = image.resize((size, size), Image.Resampling.BICUBIC)
    elif fit == "crop":
        square = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    else:
        scale = size / max(width, height)
        inner = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = image.resize(inner, Image.Resampling.BICUBIC)
        square = Image.new("RGB", (size, size), WHITE)
        square.paste(resized, ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return np.asarray(square, dtype=np.uint8)
