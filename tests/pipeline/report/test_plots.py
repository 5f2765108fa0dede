"""The report's figures are real PNGs with something drawn in them."""

import io

import numpy as np
from PIL import Image

from dcpipe.pipeline.report import plots as reportplots


def opened(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("L"))


def test_curves_with_gaps_and_log_sizes_are_drawn():
    curves = reportplots.curves_plot({"a": ([0, 1, 2], [0.1, None, 0.3])}, title="t", ylabel="y")
    sizes = reportplots.sizes_plot({0: np.array([50, 3, 0, 9]), 3: np.array([20, 20, 1, 1])})
    for pixels in (opened(curves), opened(sizes)):
        assert pixels.shape[0] > 200 and (pixels < 128).mean() > 0.01


def test_image_rows_keep_every_row_and_filters_fit_a_grid():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    grid = opened(reportplots.image_rows_plot(
        [("one", [(red, "cat")] * 3), ("two", [(red, None)])], title="rows"))
    filters = opened(reportplots.filters_plot(np.random.default_rng(0).random((40, 5, 5, 1)),
                                              title="f"))
    assert grid.shape[0] > 150 and filters.shape[1] > 300
