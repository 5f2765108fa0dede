"""The results of `evaluate` as rows of (protocol, measure, value), and as text tables."""

METRIC_NAMES = (("nmi", "NMI"), ("ari", "ARI"), ("acc", "ACC (Hungarian)"))


def result_rows(result: dict) -> list[tuple[str, str, float]]:
    """(protocol, measure, value) rows in a fixed order; protocols not run are absent."""
    rows = [("linear", f"{layer} top-1 ({probe['dims']} d)", probe["top1"])
            for layer, probe in result.get("linear", {}).items()]
    if "knn" in result:
        rows.append(("knn", f"top-1 (k={result['knn']['k']})", result["knn"]["top1"]))
    if "kmeans" in result:
        km = result["kmeans"]
        how = f"k={km['k']}" + (f", PCA-whitened {km['pca_dim']}" if km.get("pca_dim") else "") \
            + (", L2-normalised" if km.get("normalised") else "")
        runs = f", mean of {km['runs']} runs" if "runs" in km else ""  # older records: one run
        rows += [("kmeans", f"{label} ({how}{runs})", km[key]) for key, label in METRIC_NAMES]
        rows += [("kmeans", f"{label} std over runs", km[f"{key}_std"])
                 for key, label in METRIC_NAMES if f"{key}_std" in km]
    if "retrieval" in result:
        rows.append(("retrieval", "mAP (R-MAC)", result["retrieval"]["map"]))
    return rows


def model_label(result: dict) -> str:
    model = result.get("model", {})
    if model.get("random_init"):
        return f"random init (seed {model.get('seed')})"
    return f"round {model['round']}" if model.get("round") is not None else "trained"


def _render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _footer(result: dict) -> str:
    test = result.get("test", {})
    train = result.get("train", {})
    parts = [f"train {train['images']} images" if train else "",
             f"test {test['images']} images" if test else "",
             f"{result['classes']} classes" if "classes" in result else ""]
    seconds = sum(result.get("seconds", {}).values())
    return ", ".join(p for p in parts if p) + f"; {seconds:.0f} s"


def format_table(result: dict) -> str:
    rows = [[p, m, f"{v:.3f}"] for p, m, v in result_rows(result)]
    table = _render(["protocol", "measure", model_label(result)], rows)
    return f"{table}\n({_footer(result)})"


def compared_rows(trained: dict, baseline: dict) -> list[tuple]:
    """(protocol, measure, value, baseline's value, gain) rows; None where the baseline lacks
    the measure."""
    base = {(p, m): v for p, m, v in result_rows(baseline)}
    return [(p, m, value, base.get((p, m)), None if (p, m) not in base else value - base[(p, m)])
            for p, m, value in result_rows(trained)]


def format_gain(gain: float | None) -> str:
    return "-" if gain is None else f"{gain:+.3f}"


def format_comparison(trained: dict, baseline: dict) -> str:
    """Two results side by side (e.g. a round's model and the random init), with the gain."""
    rows = [[protocol, measure, f"{value:.3f}", "-" if other is None else f"{other:.3f}",
             format_gain(gain)]
            for protocol, measure, value, other, gain in compared_rows(trained, baseline)]
    header = ["protocol", "measure", model_label(trained), model_label(baseline), "gain"]
    return f"{_render(header, rows)}\n({_footer(trained)})"
