"""Every image format the web serves becomes a sample, from a folder and over HTTP, and the
installed PIL (pillow-simd or Pillow, as `make setup` chose) has the codecs for them."""

import io
import subprocess
import sys

import pytest
from PIL import Image, features
from support.imagefiles import encode
from support.imageserver import ImageServer
from support.settings import with_settings
from support.shard_data import write_csv

from dcpipe.shards.reader import iter_shard
from dcpipe.stages.shard import ShardSettings
from dcpipe.stages.shard import shard as shard_stage
from dcpipe.stages.shard import decoders

shard = with_settings(shard_stage, ShardSettings)
RED, BLUE, WHITE = (220, 30, 30), (30, 30, 220), (255, 255, 255)
SIZE = (96, 64)


def _halves(mode="RGB") -> Image.Image:
    """Left half red, right half blue: a decoder that gets colours or geometry wrong shows."""
    img = Image.new("RGB", SIZE, RED)
    img.paste(BLUE, (SIZE[0] // 2, 0, *SIZE))
    return img.convert(mode)


def _red_and_clear() -> Image.Image:
    """Left half red, right half fully transparent: it must come out white."""
    img = _halves("RGBA")
    img.paste((0, 0, 0, 0), (SIZE[0] // 2, 0, *SIZE))
    return img


def _without(feature: str, why: str):
    return pytest.mark.skipif(not features.check(feature), reason=why)


NO_AVIF = ("this PIL has no AVIF codec (pillow-simd needs libavif >= 1.0 headers, which "
           "Debian 12 lacks; Pillow's wheels have it)")
NO_HEIF = "Pillow has no HEIF decoder (the pillow-heif plugin is not a dependency of dcpipe)"
# name -> (file bytes, PIL's format name, expected left and right colour)
FORMATS = [
    pytest.param("webp", lambda: encode(_halves(), "WEBP", quality=90), "WEBP", (RED, BLUE)),
    pytest.param("webp", lambda: encode(_red_and_clear(), "WEBP", lossless=True), "WEBP",
                 (RED, WHITE), id="webp-lossless-alpha"),
    pytest.param("tif", lambda: encode(_halves(), "TIFF", compression="tiff_adobe_deflate"),
                 "TIFF", (RED, BLUE), id="tiff-deflate"),
    pytest.param("tif", lambda: encode(_halves(), "TIFF", compression="jpeg"), "TIFF",
                 (RED, BLUE), id="tiff-jpeg"),
    pytest.param("jp2", lambda: encode(_halves(), "JPEG2000"), "JPEG2000", (RED, BLUE)),
    pytest.param("j2k", lambda: encode(_halves(), "JPEG2000", no_jp2=True), "JPEG2000",
                 (RED, BLUE), id="j2k-codestream"),
    pytest.param("avif", lambda: encode(_halves(), "AVIF", quality=90), "AVIF", (RED, BLUE),
                 marks=_without("avif", NO_AVIF)),
    pytest.param("heic", lambda: encode(_halves(), "HEIF", quality=90), "HEIF", (RED, BLUE),
                 marks=pytest.mark.skipif(".heic" not in Image.registered_extensions(),
                                          reason=NO_HEIF)),
]


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def test_the_installed_pil_decodes_every_format_the_shard_stage_needs():
    assert decoders.missing() == []
    assert all(features.check(feature) for feature in ("jpg", "zlib", "webp", "libtiff",
                                                       "jpg_2000"))
    check = subprocess.run([sys.executable, "-m", "dcpipe.stages.shard.decoders"],
                           capture_output=True, text=True)
    assert check.returncode == 0 and "WebP" in check.stdout, check.stderr


def _close(pixel, colour, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


@pytest.mark.parametrize("ext, make, pil_format, colours", FORMATS)
def test_each_web_format_becomes_a_sample_from_a_folder_and_a_url(
        server, tmp_path, ext, make, pil_format, colours):
    data = make()
    (tmp_path / "photos" / "cls").mkdir(parents=True)
    (tmp_path / "photos" / "cls" / f"image.{ext}").write_bytes(data)
    server.files[f"{tmp_path.name}.{ext}"] = data
    src = write_csv(tmp_path / "list.csv", [{"url": server.url(f"f/{tmp_path.name}.{ext}")}])
    for source, out in ((tmp_path / "photos", "from-folder"), (src, "from-url")):
        stats = shard(source, tmp_path / out, workers=1, progress=False, retries=0)
        assert (stats["written"], stats["rejects"]) == (1, {}), stats
        [sample] = list(iter_shard(tmp_path / out / "000000.tar"))
        assert sample.meta["original_format"] == pil_format
        jpeg = Image.open(io.BytesIO(sample.image))
        assert (jpeg.format, jpeg.mode, jpeg.size) == ("JPEG", "RGB", SIZE)
        left, right = jpeg.getpixel((10, 32)), jpeg.getpixel((SIZE[0] - 10, 32))
        assert _close(left, colours[0]) and _close(right, colours[1]), (left, right)
