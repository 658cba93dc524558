"""Every method of the table on a synthetic task with its default hyper-parameters, one seed,
each through `groupcoop train --quiet` (the same run folders users get); prints a markdown
table of validation and test accuracy.

    python scripts/compare_baselines.py [--task synth-waterbirds] [--seed 0] [--out runs/baselines]
                                        [--methods coop,dfr,...]

Features come from the usual cache ($GROUPCOOP_CACHE or ~/.cache/groupcoop). DFR trains on
the validation split, so its validation numbers are training numbers (marked *).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from groupcoop.methods import METHODS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="synth-waterbirds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/baselines")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    rows = []
    for method in args.methods.split(","):
        out = Path(args.out) / method
        start = time.time()
        subprocess.run([sys.executable, "-m", "groupcoop", "train", "--dataset", args.task, "--backbone",
                        "groupcoop-tiny", "--method", method, "--seed", str(args.seed), "--out", str(out), "--quiet",
                        "--overwrite"], check=True, stdout=subprocess.DEVNULL)
        seconds = time.time() - start
        m = json.loads((out / "metrics.json").read_text())
        val, test = m["splits"]["val"], m["splits"]["test"]
        star = "*" if m.get("val_used_for_training") else ""
        rows.append([method, m["needs_groups"], f"{m['trainable_params']:,}",
                     f"{100 * val['worst_group_acc']:.1f}{star}", f"{100 * test['avg_acc']:.1f}",
                     f"{100 * test['worst_group_acc']:.1f}", f"{seconds:.0f}"])
        print(f"{method}: test worst-group {100 * test['worst_group_acc']:.1f} ({seconds:.0f} s)", file=sys.stderr,
              flush=True)
    header = ["method", "needs_groups", "trainable params", "val worst-group", "test average", "test worst-group",
              "seconds"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(f"{args.task}, groupcoop-tiny, seed {args.seed}, default hyper-parameters; accuracy in %")
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    if any(r[3].endswith("*") for r in rows):
        print("* trained on the validation split: a training accuracy, not a held-out one")


if __name__ == "__main__":
    main()
