"""The HTML report of a small workspace built by the real stages, checked as files and in
headless Chromium (Debian's `chromium`: images load, plots are drawn on the page)."""

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from dcpipe.pipeline import config as configuration
from dcpipe.pipeline import rounds
from dcpipe.pipeline.workspace import Workspace
from dcpipe.stages.evaluate import EvalSettings, evaluate
from dcpipe.pipeline.report.page import report
from support.sample_shards import make_collection

torch.set_num_threads(1)
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SECTIONS = ("Rounds", "NMI over rounds", "Training loss", "Cluster sizes", "Clusters",
            "Nearest neighbours", "First-layer filters", "Evaluation")
WINDOW = "--window-size=1200,6000"
# After the page's load event, records how many images it has, how many decoded, and where
# each one is drawn (CSS pixels = screenshot pixels at the default scale factor).
IMAGE_PROBE = """<script>window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var boxes = images.map(function (i) {
    var r = i.getBoundingClientRect();
    return [r.left, r.top, r.width, r.height].map(Math.round);
  });
  document.body.setAttribute("data-images", images.length + "/" + ok.length);
  document.body.setAttribute("data-boxes", JSON.stringify(boxes));
});</script>"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two DeepCluster rounds (extract, cluster, train) on 32 labelled synthetic images."""
    ws = Workspace.at(tmp_path_factory.mktemp("ws"))
    ws.init_config("deepcluster")  # the report of v2 rounds: tests/pipeline/test_rounds.py
    make_collection(ws.shards_dir, 2, 16, seed=1)
    small = {"workers": 0, "batch_size": 16}
    config = configuration.with_changes(ws.config(), {"cluster": {"k": 3}, "extract": small,
                                                      "train": small}, "test")
    rounds.run(ws, 2, config, progress=False, log=lambda message: None)
    kmeans_only = EvalSettings(protocols=("kmeans",), **small)
    trained = evaluate(ws.shards_dir, ws.shards_dir, settings=kmeans_only,
                       model_path=ws.round(1).model)
    baseline = evaluate(ws.shards_dir, ws.shards_dir, settings=kmeans_only)
    ws.round(1).eval_record.write_text(json.dumps({"round 1": trained, "random init": baseline}))
    return ws


@pytest.fixture(scope="module")
def page(workspace, tmp_path_factory):
    return report(workspace, tmp_path_factory.mktemp("report"), nn_pool=24, nn_queries=3)


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.headings, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        self._in_h2 = tag == "h2"
        if tag in ("img", "script", "link"):
            self.sources.append(dict(attrs).get("src") or dict(attrs).get("href"))

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def test_every_figure_is_embedded_as_a_decodable_png(page):
    parser = Images()
    parser.feed(page.read_text())
    assert parser.headings == list(SECTIONS)
    prefix = "data:image/png;base64,"
    assert parser.sources and all(src.startswith(prefix) for src in parser.sources)
    embedded = [base64.b64decode(src[len(prefix):]) for src in parser.sources]
    for png in embedded:
        Image.open(io.BytesIO(png)).verify()
    files = sorted(page.parent.glob("*.png"))
    assert sorted(p.read_bytes() for p in files) == sorted(embedded)
    assert {p.name for p in files} >= {"nmi.png", "loss.png", "cluster_sizes.png",
                                       "clusters.png", "neighbours_0.png", "filters_1.png"}


def test_page_shows_rounds_and_both_eval_columns(page):
    text = page.read_text()
    assert "round 1" in text and "random init" in text and "ACC (Hungarian)" in text
    assert 'class="note"' not in text  # nothing is missing from this workspace


def _chromium(*args, tmp_path):
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_chromium_loads_every_image_and_draws_the_plots(page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    dom = _chromium("--dump-dom", WINDOW, probe.as_uri(), tmp_path=tmp_path).stdout
    count = len(list(page.parent.glob("*.png")))
    assert f'data-images="{count}/{count}"' in dom
    boxes = json.loads(html.unescape(re.search(r'data-boxes="([^"]*)"', dom).group(1)))
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", WINDOW, probe.as_uri(), tmp_path=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert len(boxes) == count
    for left, top, width, height in boxes:
        assert width > 100 and height > 100 and top + height <= pixels.shape[0]
        drawn = pixels[top:top + height, left:left + width]
        assert (drawn < 128).mean() > 0.01  # axes, text, images: not a blank box


def test_missing_parts_are_explained(tmp_path):
    empty = report(Workspace(tmp_path / "empty"), tmp_path / "out_empty")
    assert "No rounds in this workspace yet" in empty.read_text()
    ws = tmp_path / "ws"
    (ws / "rounds" / "0000").mkdir(parents=True)
    (ws / "rounds" / "0000" / "clusters.json").write_text(json.dumps(
        {"k": 4, "n_samples": 10, "nmi_true": None, "nmi_prev": None}))
    text = report(Workspace(ws), tmp_path / "out").read_text()
    for note in ("carry no true labels", "needs two clustered rounds", "No round has been "
                 "trained yet", "No round has labels yet", "No trained model yet",
                 "No eval.json"):
        assert note in text
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["nmi.png"]
