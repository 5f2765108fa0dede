"""Bytes of any image -> a JPEG of bounded size, or an `ImageRejected` with a specific reason.

Order matters for hostile input: the header alone gives the size, so a decompression bomb is
refused (`too_many_pixels`) before a single pixel is decoded, and so are absurd aspect ratios
(`bad_aspect_ratio`) and tiny images (`too_small`). Then decode (JPEGs through `draft`, which
lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is that much smaller), EXIF-rotate,
convert to RGB (alpha composited on white; 16-bit greyscale scaled, not clipped), shrink so the
shorter side is at most `image_size` (never enlarged) and encode as JPEG.

Reasons: `empty_file`, `html` (a web page served in place of an image), `not_an_image`,
`too_many_pixels`, `bad_aspect_ratio`, `too_small`, `truncated`, `decode_error`.
"""

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dcpipe.stages.shard.settings import ShardSettings

DEFAULT_QUALITY = 95
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIZE = 8
DEFAULT_MAX_ASPECT = 10.0
WHITE = (255, 255, 255)
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml", b"<!--")


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Limits:
    image_size: int = ShardSettings.image_size
    quality: int = DEFAULT_QUALITY
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_size: int = DEFAULT_MIN_SIZE
    max_aspect: float = DEFAULT_MAX_ASPECT


@dataclass(frozen=True)
class Processed:
    jpeg: bytes
    width: int  # of the JPEG
    height: int
    original_width: int  # of the original, as stored (before EXIF rotation)
    original_height: int
    original_format: str
    sha256: str  # of the original bytes


def _looks_like_html(data: bytes) -> bool:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(_HTML_MARKERS) or b"<html" in head


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageRejected("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("html" if _looks_like_html(data) else "not_an_image") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected("decode_error", str(exc)) from exc


def check_header(img: Image.Image, limits: Limits) -> None:
    w, h = img.size
    if w * h > limits.max_pixels:
        raise ImageRejected("too_many_pixels", f"{w}x{h}")
    if min(w, h) < limits.min_size:
        raise ImageRejected("too_small", f"{w}x{h}")
    if max(w, h) / min(w, h) > limits.max_aspect:
        raise ImageRejected("bad_aspect_ratio", f"{w}x{h}")


def target_size(w: int, h: int, image_size: int) -> tuple[int, int]:
    """Shorter side at most `image_size`, aspect kept, never enlarged."""
    short = min(w, h)
    if short <= image_size:
        return w, h
    scale = image_size / short
    return max(1, round(w * scale)), max(1, round(h * scale))


def _decode(img: Image.Image, image_size: int) -> Image.Image:
    if img.format == "JPEG":
        img.draft(img.mode if img.mode in ("RGB", "L") else None,
                  target_size(*img.size, image_size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings of odd but usable files
            img.load()
            return ImageOps.exif_transpose(img)
    except OSError as exc:
        reason = "truncated" if "truncat" in str(exc).lower() else "decode_error"
        raise ImageRejected(reason, str(exc)) from exc
    except (ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageRejected("decode_error", str(exc)) from exc


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.round(grey).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def process_image(data: bytes, limits: Limits = Limits()) -> Processed:
    img = _open(data)
    check_header(img, limits)
    original = (img.size, img.format or "unknown")
    rgb = to_rgb(_decode(img, limits.image_size))
    size = target_size(*rgb.size, limits.image_size)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=limits.quality)
    return Processed(out.getvalue(), rgb.width, rgb.height, *original[0], original[1],
                     hashlib.sha256(data).hexdigest())
