"""Loading arrays and tensors from files without unpickling anything, and saying which file
was refused: a pickle (or anything not what it should be) is a FileFormatError (exit 2)."""
import pickle
import zipfile

import numpy as np

from dcpipe.errors import FileFormatError


def load_npy(path):
    """np.load(path) of a .npy or .npz (a context manager then), refusing pickled objects."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise FileFormatError(f"{path}: refused, not a plain array file ({exc})") from exc


def load_tensors(path, map_location="cpu"):
    """torch.load(path, weights_only=True), its refusal of a pickle naming the file."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(f"{path}: refused, not a plain tensor file ({first})") from exc
