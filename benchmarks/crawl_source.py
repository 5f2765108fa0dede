"""A YFCC100M-format metadata file (25 tab-separated fields, no header) whose download URLs
point at `crawl_server.py`, in the proportions of a real crawl of old photo URLs.

The kind of each row is drawn from MIX with a seeded generator, so the same (rows, seed,
ports) always gives the same file, and the server answers each URL the same way every time:
runs of the benchmark on the same file can be compared byte for byte.
"""

import random
from pathlib import Path

# kind -> share of rows. About a third of the URLs are dead (404, host gone, 500), as in a
# crawl of photo URLs that are years old; the rest are photos, some behind a redirect, and
# what a crawl also meets: HTML pages, text, cut-off JPEGs, servers that never answer, videos.
MIX = {
    "photo": 0.595,      # /p/   -> a sample
    "redirect": 0.04,    # /r/   -> 302 -> a sample
    "gone": 0.25,        # /g/   -> http_404
    "dead_host": 0.03,   # a port nobody listens on -> connection_error (retried)
    "error": 0.01,       # /e/   -> http_500 (retried)
    "html": 0.03,        # /h/   -> html
    "text": 0.01,        # /x/   -> not_an_image
    "truncated": 0.02,   # /t/   -> truncated
    "stall": 0.005,      # /s/   -> timeout (retried)
    "video": 0.01,       # marker 1 -> video (never fetched)
}
EXPECTED_REJECT = {"gone": "http_404", "dead_host": "connection_error", "error": "http_500",
                   "html": "html", "text": "not_an_image", "truncated": "truncated",
                   "stall": "timeout", "video": "video"}
_ROUTE = {"photo": "p", "redirect": "r", "gone": "g", "error": "e", "html": "h", "text": "x",
          "truncated": "t", "stall": "s", "video": "p"}
# The fields around the URL: a real record's shape (URL-encoded text, tags, geo, licence).
_HEAD = ("{photo_hash}\t39089491@N00\tgnuckx\t2012-02-16+09%3A56%3A37.0\t1331840483\t"
         "Canon+PowerShot+ELPH+310+HS\tIMG_{row}\tMy+caf%C3%A9+%26+tea\tcanon,caf%C3%A9+noir,"
         "powershot\t\t-0.1278\t51.5074\t16\thttp://www.flickr.com/photos/39089491@N00/{row}/")
_TAIL = ("Attribution-NonCommercial+License\thttp://creativecommons.org/licenses/by-nc/2.0/\t"
         "7205\t8\tdf7747990d\t692d7e0a7f\tjpg")


HEALTHY = {"photo": 1.0}  # a web where every URL answers at once: the cost of the threads


def row_kinds(rows: int, seed: int, mix: dict):
    rng = random.Random(seed)
    kinds, weights = list(mix), list(mix.values())
    for _ in range(rows):
        yield rng.choices(kinds, weights)[0]


def _url(kind: str, row: int, n_photos: int, port: int, dead_port: int) -> str:
    if kind == "dead_host":
        return f"http://127.0.0.1:{dead_port}/p/{row}.jpg"
    return f"http://127.0.0.1:{port}/{_ROUTE[kind]}/{row * 7919 % n_photos}/{row}.jpg"


def yfcc_line(row: int, kind: str, url: str) -> str:
    head = _HEAD.format(photo_hash=f"{row * 2654435761 % 2**32:08x}", row=row)
    marker = "1" if kind == "video" else "0"
    return f"{row}\t{10**9 + row}\t{head}\t{url}\t{_TAIL}\t{marker}\n"


def write_source(path: Path, rows: int, seed: int, n_photos: int, port: int,
                 dead_port: int, mix: dict = MIX) -> dict:
    """Write the file; return {kind: rows}."""
    counts = dict.fromkeys(mix, 0)
    with open(path, "w") as f:
        for row, kind in enumerate(row_kinds(rows, seed, mix)):
            counts[kind] += 1
            f.write(yfcc_line(row, kind, _url(kind, row, n_photos, port, dead_port)))
    return counts
