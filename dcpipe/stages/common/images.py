"""Decoding one image from shard bytes, defensively (shared by the stages that read shards)."""
from __future__ import annotations

import io
import warnings

from PIL import Image

MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's own bomb threshold (~89 Mpx)
MAX_ASPECT = 20  # a resize of the short side would blow the long one up


class BadImage(ValueError):
    """An image that cannot be used; the message is the reason recorded for its row."""


def open_rgb(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decoded RGB image. Size and aspect are checked from the header, before decoding.

    `draft_size` lets JPEG decode at a reduced scale whose short side stays >= draft_size.
    """
    try:
        with warnings.catch_warnings():  # Pillow warns past MAX_PIXELS; we reject just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise BadImage(f"image too large: {width}x{height} pixels")
        if max(width, height) > MAX_ASPECT * min(width, height):
            raise BadImage(f"absurd aspect ratio: {width}x{height}")
        if draft_size:
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    except BadImage:
        raise
    except Exception as exc:  # Pillow raises many types for bad data; all mean the same here
        raise BadImage(f"undecodable image: {exc.__class__.__name__}: {exc}") from exc
