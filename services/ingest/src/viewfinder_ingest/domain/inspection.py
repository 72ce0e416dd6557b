"""Header-only image inspection: format, size, mode and frames from the first bytes.

The format is decided from the bytes (magic numbers), never from the key's
extension. Pillow opens images lazily, so only the header is parsed; pixel
data is decoded only when the whole object was read anyway and is small, to
catch truncated files. Everything here is CPU work: callers run it in an
executor, off the event loop.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from viewfinder_ingest.domain.models import FileStatus, ImageInfo

# Formats the catalogue accepts, as Pillow names them.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

# The pixel count is checked against the configured limit below, so Pillow's
# own warning would only repeat it (in every worker thread, into the logs).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Damaged EXIF blocks are common and harmless for a header read.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)
# Formats whose frame count needs more than the header (Pillow walks the file).
_FRAMES_NEED_WHOLE_FILE = frozenset({"GIF", "TIFF", "WEBP"})
# Pillow reports failures of damaged data with many exception types.
_READ_ERRORS = (UnidentifiedImageError, SyntaxError, OSError, ValueError, EOFError, struct.error, IndexError)


@dataclass(frozen=True, slots=True)
class NeedMoreBytes:
    """The header lies beyond the bytes read; read more (up to the limit) and retry."""

    reason: str


@dataclass(frozen=True, slots=True)
class InspectionLimits:
    """Limits of one inspection (from the service settings)."""

    max_image_pixels: int = 89_478_485
    verify_max_pixels: int = 4_000_000


def sniff_format(head: bytes) -> str | None:
    """The supported format named by the first bytes, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith(b"BM") and len(head) >= 18 and _plausible_bmp(head):
        return "BMP"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _plausible_bmp(head: bytes) -> bool:
    # "BM" alone is too common a start for text; the DIB header size must be one BMP defines.
    (dib_size,) = struct.unpack_from("<I", head, 14)
    return dib_size in {12, 16, 40, 52, 56, 64, 108, 124}


def inspect_image(  # noqa: PLR0911 - one early return per outcome reads best
    data: bytes, object_size: int, limits: InspectionLimits | None = None
) -> ImageInfo | NeedMoreBytes:
    """Inspects the first bytes (``data``) of an object of ``object_size`` bytes.

    Returns the file's status with its image fields, or ``NeedMoreBytes`` when
    the header may lie beyond ``data`` (only while ``data`` is not the whole
    object).
    """
    limits = limits or InspectionLimits()
    if object_size == 0 or not data:
        return ImageInfo(FileStatus.CORRUPT, error="zero-byte object")
    whole = len(data) >= object_size
    sniffed = sniff_format(data)
    if sniffed is None:
        return _unsupported(data)
    if sniffed == "WEBP" and not whole:
        # Pillow's WEBP reader needs the whole file; the RIFF header alone has the canvas.
        return _webp_header(data, limits) or NeedMoreBytes("WEBP header is incomplete")
    try:
        image = Image.open(io.BytesIO(data), formats=[sniffed])
    except Image.DecompressionBombError as exc:
        return ImageInfo(FileStatus.CORRUPT, format=sniffed, error=f"decompression bomb: {exc}")
    except _READ_ERRORS as exc:
        if not whole:
            return NeedMoreBytes(f"{sniffed} header not complete in {len(data)} bytes")
        return ImageInfo(
            FileStatus.CORRUPT, format=sniffed, error=f"unreadable {sniffed} image: {_text(exc)}"
        )
    with image:
        return _describe(image, sniffed, whole, limits)


def _describe(image: Image.Image, fmt: str, whole: bool, limits: InspectionLimits) -> ImageInfo:
    width, height = image.size
    if width <= 0 or height <= 0:
        return ImageInfo(
            FileStatus.CORRUPT, format=fmt, error=f"{fmt} header declares a {width}x{height} image"
        )
    pixels = width * height
    if pixels > limits.max_image_pixels:
        return ImageInfo(
            FileStatus.CORRUPT,
            format=fmt,
            width=width,
            height=height,
            mode=image.mode,
            error=(
                f"decompression bomb: {width}x{height} = {pixels} pixels exceeds the limit of "
                f"{limits.max_image_pixels}"
            ),
        )
    frames = 1
    if fmt in _FRAMES_NEED_WHOLE_FILE and not whole:
        frames = 0  # unknown without reading the whole file
    else:
        try:
            frames = int(getattr(image, "n_frames", 1))
        except _READ_ERRORS as exc:
            return _damaged(fmt, width, height, image.mode, exc)
    if whole and pixels <= limits.verify_max_pixels:
        try:
            image.load()
        except _READ_ERRORS as exc:
            return _damaged(fmt, width, height, image.mode, exc)
    return ImageInfo(
        FileStatus.ACTIVE, format=fmt, width=width, height=height, frames=frames, mode=image.mode
    )


def _damaged(fmt: str, width: int, height: int, mode: str, exc: BaseException) -> ImageInfo:
    return ImageInfo(
        FileStatus.CORRUPT,
        format=fmt,
        width=width,
        height=height,
        mode=mode,
        error=f"truncated or damaged {fmt} data: {_text(exc)}",
    )


def _unsupported(data: bytes) -> ImageInfo:
    """An object that is not one of the supported formats; names what it is when Pillow knows."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            other = image.format or "unknown"
    except Image.DecompressionBombError:
        other = "an oversized image"
    except _READ_ERRORS:
        return ImageInfo(
            FileStatus.UNSUPPORTED,
            error=f"not an image of a supported format ({', '.join(SUPPORTED_FORMATS)})",
        )
    return ImageInfo(
        FileStatus.UNSUPPORTED,
        format=other if other != "an oversized image" else None,
        error=f"{other} is not a supported image format ({', '.join(SUPPORTED_FORMATS)})",
    )


def _webp_header(data: bytes, limits: InspectionLimits) -> ImageInfo | None:  # noqa: PLR0911 - one return per chunk kind
    """Canvas size and mode from a WEBP's first chunk (VP8X, VP8 or VP8L); None if incomplete."""
    if len(data) < 30:
        return None
    chunk = data[12:16]
    alpha = False
    animated = False
    if chunk == b"VP8X":
        flags = data[20]
        alpha, animated = bool(flags & 0x10), bool(flags & 0x02)
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return ImageInfo(FileStatus.CORRUPT, format="WEBP", error="WEBP VP8 frame header is damaged")
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
    elif chunk == b"VP8L":
        if data[20] != 0x2F:
            return ImageInfo(FileStatus.CORRUPT, format="WEBP", error="WEBP VP8L header is damaged")
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        alpha = bool((bits >> 28) & 1)
    else:
        return ImageInfo(FileStatus.CORRUPT, format="WEBP", error=f"unknown WEBP chunk {chunk!r}")
    if width <= 0 or height <= 0:
        return ImageInfo(FileStatus.CORRUPT, format="WEBP", error=f"WEBP declares a {width}x{height} image")
    if width * height > limits.max_image_pixels:
        return ImageInfo(
            FileStatus.CORRUPT,
            format="WEBP",
            width=width,
            height=height,
            error=(
                f"decompression bomb: {width}x{height} = {width * height} pixels exceeds the limit of "
                f"{limits.max_image_pixels}"
            ),
        )
    return ImageInfo(
        FileStatus.ACTIVE,
        format="WEBP",
        width=width,
        height=height,
        frames=0 if animated else 1,
        mode="RGBA" if alpha or animated else "RGB",
    )


def _text(exc: BaseException) -> str:
    """An exception as a short reason (Pillow messages may include an object repr)."""
    message = str(exc) or type(exc).__name__
    if "<_io.BytesIO" in message:
        message = message.split(" <_io.BytesIO", 1)[0]
    return message[:300]
