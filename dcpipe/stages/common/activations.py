"""Frozen features of a batch for evaluation: every conv layer (pooled) and the penultimate fc.

Conv activations are average-pooled to a fixed budget of dimensions before the linear probe, as
the reference's eval_linear does for AlexNet (about 9k dims a layer): each conv layer with C
channels is adaptively average-pooled to s x s, s chosen so that C s^2 is closest to the budget.
One forward pass gives the conv outputs (hooks on the conv blocks) and the penultimate feature.
"""

import math

import numpy as np
import torch
from torch import nn

PENULTIMATE = "penultimate"
# The reference's AlexNet budget; the small-image model's maps are tiny, so a smaller one.
PROBE_DIMS = {"small": 2048, "small-gap": 2048}
DEFAULT_PROBE_DIMS = 9216


def conv_blocks(model) -> list[nn.Module]:
    """The conv blocks of the model's conv stack, in order (those conv_activations reports)."""
    return [m for m in model.features if any(isinstance(c, nn.Conv2d) for c in m.modules())]


def layer_names(model) -> list[str]:
    return [f"conv{i + 1}" for i in range(len(conv_blocks(model)))] + [PENULTIMATE]


def parse_layers(model, layers) -> list[str]:
    """'all', a comma-separated string or a list of names -> validated layer names in order."""
    known = layer_names(model)
    if layers == "all":
        return known
    wanted = layers.split(",") if isinstance(layers, str) else list(layers)
    wanted = [name.strip() for name in wanted if name.strip()]
    unknown = sorted(set(wanted) - set(known))
    if unknown or not wanted:
        raise ValueError(f"unknown layers {unknown or wanted}: choose from {', '.join(known)}")
    return [name for name in known if name in wanted]


def pooled_side(channels: int, size: int, budget: int) -> int:
    return max(1, min(size, round(math.sqrt(budget / channels))))


class Tap:
    """Runs the model once a batch and returns the chosen layers' features as float32 arrays."""

    def __init__(self, model, layers, *, probe_dims: int | None = None):
        self.model = model.eval()
        self.layers = parse_layers(model, layers)
        arch = getattr(model, "config", {}).get("arch")
        self.budget = probe_dims or PROBE_DIMS.get(arch, DEFAULT_PROBE_DIMS)
        self.sides = self._pool_sides()

    def _pool_sides(self) -> dict[str, int]:
        size = self.model.config["input_size"]
        with torch.no_grad():
            maps = self.model.conv_activations(torch.zeros(1, 3, size, size))
        return {f"conv{i + 1}": pooled_side(m.shape[1], min(m.shape[2:]), self.budget)
                for i, m in enumerate(maps)}

    def dims(self) -> dict[str, int]:
        """Feature dimension of each chosen layer."""
        out = self(torch.zeros(1, 3, self.model.config["input_size"],
                               self.model.config["input_size"]))
        return {name: a.shape[1] for name, a in out.items()}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        maps = []
        wanted_convs = [n for n in self.layers if n != PENULTIMATE]
        hooks = [b.register_forward_hook(lambda _m, _i, out: maps.append(out))
                 for b in conv_blocks(self.model)] if wanted_convs else []
        try:
            embedded = self.model.embed(images)
        finally:
            for hook in hooks:
                hook.remove()
        result = {}
        for i, fmap in enumerate(maps):
            name = f"conv{i + 1}"
            if name in wanted_convs:
                pooled = nn.functional.adaptive_avg_pool2d(fmap, self.sides[name])
                result[name] = pooled.flatten(1).numpy()
        if PENULTIMATE in self.layers:
            result[PENULTIMATE] = embedded.numpy()
        return {name: result[name] for name in self.layers}
