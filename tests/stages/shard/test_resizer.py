import hashlib
import io
import time

import pytest
from support.imagefiles import bad_inputs, encode, photo
from PIL import Image

from dcpipe.stages.shard.resizer import ImageRejected, Limits, process_image


def _decoded(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    return img


def test_resizes_shorter_side_and_never_upscales():
    data = photo(640, 480)
    out = process_image(data, Limits(image_size=256))
    assert (out.width, out.height) == (341, 256) == _decoded(out.jpeg).size
    assert (out.original_width, out.original_height, out.original_format) == (640, 480, "JPEG")
    assert out.sha256 == hashlib.sha256(data).hexdigest()
    small = process_image(photo(100, 60))
    assert (small.width, small.height) == (100, 60)


GREY = (128, 128, 128)
WHITE = (255, 255, 255)


def _palette(transparent: bool) -> Image.Image:
    img = Image.new("RGB", (300, 200), GREY).convert("P", palette=Image.Palette.ADAPTIVE)
    if transparent:
        img.info["transparency"] = img.getpixel((0, 0))
    return img


@pytest.mark.parametrize("make,fmt,pixel", [
    (lambda: Image.new("L", (300, 200), 128), "PNG", GREY),
    (lambda: _palette(False), "PNG", GREY),
    (lambda: _palette(True), "PNG", WHITE),
    (lambda: Image.new("I;16", (300, 200), 32896), "PNG", GREY),  # scaled, not clipped
    (lambda: Image.new("RGBA", (300, 200), (0, 0, 0, 0)), "PNG", WHITE),  # alpha on white
    (lambda: Image.new("LA", (300, 200), (0, 0)), "PNG", WHITE),
    (lambda: Image.new("CMYK", (300, 200), (0, 0, 0, 0)), "JPEG", WHITE),
    (lambda: Image.new("1", (300, 200), 1), "PNG", WHITE),
], ids=["L", "P", "P-transparent", "I16", "RGBA", "LA", "CMYK", "1"])
def test_modes_become_rgb(make, fmt, pixel):
    got = _decoded(process_image(encode(make(), fmt)).jpeg).getpixel((50, 50))
    assert all(abs(a - b) <= 2 for a, b in zip(got, pixel)), got


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (400, 300), (200, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    out = process_image(encode(img, exif=exif.tobytes()), Limits(image_size=150))
    assert (out.width, out.height) == (150, 200)
    assert (out.original_width, out.original_height) == (400, 300)


def test_jpeg_draft_is_faster_than_full_decode():
    big = photo(3000, 2000)
    start = time.perf_counter()
    out = process_image(big, Limits(image_size=64))
    assert (out.width, out.height) == (96, 64)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("name", sorted(bad_inputs()))
def test_bad_inputs_are_rejected_with_reason(name):
    data, reason = bad_inputs()[name]
    start = time.perf_counter()
    with pytest.raises(ImageRejected) as info:
        process_image(data)
    assert info.value.reason == reason
    assert time.perf_counter() - start < 1.0  # a bomb is refused from its header
