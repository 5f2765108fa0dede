"""Image bytes made by the tests: good images of every mode, and the bad-input corpus."""

import io
import struct
import zlib

from PIL import Image


def encode(img: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def photo(w=320, h=240, seed=0) -> bytes:
    """A JPEG with content (a gradient that depends on `seed`), so sizes and hashes differ."""
    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    img = Image.merge("RGB", [img.getchannel(0).point(lambda v: (v + seed * 37) % 256),
                              img.getchannel(1), img.getchannel(2).point(lambda v: 255 - v)])
    return encode(img)


def png_bomb(w=30000, h=30000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (the data is never decoded)."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


HTML = b"<!DOCTYPE html><html><body>Not found</body></html>"


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected reject reason)."""
    good = photo()
    return {
        "zero.jpg": (b"", "empty_file"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "text.jpg": (b"just some text, not an image\n" * 4, "not_an_image"),
        "page.jpg": (HTML, "html"),
        "bomb.png": (png_bomb(), "too_many_pixels"),
        "sliver.jpg": (encode(Image.new("RGB", (2000, 20))), "bad_aspect_ratio"),
        "tiny.jpg": (encode(Image.new("RGB", (4, 4))), "too_small"),
    }
