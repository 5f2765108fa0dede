"""What `[train] method` changes besides the training loop: the one place the methods'
settings live.

The settings dataclasses hold DeepCluster's (the paper's) values. A method's changes are layered
over them and below the workspace file's own values, so a user who writes only
`method = "deepcluster-v2"` gets the whole method, and can still override any of it. A workspace
that names no method gets DEFAULT_METHOD. defaults.toml leaves the keys a method changes
commented out, so that changing the method line of a file `dcpipe init` wrote is enough.
"""

DEEPCLUSTER_V2 = {  # BRIEF section 9 / SwAV's main_deepclusterv2.py, at CPU scale
    "model": {"sobel": False,  # RGB with colour distortion instead of the fixed Sobel
              "projection": 128,  # Linear(d, 2048)-BN-ReLU-Linear(2048, 128), L2-normalised
              "width": 32,  # 4 crops an image: 2.3-2.4x the img/s of width 64 (docs/benchmarks.md)
              "dropout": 0.0},  # SwAV's backbones have none: k-NN +0.05 (docs/benchmarks.md)
    "cluster": {"pca_dim": 0,  # spherical k-means on the normalised projections, no whitening
                "heads": 3, "niter": 10, "k": 300},
    "train": {"lr_schedule": "cosine", "warmup_rounds": 1.0, "weight_decay": 1e-6,
              "lr": 0.3,  # SwAV's 4.8 at batch 4,096, scaled to 256 (no LARC here)
              "batch_size": 0,  # 256 from 10,240 images a round up, smaller below, lr with it
              # vs SwAV's 1/1000 over 3 paired seeds: probes ahead, clustering level on average
              "lr_floor": 0.3,  # (docs/benchmarks.md)
              "crop_min": 0.14},  # the full-size crops' smallest area share, as SwAV's
}

METHOD_CHANGES = {"deepcluster": {}, "deepcluster-v2": DEEPCLUSTER_V2}
DEFAULT_METHOD = "deepcluster-v2"  # measured: docs/benchmarks.md, learning quality


def method_keys() -> set[tuple[str, str]]:
    """(section, key) of every setting some method changes."""
    return {(section, key) for changes in METHOD_CHANGES.values()
            for section, values in changes.items() for key in values}
