"""`dcpipe report`: one self-contained HTML page about a workspace's rounds, plus its PNG plots.

The page embeds every figure as a base64 data URI (it opens anywhere, offline) and the same
figures are written beside it as PNG files. Sections: rounds summary, stage timings, the
collection's rejects by reason, NMI over rounds (against true labels where the shards carry
them, and against the previous round), training loss (with ln k, the loss of a uniform guess),
cluster-size distribution, a random sample of the images of the largest and smallest clusters,
each cluster's class composition with chance baselines (where labels are known), nearest
neighbours of a few query images with the random and the trained network, first-layer
filters, and the eval results (eval.json of a round, with the gain over the random init).
A section whose data is missing says so instead.
"""

import base64
import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dcpipe.pipeline import status
from dcpipe.pipeline.report import plots as plots
from dcpipe.pipeline.report.data import (ClusterSample, chance_baselines, cluster_sizes,
                                         first_layer_filters, nearest_neighbours, purity,
                                         read_rounds, sample_clusters)
from dcpipe.pipeline.workspace import Workspace
from dcpipe.shards.atomic import atomic_write_bytes
from dcpipe.stages.common.models import load_model, random_init
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.evaluate.table import (compared_rows, format_gain, model_label,
                                         result_rows)

SUMMARY_COLUMNS = (("k", "k"), ("n_samples", "images"), ("nmi_true", "NMI vs labels"),
                   ("nmi_prev", "NMI vs previous"), ("acc_true", "ACC vs labels"),
                   ("empty_before_fix", "empty clusters fixed"))


@dataclass
class Section:
    title: str
    figures: list = field(default_factory=list)  # (file name, png bytes, caption)
    table: str | None = None  # HTML
    note: str | None = None
    side_by_side: bool = False  # figures in one row (e.g. random init | trained)


@dataclass
class Options:
    clusters_shown: int = 6  # half the largest, half the smallest
    images_per_cluster: int = 8
    nn_pool: int = 1000
    nn_queries: int = 5
    nn_k: int = 6
    max_shards: int = 32  # shards read for the cluster images and the neighbour pool
    random_seed: int = 0
    seed: int = 0
    workers: int = 0
    composition_rows: int = 40  # clusters in the composition table (the largest)
    composition_classes: int = 20  # classes in it (the most common; the rest summed)


def report(ws: Workspace, out_dir, *, rounds=None, progress: bool = False, **options) -> Path:
    """Writes out_dir/index.html and its PNGs; returns the HTML path. `options`: see Options."""
    out_dir = Path(out_dir)
    opts = Options(**options)
    records = read_rounds(ws, rounds)
    summary = status.collect(ws)
    models = compared_models(records, opts.random_seed)
    makers = [lambda: [summary_section(records)], lambda: [timings_section(summary, records)],
              lambda: [rejects_section(summary)], lambda: [nmi_section(records)],
              lambda: [loss_section(records)], lambda: [sizes_section(records)],
              lambda: clusters_sections(ws, records, opts),
              lambda: [neighbours_section(ws, models, opts)], lambda: [filters_section(models)],
              lambda: [eval_section(records)]]
    sections = [s for make in tqdm(makers, desc="report", unit="section", disable=not progress)
                for s in make()]
    written = []
    for section in sections:
        for name, png, _ in section.figures:
            written.append(out_dir / name)
            atomic_write_bytes(written[-1], png)
    page = out_dir / "index.html"
    atomic_write_bytes(page, render_page(ws, records, sections).encode())
    for path in [*written, page]:
        path.chmod(0o644)  # temp files are private; a report is meant to be shared or served
    return page


def _table(header: list, rows: list) -> str:
    cells = lambda tag, row: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', header)}</tr>{body}</table>"


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_section(records) -> Section:
    if not records:
        return Section("Rounds", note="No rounds in this workspace yet: run `dcpipe run`.")
    rows = []
    for rec in records:
        clusters, train = rec.clusters or {}, rec.train or {}
        method = train.get("config", {}).get("method", "-") if train else "-"
        rows.append([rec.round, *(_fmt(clusters.get(key)) for key, _ in SUMMARY_COLUMNS),
                     _fmt(train.get("final_loss")), "yes" if rec.model_path else "no", method])
    header = ["round", *(label for _, label in SUMMARY_COLUMNS), "final loss", "trained",
              "method"]
    return Section("Rounds", table=_table(header, rows))


def _seconds(value) -> str:  # (also images/s)
    return "-" if value is None else f"{value:.1f}"


def timings_section(summary: dict, records) -> Section:
    """What each step of each round took (as recorded by the cluster and train steps)."""
    shown = {r.round for r in records}
    rows = [[rd["round"], _seconds((rd["cluster"] or {}).get("seconds")),
             _seconds((rd["train"] or {}).get("seconds")),
             _seconds((rd["train"] or {}).get("images_per_s"))]
            for rd in summary["rounds"] if rd["round"] in shown and (rd["cluster"] or rd["train"])]
    if not rows:
        return Section("Stage timings", note="No round has been clustered or trained yet.")
    return Section("Stage timings", table=_table(
        ["round", "cluster s (after extract)", "train s (all runs)", "train images/s"], rows))


def rejects_section(summary: dict) -> Section:
    c = summary["collection"]
    if not c["rows"]:
        return Section("Collection", note="No shards yet: run `dcpipe shard --src ...`.")
    section = Section("Collection", table=_table(
        ["shards", "input rows", "samples", "rejected"],
        [[c["shards"], c["rows"], c["samples"], c["rejected"]]]))
    if c["rejects_by_reason"]:
        section.table += _table(["reject reason (docs/shard.md)", "rows"],
                                list(c["rejects_by_reason"].items()))
    return section


def nmi_section(records) -> Section:
    clustered = [r for r in records if r.clusters]
    section = Section("NMI over rounds")
    if not clustered:
        section.note = "No round has been clustered yet."
        return section
    xs = [r.round for r in clustered]
    series = {"vs true labels": (xs, [r.clusters.get("nmi_true") for r in clustered]),
              "vs previous round": (xs, [r.clusters.get("nmi_prev") for r in clustered])}
    notes = []
    if all(y is None for y in series["vs true labels"][1]):
        notes.append("The shards carry no true labels: NMI against labels is not available.")
    if all(y is None for y in series["vs previous round"][1]):
        notes.append("NMI against the previous round needs two clustered rounds.")
    section.note = " ".join(notes) or None
    png = plots.curves_plot(series, title="NMI of the clusters", ylabel="NMI")
    section.figures.append(("nmi.png", png, "NMI of each round's clusters against the true "
                            "labels (evaluation only) and against the previous round's clusters"))
    return section


def loss_curves(records) -> tuple[dict, tuple]:
    """Each trained round's loss over its steps, rounds end to end, and ln k (the loss of a
    uniform guess over the round's k clusters) as one line with a gap between rounds."""
    series, uniform, offset = {}, ([], []), 0
    for r in records:
        if not (r.train and r.train.get("loss_curve")):
            continue
        steps, losses = zip(*r.train["loss_curve"])
        end = offset + (r.train.get("steps") or max(steps))
        series[f"round {r.round}"] = ([offset + s for s in steps], list(losses))
        k = (r.clusters or {}).get("k")
        if k:
            uniform[0].extend([offset, end, end])
            uniform[1].extend([math.log(k), math.log(k), None])
        offset = end
    return series, uniform


def loss_section(records) -> Section:
    series, uniform = loss_curves(records)
    if not series:
        return Section("Training loss", note="No round has been trained yet.")
    png = plots.curves_plot(series, title="Training loss", ylabel="cross-entropy",
                            xlabel="step (rounds end to end)",
                            references={"ln k: a uniform guess": uniform})
    return Section("Training loss", figures=[("loss.png", png, "Loss over the training steps "
                   "of each round (each round trains a fresh top layer on new clusters); dashed: "
                   "ln k, the loss of a uniform guess over the round's k clusters: a loss "
                   "below it is something learned")])


def _labelled(records):
    return [r for r in records if r.has_labels]


def sizes_section(records) -> Section:
    labelled = _labelled(records)
    if not labelled:
        return Section("Cluster sizes", note="No round has labels yet.")
    shown = {r.round: cluster_sizes(r.dir.labels) for r in (labelled[0], labelled[-1])}
    png = plots.sizes_plot(shown)
    return Section("Cluster sizes", figures=[("cluster_sizes.png", png,
                   "Images per cluster, clusters sorted by size (log scale)")])


def clusters_sections(ws: Workspace, records, opts: Options) -> list[Section]:
    """The last labelled round's clusters: sample images, and class composition where known."""
    labelled = _labelled(records)
    if not labelled:
        return [Section("Clusters", note="No round has labels yet.")]
    last = labelled[-1]
    found = sample_clusters(ws.shards_dir, last.dir.labels, cluster_sizes(last.dir.labels),
                            clusters=opts.clusters_shown, per_cluster=opts.images_per_cluster,
                            seed=opts.seed, max_shards=opts.max_shards)
    return [examples_section(last.round, found), composition_section(last.round, found, opts)]


def _read_note(found: ClusterSample) -> str:
    return (f"all {found.shards_total} shards" if found.shards_read == found.shards_total else
            f"{found.shards_read} of {found.shards_total} shards, drawn at random")


def _composition_text(found: ClusterSample, cluster: int) -> str:
    counts = found.composition[cluster] if len(found.classes) else []
    top = sorted(((n, name) for name, n in zip(found.classes, counts) if n), reverse=True)
    return ", ".join(f"{name} {n}" for n, name in top[:3]) + (" ..." if len(top) > 3 else "")


def examples_section(round_index: int, found: ClusterSample) -> Section:
    rows = [(f"cluster {c.cluster}\n{c.size} images\n{_composition_text(found, c.cluster)}",
             [(e.image, e.caption) for e in c.examples]) for c in found.shown if c.examples]
    if not rows:
        return Section("Clusters", note="No image of the chosen clusters could be read.")
    png = plots.image_rows_plot(rows, title=f"Round {round_index}: the largest and smallest "
                                "clusters, images drawn at random from each")
    return Section("Clusters", figures=[("clusters.png", png, "A row per cluster, largest "
                   "first: a seeded uniform sample of its members among "
                   f"{_read_note(found)} (captions: true class where known; left: the "
                   "cluster's most common classes among those shards)")])


def composition_section(round_index: int, found: ClusterSample, opts: Options) -> Section:
    if not found.classes:
        return Section("Cluster composition", note="The shards carry no true labels: the "
                       "class composition of the clusters is not available.")
    counts = found.composition
    order = [c for c in sorted(range(len(counts)), key=lambda c: (-counts[c].sum(), c))
             if counts[c].sum()][:opts.composition_rows]
    columns = sorted(range(len(found.classes)), key=lambda j: -counts[:, j].sum())
    kept, rest = columns[:opts.composition_classes], columns[opts.composition_classes:]
    header = ["cluster", "images", *(found.classes[j] for j in kept), *(["other"] if rest else []),
              "purity"]
    rows = [[c, counts[c].sum(), *counts[c, kept], *([counts[c, rest].sum()] if rest else []),
             _fmt(purity(counts[c:c + 1]))] for c in order]
    chance = chance_baselines(counts, opts.seed)
    nonempty = int((counts.sum(axis=1) > 0).sum())
    note = (f"Round {round_index}, samples of {_read_note(found)}; {len(order)} of {nonempty} "
            f"clusters (the largest). Purity {chance['purity']:.3f} and NMI {chance['nmi']:.3f} "
            f"of these clusters; chance baselines, the same cluster sizes with members drawn "
            f"at random: purity {chance['random_purity']:.3f}, NMI "
            f"{chance['random_nmi']:.3f}; the most common class holds "
            f"{chance['majority_share']:.3f} of the samples.")
    return Section("Cluster composition",
                   table=f"<p>{html.escape(note)}</p>" + _table(header, rows))


def compared_models(records, random_seed: int) -> dict:
    """{name: model}: a random init and the last trained round's model ({} if none)."""
    trained = [r for r in records if r.model_path]
    if not trained:
        return {}
    model, meta = load_model(trained[-1].model_path)
    random = random_init(ModelSpec.from_meta(meta), random_seed).eval()
    return {f"random init (seed {random_seed})": random, f"round {trained[-1].round}": model}


def neighbours_section(ws: Workspace, models: dict, opts: Options) -> Section:
    if not models:
        return Section("Nearest neighbours", note="No trained model yet.")
    found = nearest_neighbours(ws.shards_dir, models, pool=opts.nn_pool,
                               queries=opts.nn_queries, k=opts.nn_k, seed=opts.seed,
                               workers=opts.workers, max_shards=opts.max_shards)
    caption = lambda i: found.captions[i]
    section = Section("Nearest neighbours")
    for index, (name, neighbours) in enumerate(found.by_model.items()):
        rows = [(f"query {i + 1}", [(found.thumbs[q], f"query: {caption(q) or ''}")] +
                 [(found.thumbs[j], caption(j)) for j in neighbours[i]])
                for i, q in enumerate(found.queries)]
        png = plots.image_rows_plot(rows, title=name)
        section.figures.append((f"neighbours_{index}.png", png, f"{name}: query (first column) "
                                f"and its {opts.nn_k} nearest neighbours among "
                                f"{len(found.thumbs)} collection images (cosine)"))
    return section


def filters_section(models: dict) -> Section:
    if not models:
        return Section("First-layer filters", note="No trained model yet.")
    section = Section("First-layer filters", side_by_side=True)
    for index, (name, model) in enumerate(models.items()):
        sobel = " (as grey-level filters through the Sobel front-end)" if model.sobel else ""
        png = plots.filters_plot(first_layer_filters(model), title=f"{name}{sobel}")
        section.figures.append((f"filters_{index}.png", png, f"conv1 filters, {name}"))
    return section


def _eval_results(data: dict) -> dict:
    """eval.json holds one result (with a "model" key) or named results side by side."""
    if "model" in data:
        return {model_label(data): data}
    return {name: r for name, r in data.items() if isinstance(r, dict) and "model" in r}


def eval_section(records) -> Section:
    evaluated = [r for r in records if r.eval]
    if not evaluated:
        return Section("Evaluation", note="No eval.json in these rounds: run `dcpipe eval`.")
    tables = [f"<h3>Round {rec.round}</h3>" + _eval_table(_eval_results(rec.eval))
              for rec in evaluated]
    return Section("Evaluation", table="".join(tables))


def _eval_table(results: dict) -> str:
    """A round's model beside the random init with the gain (as `dcpipe eval --compare-random`
    prints it), or whatever results eval.json holds side by side."""
    random = [name for name, r in results.items() if r["model"].get("random_init")]
    if len(results) == 2 and len(random) == 1:
        trained = next(name for name in results if name != random[0])
        rows = [[p, m, _fmt(value), _fmt(other), format_gain(gain)]
                for p, m, value, other, gain in compared_rows(results[trained], results[random[0]])]
        return _table(["protocol", "measure", trained, random[0], "gain"], rows)
    values = {name: {(p, m): v for p, m, v in result_rows(r)} for name, r in results.items()}
    measures = list(dict.fromkeys(k for v in values.values() for k in v))
    rows = [[p, m, *(_fmt(v.get((p, m))) for v in values.values())] for p, m in measures]
    return _table(["protocol", "measure", *results], rows)


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;
text-align:right}th{background:#eee}figure{margin:1em 0}img{max-width:100%}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:6px 10px}
.row{display:flex;gap:1em}.row figure{flex:1;min-width:0}"""


def _section_html(section: Section) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    if section.note:
        parts.append(f'<p class="note">{html.escape(section.note)}</p>')
    if section.table:
        parts.append(section.table)
    figures = []
    for name, png, caption in section.figures:
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        figures.append(f'<figure><img src="{uri}" alt="{html.escape(name)}">'
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if section.side_by_side:
        figures = [f'<div class="row">{"".join(figures)}</div>']
    return "\n".join(parts + figures)


def render_page(ws: Workspace, records, sections) -> str:
    title = f"dcpipe report: {ws.root.name}"
    made = time.strftime("%Y-%m-%d %H:%M:%S")
    body = "\n".join(_section_html(s) for s in sections)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(str(ws.root))}: {len(records)} rounds; made {made}.</p>"
            f"{body}</body></html>\n")
