"""Getting an image into the size a model needs before it is sent.

VLMs bill and limit by image size (Qwen-VL: one token per 28x28 patch, base64
data URLs up to a few MB), and they resize internally anyway, so a 6000 px
photo is downscaled here, once, instead of being shipped whole. Small images
in a format every model reads go out untouched. CPU-bound: call it in an
executor.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Formats OpenAI-compatible VLM endpoints accept as data URLs.
_PASS_THROUGH = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_JPEG_QUALITY = 90


class UnreadableImage(ValueError):
    """The object's bytes are not an image Pillow can decode; the text says why."""


@dataclass(frozen=True)
class PreparedImage:
    """Bytes ready to send, their MIME type, and the size they decode to."""

    data: bytes
    mime_type: str
    width: int
    height: int
    resized: bool


def prepare_image(data: bytes, *, max_side: int, max_bytes: int) -> PreparedImage:
    """``data`` as is when small and widely readable; else its first frame as a JPEG within the limits."""
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning becomes an error: such files are not labeled.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                mime = _PASS_THROUGH.get(image.format or "")
                frames = getattr(image, "n_frames", 1)
                if mime and frames == 1 and max(width, height) <= max_side and len(data) <= max_bytes:
                    return PreparedImage(data, mime, width, height, resized=False)
                return _reencode(image, max_side=max_side, max_bytes=max_bytes)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"not a decodable image: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImage(f"the image is damaged: {exc}") from exc


def _reencode(image: Image.Image, *, max_side: int, max_bytes: int) -> PreparedImage:
    image.seek(0)
    if image.format == "JPEG":
        # Decode at a reduced scale straight away: much cheaper for big photos.
        image.draft("RGB", (max_side, max_side))
    frame = image.convert("RGBA") if image.mode in {"RGBA", "LA", "P", "PA"} else image.convert("RGB")
    if frame.mode == "RGBA":
        background = Image.new("RGB", frame.size, (255, 255, 255))
        background.paste(frame, mask=frame.getchannel("A"))
        frame = background
    side = max_side
    while True:
        scaled = frame.copy()
        scaled.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        scaled.save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
        encoded = buffer.getvalue()
        if len(encoded) <= max_bytes or side <= 64:
            return PreparedImage(encoded, "image/jpeg", scaled.width, scaled.height, resized=True)
        side = int(side * 0.75)
