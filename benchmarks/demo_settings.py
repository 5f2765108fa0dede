"""Why the demo's settings: `dcpipe demo` on the digits with its settings changed one at a time.

Each variant runs in its own workspace (the demo's settings, then the variant's overrides, as
a dcpipe.toml) and prints the NMI of every round's clusters against the digit labels, with the
round's final training loss. Round 0 clusters the random network's features, so its NMI is the
baseline the training has to beat. Labels are read for the table only.

    python benchmarks/demo_settings.py --rounds 6 --work /tmp/demo-settings
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dcpipe.pipeline import config as configuration
from dcpipe.pipeline.demo import DEMO_METHOD, DEMO_SETTINGS
from dcpipe.pipeline.workspace import Workspace
from dcpipe.shards.atomic import read_json

DCPIPE = str(Path(sys.executable).parent / "dcpipe")
# The settings of the first demo, then one change after another towards today's DEMO_SETTINGS.
FIRST_TRAIN = {"reassign": 3.0, "crop_min": 0.08, "flip": True}
PCA_256 = {"pca_dim": 256}
VARIANTS = [
    ("first demo (PCA 256, 3 epochs, crops >= 0.08, flips)", {"cluster": PCA_256, "train": FIRST_TRAIN}),
    ("crops >= 0.5", {"cluster": PCA_256, "train": {**FIRST_TRAIN, "crop_min": 0.5}}),
    ("and no flips", {"cluster": PCA_256, "train": {**FIRST_TRAIN, "crop_min": 0.5, "flip": False}}),
    ("and PCA to 32 dims", {"train": {**FIRST_TRAIN, "crop_min": 0.5, "flip": False}}),
    ("and 2 epochs a round (today's demo)", {}),
]


def run_variant(work: Path, number: int, overrides: dict, rounds: int) -> dict:
    ws = work / f"variant{number}"
    ws.mkdir(parents=True, exist_ok=True)
    settings = configuration.with_changes(
        configuration.with_changes(configuration.default_config(DEMO_METHOD), DEMO_SETTINGS, "demo"),
        overrides,
        "variant")
    (ws / "dcpipe.toml").write_text(configuration.dumps(settings))
    started = time.perf_counter()
    subprocess.run([DCPIPE, "-q", "-w", str(ws), "demo", "--rounds", str(rounds)], check=True,
                   stdout=subprocess.DEVNULL)
    rows = []
    for r in range(rounds):
        here = Workspace(ws).round(r)
        rows.append((read_json(here.clusters_record)["nmi_true"],
                     read_json(here.train_record)["final_loss"]))
    return {"rows": rows, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo-settings"))
    args = parser.parse_args()
    results = []
    for number, (name, overrides) in enumerate(VARIANTS):
        result = run_variant(args.work, number, overrides, args.rounds)
        results.append((name, result))
        print(json.dumps({"variant": name, **result}), file=sys.stderr, flush=True)
    print("| settings | " + " | ".join(f"round {r}" for r in range(args.rounds)) + " | wall |")
    print("|---|" + "---:|" * (args.rounds + 1))
    for name, result in results:
        cells = " | ".join(f"{nmi:.3f} ({loss:.2f})" for nmi, loss in result["rows"])
        print(f"| {name} | {cells} | {result['seconds']:.0f} s |")
    print("\nNMI of each round's clusters against the digit labels (final training loss of the round).")


if __name__ == "__main__":
    main()
