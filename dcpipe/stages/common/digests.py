"""Torch files that carry the digest of what they hold, checked every time they are loaded.

`torch.load` reads a .pt whose tensor bytes were flipped without a word, so every torch file
dcpipe writes (model.pt, optim_body.pt, ckpt/last.pt) is a dict saved with one more key,
`sha256`: a digest of its contents (every tensor's dtype, shape and bytes, every other value's
repr, dict keys in sorted order). `load_checked` recomputes it over what it loaded (no second
read of the file) and refuses a file whose contents differ. A file written before dcpipe
recorded digests has no `sha256` and loads unverified (`dcpipe verify` says so).
"""
import hashlib
from pathlib import Path

import torch

from dcpipe.errors import FileFormatError
from dcpipe.shards.atomic import atomic_write_with
from dcpipe.stages.common.safeload import load_tensors

KEY = "sha256"


def _feed(digest, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"V{obj!r}".encode())


def content_digest(obj) -> str:
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def save_checked(path, obj: dict) -> str:
    """torch.save `obj` with its digest, atomically; returns the digest."""
    found = content_digest(obj)
    atomic_write_with(path, lambda f: torch.save({**obj, KEY: found}, f))
    return found


def load_checked(path, map_location="cpu") -> dict:
    """A dict written by `save_checked` (weights_only: no pickle), without its digest key;
    FileFormatError when what it holds no longer matches the digest."""
    blob = load_tensors(path, map_location)
    if not isinstance(blob, dict):
        raise FileFormatError(f"{path}: not a file written by dcpipe")
    recorded = blob.pop(KEY, None)
    if recorded is not None and content_digest(blob) != recorded:
        raise FileFormatError(f"{Path(path)}: its contents do not match the sha256 recorded in it "
                              "when it was written: the file is damaged; restore it, or redo "
                              "the step that wrote it")
    return blob


def verify_file(path) -> str | None:
    """What is wrong with a file written by `save_checked` (damaged, unreadable), or None."""
    try:
        load_checked(path)
    except FileFormatError as exc:
        return str(exc)
    return None
