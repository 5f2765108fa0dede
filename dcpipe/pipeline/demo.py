"""The default dataset: scikit-learn's handwritten digits (1,797 real, labelled 8x8 images).

They are written as an ImageNet-style folder (`root/<digit>/<n>.png`) upsampled to 32 px, the
small model's input size, so the demo exercises the same path as any user's image folder.
The class folders give NMI against true labels something to mean; training never sees them.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dcpipe.pipeline import config as configuration

DEMO_SIZE = 32
# Settings for 1,797 tiny images, each measured against the defaults on this demo (README):
# small shards so that several exist; over-clustering (k = 30 > 10 digits); PCA to 32 dims, since
# whitening 256 dims of a 1,797-sample covariance gives noise directions the weight of real ones
# (NMI of the random network's clusters 0.50 -> 0.70); a narrower net and two epochs of small
# batches per round, so that each round really trains (with the defaults a round is 7 steps);
# crops of at least half the image and no flips, since a mirrored or tiny part of a digit is
# another digit or none (NMI then rises over rounds instead of wandering).
# The demo shows the paper's method (DeepCluster, Sobel), whose settings these are; digits are
# grey and change meaning when flipped, which v2's colour distortion and flips would ignore.
DEMO_METHOD = "deepcluster"
DEMO_SETTINGS = {"shard": {"shard_size": 500}, "model": {"width": 32},
                 "cluster": {"k": 30, "pca_dim": 32},
                 "train": {"batch_size": 64, "reassign": 2.0, "crop_min": 0.5, "flip": False}}


def write_digits(root) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(root)
    for n, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        grey = (pixels * (255 / 16)).astype(np.uint8)
        Image.fromarray(grey).resize((DEMO_SIZE, DEMO_SIZE), Image.BICUBIC).save(folder / f"{n:04d}.png")
    return len(digits.images)


def prepare_demo(ws) -> Path:
    """Write the digits folder and a demo config into the workspace unless already there."""
    src = ws.root / "digits"
    if not src.exists():
        tmp = ws.root / ".digits.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        write_digits(tmp)
        tmp.rename(src)
    if not ws.config_path.exists():
        settings = configuration.with_changes(configuration.default_config(DEMO_METHOD),
                                              DEMO_SETTINGS, "demo")
        ws.config_path.write_text(configuration.dumps(settings))
    return src
