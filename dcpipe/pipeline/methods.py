"""What `[train] method` changes besides the training loop: the one place the non-default
method's settings live.

The settings dataclasses hold the defaults of the default method. Choosing the other method in
dcpipe.toml layers its changes below the file's own values, so a user who writes only
`method = "deepcluster-v2"` gets the whole method, and can still override any of it.
"""

DEEPCLUSTER_V2 = {  # BRIEF section 9 / SwAV's main_deepclusterv2.py, at CPU scale
    "model": {"sobel": False,  # RGB with colour distortion instead of the fixed Sobel
              "projection": 128,  # Linear(d, 2048)-BN-ReLU-Linear(2048, 128), L2-normalised
              "width": 32},  # 8 crops an image: the narrower net trains 2.5x the img/s here
    "cluster": {"pca_dim": 0,  # spherical k-means on the normalised projections, no whitening
                "heads": 3, "niter": 10, "k": 300},
    "train": {"lr_schedule": "cosine", "warmup_rounds": 1.0, "weight_decay": 1e-6,
              "lr": 0.3,  # SwAV's 4.8 at batch 4,096, scaled to 256 (no LARC here)
              "reassign": 1.0},
}

METHOD_CHANGES = {"deepcluster": {}, "deepcluster-v2": DEEPCLUSTER_V2}
