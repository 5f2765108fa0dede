"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

DPI = 100
CAPTION_PT = 10  # at DPI 100 and the page's width: about 13 px tall in the browser


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _gaps(ys) -> np.ndarray:
    return np.array([np.nan if y is None else y for y in ys], dtype=float)


def curves_plot(series: dict, *, title: str, ylabel: str, xlabel: str = "round",
                references: dict | None = None) -> bytes:
    """Lines over rounds: {name: (xs, ys)}; None values are gaps. `references` (same form) are
    drawn dashed in grey, e.g. a baseline the curves should be compared with."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, (xs, ys) in series.items():
        ax.plot(xs, _gaps(ys), marker="o", label=name)
    for name, (xs, ys) in (references or {}).items():
        ax.plot(xs, _gaps(ys), linestyle="--", color="0.4", label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if xlabel == "round":
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def sizes_plot(sizes_by_round: dict) -> bytes:
    """Cluster sizes sorted in decreasing order, log scale, one line per round."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for r, sizes in sizes_by_round.items():
        ordered = np.sort(sizes)[::-1]
        ax.plot(np.arange(1, len(ordered) + 1), np.maximum(ordered, 0.5), label=f"round {r}")
    ax.set_yscale("log")
    ax.set(title="Cluster sizes, sorted", xlabel="cluster rank", ylabel="images (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _png(fig)


def image_rows_plot(rows: list, *, title: str) -> bytes:
    """rows: [(row title, [(uint8 image, caption or None), ...]), ...] as a grid of images."""
    cols = max((len(images) for _, images in rows), default=1)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.4 * cols + 2.2, 1.7 * len(rows)),
                             squeeze=False)
    for r, (row_title, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                image, caption = images[c]
                ax.imshow(image, interpolation="nearest")
                if caption:
                    ax.set_xlabel(caption[:14], fontsize=CAPTION_PT)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(row_title, fontsize=CAPTION_PT, rotation=0, ha="right",
                              va="center")
    fig.suptitle(title)
    return _png(fig)


def filters_plot(filters: np.ndarray, *, title: str, max_filters: int = 96) -> bytes:
    """Filters (n, h, w, c) in [0, 1]: grey for c = 1, colour for c = 3."""
    filters = filters[:max_filters]
    cols = min(16, len(filters))
    rows = -(-len(filters) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.55 * cols, 0.55 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(filters):
            f = filters[i]
            ax.imshow(f[..., 0] if f.shape[-1] == 1 else f, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
    fig.suptitle(title, fontsize=12)
    return _png(fig)
