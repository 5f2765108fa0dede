"""The image formats the shard stage must decode, and a check that the installed PIL can.

A pillow-simd built from source without a codec's headers silently lacks that codec, and then
every image of its format is rejected (`not_an_image`). `make setup` runs this check
(`python -m dcpipe.stages.shard.decoders` exits 1 naming what is missing) and so does the test
suite. AVIF is decoded where the installed PIL has it (OPTIONAL): Pillow's wheels do; pillow-simd
needs libavif 1.0 or later, which Debian 12 does not have.
"""

import sys
from importlib import metadata

import PIL
from PIL import features

NEEDED = {"jpg": "JPEG", "zlib": "PNG", "webp": "WebP", "libtiff": "TIFF (compressed)",
          "jpg_2000": "JPEG 2000"}  # PIL feature -> the format it decodes
OPTIONAL = {"avif": "AVIF"}


def missing() -> list[str]:
    """Formats of NEEDED the installed PIL cannot decode."""
    return [name for feature, name in NEEDED.items() if not features.check(feature)]


def pil_distribution() -> str:
    """Which package installed PIL, with its version: pillow-simd or Pillow."""
    for name in ("pillow-simd", "pillow"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return f"PIL {PIL.__version__}"


def main() -> int:
    lacking = missing()
    if lacking:
        print(f"{pil_distribution()} cannot decode {', '.join(lacking)}: the shard stage would "
              "reject every such image. Reinstall it as docs/shard.md (Image formats) says.",
              file=sys.stderr)
        return 1
    optional = [name for feature, name in OPTIONAL.items() if features.check(feature)]
    print(f"{pil_distribution()} decodes {', '.join([*NEEDED.values(), *optional])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
