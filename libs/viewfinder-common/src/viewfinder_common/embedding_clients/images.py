"""Image preparation shared by the embedding clients: format sniffing, data URIs, downscaling."""

from __future__ import annotations

import base64
import io

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def image_format(data: bytes) -> str:
    """The image format from its magic bytes ("png", "jpeg", "webp", …), or ValueError."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise ValueError("not a PNG, JPEG, WebP, GIF or BMP image")


def data_uri(data: bytes) -> str:
    """``data:image/<fmt>;base64,…`` for an encoded image."""
    return f"data:image/{image_format(data)};base64,{base64.b64encode(data).decode('ascii')}"


def fit_image(data: bytes, *, max_bytes: int, max_side: int) -> bytes:
    """``data`` unchanged when within both limits, else re-encoded as JPEG, downscaled until
    the longer side is at most ``max_side`` and the encoding at most ``max_bytes``.

    CPU-bound: call it in an executor.
    """
    from PIL import Image  # noqa: PLC0415 (only clients that meet a large image need Pillow)

    with Image.open(io.BytesIO(data)) as opened:
        width, height = opened.size
        if len(data) <= max_bytes and max(width, height) <= max_side:
            return data
        image = opened.convert("RGB")
    scale = min(1.0, max_side / max(width, height))
    while True:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        buffer = io.BytesIO()
        image.resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=90)
        encoded = buffer.getvalue()
        if len(encoded) <= max_bytes or max(size) <= 32:
            return encoded
        scale *= 0.75
