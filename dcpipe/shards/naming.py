"""Names inside a collection: fixed-width shard names and dot-free sample keys.

WebDataset groups tar members by the part of the name before the first dot, so a key must
never contain one; keys also become file names, so they must never contain a path separator.
"""

import re

SHARD_DIGITS = 6
ROW_DIGITS = 6
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_KEY_LEN = 128


def shard_name(index: int) -> str:
    """`12` -> `"000012"`; the tar is `<name>.tar`."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"{index:0{SHARD_DIGITS}d}"


def is_shard_name(name: str) -> bool:
    """Whether `name` (a tar's stem) is one `shard_name` gives."""
    return len(name) >= SHARD_DIGITS and name.isascii() and name.isdigit()


def make_key(shard: int, row_in_shard: int) -> str:
    """The default key: shard index then row within the shard, like img2dataset's."""
    if not 0 <= row_in_shard < 10**ROW_DIGITS:
        raise ValueError(f"row in shard out of range: {row_in_shard}")
    return f"{shard_name(shard)}{row_in_shard:0{ROW_DIGITS}d}"


def sanitize_key(raw: str) -> str:
    """A user-supplied key made safe: only [A-Za-z0-9_-], at most MAX_KEY_LEN characters.

    Dots, slashes and anything else become '_', so `../../etc/passwd` cannot escape the shard
    and `a.b` cannot split into two WebDataset samples.
    """
    key = _UNSAFE.sub("_", str(raw).strip())[:MAX_KEY_LEN]
    if not key.strip("_"):
        raise ValueError(f"key {raw!r} has no usable characters")
    return key


def is_valid_key(key: str) -> bool:
    return bool(key) and len(key) <= MAX_KEY_LEN and not _UNSAFE.search(key)
