"""What listing an image folder costs: the first sync (every file new) and a cron rerun's (none
new), time and peak memory, for this tree and, with --baseline TREE (another checkout, e.g.
`git archive <commit> | tar -x -C TREE`), for that one side by side.

Builds once (in --work, reused) a folder of --files empty files in --classes class folders (the
walk never opens a file, so their bytes do not matter). Each measurement is a fresh process, so
peak RSS is the sync's own plus the interpreter's.

    python benchmarks/bench_listing.py --files 200000 --baseline /tmp/dcpipe-before
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASURE = """
import json, resource, sys, time
from dcpipe.stages.sources.folders import sync_listing
root, listing = sys.argv[1], sys.argv[2]
started = time.perf_counter()
added = sync_listing(root, listing)
print(json.dumps({"s": time.perf_counter() - started, "added": added,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_folder(root: Path, files: int, classes: int) -> None:
    if (root / ".complete").exists():
        return
    for i in range(files):
        folder = root / f"class{i % classes:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:08d}.jpg").touch()
    (root / ".complete").touch()  # hidden: the walk skips it


def measure(tree: Path, root: Path, listing: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(listing)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-listing"))
    parser.add_argument("--baseline", type=Path, help="another dcpipe checkout to compare with")
    args = parser.parse_args()
    root = args.work / f"folder-{args.files}-{args.classes}"
    make_folder(root, args.files, args.classes)
    trees = {"this tree": REPO} | ({"baseline": args.baseline} if args.baseline else {})
    results = {name: {"first": [], "rerun": []} for name in trees}
    for _ in range(args.repeats):  # trees alternate, so a slow stretch hits both
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory(dir=args.work) as scratch:
                listing = Path(scratch) / "listing"
                results[name]["first"].append(measure(tree, root, listing))
                results[name]["rerun"].append(measure(tree, root, listing))
    print(f"{args.files:,} files in {args.classes} folders, median of {args.repeats}")
    print("| sync | " + " | ".join(f"{n} s | {n} peak RSS MB" for n in trees) + " |")
    print("|---|" + "---|---|" * len(trees))
    for kind in ("first", "rerun"):
        cells = []
        for name in trees:
            runs = results[name][kind]
            cells += [f"{statistics.median(r['s'] for r in runs):.2f}",
                      f"{statistics.median(r['rss_mb'] for r in runs):.0f}"]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
