"""Cluster stage vs the reference approach, on the same synthetic features in a zarr store.

    reference  the authors' way: every valid feature read into RAM as float32,
               faiss.PCAMatrix(D, d, eigen_power=-0.5) trained on them (faiss itself uses at most
               1000 x D rows), L2 normalisation, one faiss.Clustering over all points
               (max_points_per_centroid = 10M as in their code), then index.search on all points
    streamed   dcpipe's stages.cluster.cluster(): PCA and k-means on a bounded sample, then
               `--refine-passes` Lloyd passes over every row (streamed), every row assigned by
               streaming the store, empty clusters split; `--procs 1 2`: in one process, and
               under `torchrun --nproc-per-node 2` (its labels checked equal to 1 process's)

Each runs in its own process(es); peak RSS is each process's ru_maxrss (the largest rank's and
the sum over ranks are shown); wall s is the time inside cluster() (rank 0's: no interpreter or
torchrun start-up). With the reference, the k-means objective is computed here for both by
streaming the store: the mean, over ALL valid points, of the squared distance between the point
(projected with that run's own PCA, L2-normalised) and its assigned centroid; without it
(`--no-reference`), the streamed run's own `objective_final`, which is the same quantity.

    python benchmarks/bench_cluster.py --n 1000000 --k 10000 --sample-sizes 500000 100000 --refine-passes 2 0
    python benchmarks/bench_cluster.py --n 1000000 10000000 --k 10000 --sample-sizes 500000 \
        --procs 1 2 --no-reference --store-dir /data/bench     # 10M x 256 float16: a 5 GB store
    python benchmarks/bench_cluster.py --n --store ws/rounds/0005/features.zarr --k 1000   # a real store
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
SHARD_SIZE = 10_000
CHUNK_ROWS = 4096


# ------------------------------------------------------------------ data
def make_blob_store(path: Path, n: int, dim: int, n_blobs: int, seed: int) -> Path:
    """n Gaussian-blob features (float16, like the extractor's default), written block by block."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.featurestores import create_store, write_rows

    if (path / "zarr.json").exists():
        return path
    tmp = path.with_name(path.name + ".partial")
    counts = [min(SHARD_SIZE, n - s) for s in range(0, n, SHARD_SIZE)]
    g = create_store(tmp, dim, counts, CHUNK_ROWS, "float16", [f"blob{b}" for b in range(n_blobs)])
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, dim)).astype(np.float32) * 2
    scales = rng.uniform(0.5, 2.0, dim).astype(np.float32)  # anisotropic: whitening has work to do
    for first in range(0, n, SHARD_SIZE * 8):
        idx = np.arange(first, min(first + SHARD_SIZE * 8, n))
        blob = rng.integers(0, n_blobs, len(idx))
        feats = (centres[blob] + rng.standard_normal((len(idx), dim), dtype=np.float32)) * scales
        write_rows(g, idx, feats, true_labels=blob)
    g.attrs["complete"] = True
    tmp.rename(path)
    return path


# ------------------------------------------------------------------ workers (own processes)
def run_reference(store: Path, out: Path, k: int, pca_dim: int, niter: int, seed: int) -> dict:
    import faiss
    import zarr

    timings, start = {}, time.perf_counter()
    g = zarr.open_group(store, mode="r")
    valid = g["valid"][:].astype(bool)
    feats = g["features"]
    x = np.empty((int(valid.sum()), feats.shape[1]), dtype=np.float32)
    at = 0
    for first in range(0, feats.shape[0], 16 * CHUNK_ROWS):
        block = feats[first:first + 16 * CHUNK_ROWS]
        keep = valid[first:first + len(block)]
        x[at:at + keep.sum()] = block[keep]
        at += keep.sum()
    timings["load"] = time.perf_counter() - start
    mat = faiss.PCAMatrix(x.shape[1], pca_dim, -0.5)
    mat.train(x)
    y = mat.apply_py(x)
    del x
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    timings["pca"] = time.perf_counter() - start - timings["load"]
    clus = faiss.Clustering(pca_dim, k)
    clus.niter, clus.seed, clus.max_points_per_centroid = niter, seed, 10_000_000
    index = faiss.IndexFlatL2(pca_dim)
    clus.train(y, index)
    timings["train"] = time.perf_counter() - start - timings["load"] - timings["pca"]
    _, labels = index.search(y, 1)
    timings["assign"] = time.perf_counter() - start - sum(timings.values())
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, pca_dim)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "reference.npz", A=faiss.vector_to_array(mat.A).reshape(pca_dim, -1),
             b=faiss.vector_to_array(mat.b), centroids=centroids, labels=labels[:, 0].astype(np.int32))
    return {"seconds": time.perf_counter() - start, "timings": timings}


def run_streamed(store: Path, out: Path, k: int, pca_dim: int, niter: int, seed: int,
                 sample_size: int | None, refine_passes: int) -> dict:
    from dcpipe.stages.cluster import ClusterSettings, cluster

    settings = ClusterSettings(k=k, pca_dim=pca_dim, niter=niter, refine_passes=refine_passes,
                               sample_size=sample_size or ClusterSettings.sample_size)
    start = time.perf_counter()
    record = cluster(store, out, settings, seed=seed, progress=False)
    return {"seconds": time.perf_counter() - start, "timings": record["timings"],
            "sample_size": record["sample_size"], "own_objective": record["objective_final"],
            "refine_passes": record["refine_passes"],
            "empty_before_fix": record["empty_before_fix"]}


def worker(argv: list[str]) -> None:
    a = json.loads(argv[0])
    if a["mode"] == "reference":
        result = run_reference(Path(a["store"]), Path(a["out"]), a["k"], a["pca_dim"], a["niter"], a["seed"])
    else:
        result = run_streamed(Path(a["store"]), Path(a["out"]), a["k"], a["pca_dim"], a["niter"],
                              a["seed"], a["sample_size"], a["refine_passes"])
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(f"{a['result']}.rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))


def measure(mode: str, store: Path, out: Path, procs: int = 1, **options) -> dict:
    """Run one worker process (or `procs` ranks under torchrun); rank 0's result, with the
    largest peak RSS (bytes) of any rank and their sum."""
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / f"{mode}.result"
    for old in out.glob(f"{mode}.result.rank*.json"):
        old.unlink()
    args = json.dumps({"mode": mode, "store": str(store), "out": str(out), "result": str(result_path),
                       **options})
    launcher = [sys.executable] if procs == 1 else [TORCHRUN, "--standalone", "--nproc-per-node", str(procs)]
    code = subprocess.run([*launcher, __file__, "--worker", args]).returncode
    if code:
        raise RuntimeError(f"{mode} worker failed with exit code {code}")
    ranks = [json.loads(result_path.with_name(f"{result_path.name}.rank{r}.json").read_text())
             for r in range(procs)]
    peaks = [r["peak_rss"] for r in ranks]
    return {**ranks[0], "procs": procs, "peak_rss": max(peaks), "peak_rss_sum": sum(peaks)}


# ------------------------------------------------------------------ the shared objective
def streamed_objective(store: Path, project, centroids: np.ndarray, labels_of_valid: np.ndarray) -> float:
    """Mean squared distance of every valid point (own projection) to its assigned centroid."""
    import zarr

    g = zarr.open_group(store, mode="r")
    valid = g["valid"][:].astype(bool)
    total, at = 0.0, 0
    for first in range(0, len(valid), 16 * CHUNK_ROWS):
        keep = valid[first:first + 16 * CHUNK_ROWS]
        y = project(g["features"][first:first + len(keep)][keep])
        lab = labels_of_valid[at:at + len(y)]
        total += float(((y - centroids[lab]) ** 2).sum(dtype=np.float64))
        at += len(y)
    return total / at


def reference_objective(store: Path, out: Path) -> tuple[float, np.ndarray]:
    with np.load(out / "reference.npz") as z:
        a, b, centroids, labels = z["A"], z["b"], z["centroids"], z["labels"]

    def project(x):
        y = x.astype(np.float32) @ a.T + b
        return y / np.linalg.norm(y, axis=1, keepdims=True)
    return streamed_objective(store, project, centroids, labels), labels


def dcpipe_objective(store: Path, out: Path) -> tuple[float, np.ndarray]:
    import zarr

    from dcpipe.stages.common.labels import load_labels
    from dcpipe.stages.common.whitening import WhiteningPCA

    g = zarr.open_group(store, mode="r")
    labels = np.concatenate([load_labels(out / "labels", name)[1] for name in g.attrs["shard_names"]])
    pca = WhiteningPCA.load(out / "pca.npz")
    labels = labels[labels >= 0]
    return streamed_objective(store, pca.apply, np.load(out / "centroids.npy"), labels), labels


# ------------------------------------------------------------------ main
def fastest(runs: list[dict]) -> dict:
    """The run with the least wall time (the machine is shared: noise only ever adds time)."""
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "runs_seconds": [round(r["seconds"], 1) for r in runs]}


def same_labels(a: Path, b: Path) -> bool:
    """Do two runs' label shard indexes hold the same bytes?"""
    files = [{p.name: p.read_bytes() for p in sorted((out / "labels").iterdir())} for out in (a, b)]
    return files[0] == files[1]


def bench_one(store: Path, work: Path, n: int, seed: int, args, data: str = "blobs") -> list[dict]:
    from dcpipe.stages.common import metrics

    options = {"k": args.k, "pca_dim": args.pca_dim, "niter": args.niter, "seed": seed}
    paths = {} if args.no_reference else {"reference": ("reference", work / "reference", {}, 1)}
    for sample in args.sample_sizes:
        size = None if sample == "default" else int(sample)
        for passes in args.refine_passes:
            for procs in args.procs:
                name = f"streamed-{sample}-refine{passes}-p{procs}"
                paths[name] = ("streamed", work / name,
                               {"sample_size": size, "refine_passes": passes}, procs)
    runs = {name: [] for name in paths}
    for _ in range(args.repeat):  # interleaved, so that load from other users hits all paths alike
        for name, (mode, out, extra, procs) in paths.items():
            runs[name].append(measure(mode, store, out, procs, **options, **extra))
    rows, ref_labels = [], None
    if not args.no_reference:
        ref = fastest(runs.pop("reference"))
        ref["objective"], ref_labels = reference_objective(store, work / "reference")
        rows.append({"data": data, "n": n, "seed": seed, "path": "reference", **ref, "sample_size": n})
    for name, results in runs.items():
        res = fastest(results)
        out, procs = paths[name][1], paths[name][3]
        if ref_labels is None:
            res["objective"] = res["own_objective"]
        else:
            res["objective"], labels = dcpipe_objective(store, out)
            res["nmi_vs_reference"] = metrics.nmi(labels, ref_labels)
        one = paths.get(name.rsplit("-p", 1)[0] + "-p1")
        if procs > 1 and one is not None:
            res["same_as_1_proc"] = same_labels(out, one[1])
        how = "default" if name.startswith("streamed-default") else "fixed"
        path = f"streamed ({how} sample {res['sample_size']:,}, {res['refine_passes']} refine passes)"
        rows.append({"data": data, "n": n, "seed": seed, **res, "path": path})
    for row in rows:
        row["s_per_m_rows"] = row["seconds"] / (n / 1e6)
        if not args.no_reference:
            row["time_ratio"] = row["seconds"] / ref["seconds"]
            row["objective_ratio"] = row["objective"] / ref["objective"]
            row["rss_ratio"] = row["peak_rss"] / ref["peak_rss"]
    return rows


def table(rows: list[dict]) -> str:
    head = ("| data | N | seed | path | procs | wall s | s / M rows | vs ref | peak RSS MiB (largest rank) "
            "| summed over ranks | vs ref | objective | vs ref | NMI vs ref | labels = 1 proc |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ratio = lambda key, fmt: format(r[key], fmt) if key in r else "-"  # noqa: E731
        same = {True: "yes", False: "NO"}.get(r.get("same_as_1_proc"), "-")
        lines.append(f"| {r['data']} | {r['n']:,} | {r['seed']} | {r['path']} | {r.get('procs', 1)} | "
                     f"{r['seconds']:.1f} | {r['s_per_m_rows']:.1f} | {ratio('time_ratio', '.2f')} | "
                     f"{r['peak_rss'] / 2**20:.0f} | {r['peak_rss_sum'] / 2**20:.0f} | "
                     f"{ratio('rss_ratio', '.2f')} | {r['objective']:.5f} | {ratio('objective_ratio', '.4f')} | "
                     f"{ratio('nmi_vs_reference', '.3f')} | {same} |")
    return "\n".join(lines)


def objective_summary(rows: list[dict]) -> str:
    """Objective ratio to the reference of the same N and seed, over seeds: k-means from a random
    start lands in different local optima, so one seed says little about a 1% difference."""
    ratios = {}
    for r in rows:
        if "objective_ratio" in r:
            ratios.setdefault((r["data"], r["n"], r["path"]), []).append(r["objective_ratio"])
    return "\n".join(f"{data} N={n:,} {path}: objective / reference over {len(v)} seed(s): mean {np.mean(v):.4f}, "
                     f"min {min(v):.4f}, max {max(v):.4f}" for (data, n, path), v in ratios.items())


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    import zarr

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="*", default=[20_000, 100_000], help="synthetic collection sizes")
    p.add_argument("--store", type=Path, nargs="*", default=[], help="existing feature stores to run on too")
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--dim", type=int, default=256, help="feature dimension D")
    p.add_argument("--pca-dim", type=int, default=256)
    p.add_argument("--blobs", type=int, default=1000, help="Gaussian blobs in the synthetic data")
    p.add_argument("--sample-sizes", nargs="+", default=["default"],
                   help="streamed runs: 'default' (ClusterSettings') and/or fixed sample sizes")
    p.add_argument("--refine-passes", type=int, nargs="+", default=[2],
                   help="streamed runs: Lloyd passes over every row after the fit on the sample")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="k-means seeds (one run each)")
    p.add_argument("--repeat", type=int, default=1, help="runs per path (interleaved); the fastest counts")
    p.add_argument("--procs", type=int, nargs="+", default=[1],
                   help="streamed runs: 1 = one process, P > 1 = torchrun --nproc-per-node P")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the all-in-RAM reference (it holds N x D float32 twice)")
    p.add_argument("--workdir", type=Path, default=None, help="outputs (default: a temp dir)")
    p.add_argument("--store-dir", type=Path, default=None,
                   help="synthetic stores, kept for later runs (default: the workdir)")
    args = p.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    store_dir = args.store_dir or root
    store_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.n:
        started = time.perf_counter()
        store = make_blob_store(store_dir / f"blobs-{n}-{args.dim}-{args.blobs}.zarr", n, args.dim, args.blobs, 0)
        print(f"N={n:,}: store ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        for seed in args.seeds:
            rows += bench_one(store, root / f"run-{n}-{args.k}-{args.niter}-{seed}", n, seed, args)
            print(json.dumps(rows[-1], default=float), file=sys.stderr)
    for number, store in enumerate(args.store):
        n = int(zarr.open_group(store, mode="r")["valid"][:].sum())
        for seed in args.seeds:
            rows += bench_one(store.resolve(), root / f"run-store{number}-{args.k}-{args.niter}-{seed}", n, seed,
                             args, data=f"store {number}")
    print("\n".join(f"store {number}: {store}" for number, store in enumerate(args.store)))
    print(f"k={args.k}, niter={args.niter}, D={args.dim} (synthetic), pca_dim={args.pca_dim}, "
          f"blobs={args.blobs}, repeat={args.repeat} (fastest run counts), {os.cpu_count()} CPUs, "
          "threads: all in one process, 1 per rank under torchrun (its default)")
    print(table(rows))
    print(objective_summary(rows))


if __name__ == "__main__":
    main()
