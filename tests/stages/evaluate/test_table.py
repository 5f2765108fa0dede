"""The results table and the side-by-side comparison."""

from dcpipe.stages.evaluate.table import format_comparison, format_table, result_rows

TRAINED = {
    "model": {"random_init": False, "round": 7},
    "linear": {"conv1": {"top1": 0.5, "dims": 2304, "pool": 6},
               "penultimate": {"top1": 0.61, "dims": 1024, "pool": None}},
    "knn": {"top1": 0.55, "k": 20},
    "kmeans": {"k": 10, "nmi": 0.3, "ari": 0.2, "acc": 0.45},
    "train": {"images": 100}, "test": {"images": 50}, "classes": 10,
    "seconds": {"classification": 12.0},
}
RANDOM = {
    "model": {"random_init": True, "seed": 0},
    "linear": {"conv1": {"top1": 0.4, "dims": 2304, "pool": 6},
               "penultimate": {"top1": 0.31, "dims": 1024, "pool": None}},
    "kmeans": {"k": 10, "nmi": 0.06, "ari": 0.02, "acc": 0.17},
    "seconds": {},
}


def test_rows_follow_protocol_order():
    rows = result_rows(TRAINED)
    assert [r[0] for r in rows] == ["linear", "linear", "knn", "kmeans", "kmeans", "kmeans"]
    assert rows[-1] == ("kmeans", "ACC (Hungarian) (k=10)", 0.45)


def test_table_shows_every_value_and_the_set_sizes():
    text = format_table(TRAINED)
    assert "round 7" in text and "0.610" in text and "0.450" in text
    assert "train 100 images, test 50 images, 10 classes; 12 s" in text


def test_whitened_kmeans_is_named_as_such():
    whitened = {**TRAINED, "kmeans": {**TRAINED["kmeans"], "pca_dim": 256}}
    assert ("kmeans", "NMI (k=10, PCA-whitened 256)", 0.3) in result_rows(whitened)


def test_comparison_puts_the_baseline_beside_with_the_gain():
    text = format_comparison(TRAINED, RANDOM)
    line = next(l for l in text.splitlines() if "penultimate" in l)
    assert line.split()[-3:] == ["0.610", "0.310", "+0.300"]
    knn_line = next(l for l in text.splitlines() if l.startswith("knn"))
    assert knn_line.split()[-2:] == ["-", "-"]  # not measured for the baseline
    assert "random init (seed 0)" in text.splitlines()[0]


def test_kmeans_over_several_runs_shows_mean_and_spread():
    runs = {**TRAINED, "kmeans": {**TRAINED["kmeans"], "normalised": True, "runs": 5,
                                  "nmi_std": 0.01, "ari_std": 0.02, "acc_std": 0.03}}
    rows = result_rows(runs)
    assert ("kmeans", "ACC (Hungarian) (k=10, L2-normalised, mean of 5 runs)", 0.45) in rows
    assert ("kmeans", "ACC (Hungarian) std over runs", 0.03) in rows
