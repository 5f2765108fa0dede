"""The HTML report of a small workspace built by the real stages, checked as files and in
headless Chromium (Debian's `chromium`: images load, plots are drawn on the page)."""

import base64
import html
import io
import json
import math
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
from dcpipe.pipeline.report.data import read_rounds
from dcpipe.pipeline.report.page import loss_curves, report
from dcpipe.shards.reader import iter_shard, list_shards
from dcpipe.stages.common.labels import load_labels
from support.cli import dcpipe
from support.tiny_shards import add_shard
from support.sample_shards import make_collection

torch.set_num_threads(1)
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SECTIONS = ("Rounds", "Stage timings", "Collection", "NMI over rounds", "Training loss",
            "Cluster sizes", "Clusters", "Cluster composition", "Nearest neighbours",
            "First-layer filters", "Evaluation")
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
  var headings = Array.from(document.querySelectorAll("h2")).map(function (h) {
    var text = document.createRange();
    text.selectNodeContents(h);
    var r = text.getBoundingClientRect();  // the heading's text, not its full-width block
    return [h.textContent, Math.round(r.left), Math.round(r.top), Math.round(r.width),
            Math.round(r.height)];
  });
  document.body.setAttribute("data-headings", JSON.stringify(headings));
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


def test_page_shows_rounds_and_both_eval_columns_with_the_gain(page):
    text = page.read_text()
    assert "round 1" in text and "random init" in text and "ACC (Hungarian)" in text
    assert 'class="note"' not in text  # nothing is missing from this workspace
    header = re.search(r"<tr><th>protocol</th><th>measure</th>(.*?)</tr>", text).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == ["round 1", "random init", "gain"]
    row = re.search(r"<tr><td>kmeans</td><td>NMI \(.*?\)</td>(.*?)</tr>", text).group(1)
    trained, random, gain = (float(v) for v in re.findall(r"<td>(.*?)</td>", row))
    assert gain == pytest.approx(trained - random, abs=0.0011)


def test_the_page_counts_the_clusters_classes_and_times_the_steps(workspace, page):
    text = page.read_text()
    pairs = []  # (cluster, true class) of every sample, read independently of the report
    for shard in list_shards(workspace.shards_dir):
        cluster_of = dict(zip(*load_labels(workspace.round(1).labels, shard.name)))
        pairs += [(cluster_of[x.key], x.meta["label"]) for x in iter_shard(shard.path)]
    header = re.search(r"<tr><th>cluster</th><th>images</th>(.*?)<th>purity</th>", text)
    classes = re.findall(r"<th>(.*?)</th>", header.group(1))
    assert sorted(classes) == sorted({name for _, name in pairs})
    for c in range(3):  # each cluster's row: its count of each class
        expected = [pairs.count((c, name)) for name in classes]
        row = re.search(rf"<tr><td>{c}</td><td>{sum(expected)}</td>((?:<td>\d+</td>)+)", text)
        assert [int(v) for v in re.findall(r"\d+", row.group(1))] == expected
    assert "chance baselines" in text and "train images/s" in text


def test_the_loss_plot_draws_ln_k_over_every_trained_round(workspace):
    series, (xs, ys) = loss_curves(read_rounds(workspace))
    total = sum(json.loads(workspace.round(r).train_record.read_text())["steps"] for r in (0, 1))
    assert list(series) == ["round 0", "round 1"]
    assert ys == [math.log(3), math.log(3), None] * 2 and xs[0] == 0 and xs[-1] == total


def test_rejects_by_reason_are_listed(tmp_path):
    add_shard(tmp_path / "ws" / "shards", 0, n=3)
    text = report(Workspace(tmp_path / "ws"), tmp_path / "out").read_text()
    assert "<tr><td>1</td><td>4</td><td>3</td><td>1</td></tr>" in text  # shards rows samples rejected
    assert "<tr><td>http_404</td><td>1</td></tr>" in text


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
    headings = json.loads(html.unescape(re.search(r'data-headings="([^"]*)"', dom).group(1)))
    assert [h[0] for h in headings] == list(SECTIONS)
    for _, left, top, width, height in headings:  # every section's title is on the screenshot
        assert width > 30 and 10 < height and top + height <= pixels.shape[0]
        assert (pixels[top:top + height, left:left + width] < 128).mean() > 0.05
    assert (pixels < 250).mean() > 0.1  # the page as a whole is not blank


def test_missing_parts_are_explained(tmp_path):
    empty = report(Workspace(tmp_path / "empty"), tmp_path / "out_empty")
    assert "No rounds in this workspace yet" in empty.read_text()
    assert "No shards yet" in empty.read_text()
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


def test_dcpipe_report_shows_progress_unless_quiet(tmp_path):
    add_shard(tmp_path / "shards", 0, n=3)
    loud = dcpipe(tmp_path, "report")
    assert loud.returncode == 0 and "report: 100%" in loud.stderr
    assert loud.stdout.strip() == f"wrote {tmp_path / 'report' / 'index.html'}"
    quiet = dcpipe(tmp_path, "-q", "report")
    assert quiet.returncode == 0 and (quiet.stdout, quiet.stderr) == ("", "")
