"""Loading arrays and tensors from files without unpickling anything, and saying which file
was refused: a pickle (or anything not what it should be) is a FileFormatError (exit 2)."""
import pickle
import zipfile

import numpy as np

from dcpipe.errors import FileFormatError


def load_npy(path, name=None):
    """np.load(path) of a .npy or .npz (a context manager then), refusing pickled objects;
    `name` is the file to name when `path` is its bytes already read."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise FileFormatError(f"{name or path}: refused: not a plain array file ({exc})") from exc


def load_tensors(path, map_location="cpu"):
    """torch.load(path, weights_only=True), its refusal of a pickle naming the file."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise FileFormatError(f"{path}: refused: it holds pickled objects, not only tensors "
                              "(dcpipe never unpickles a file)") from exc
    except (EOFError, RuntimeError) as exc:
        raise FileFormatError(f"{path}: not a torch tensor file ({exc})") from exc
