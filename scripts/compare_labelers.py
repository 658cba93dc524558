"""Compare group labelers on the synthetic tasks: agreement with the true groups, and the
worst-group accuracy GroupCoOp reaches when trained on each labeler's groups.

    python scripts/compare_labelers.py            # 3 tasks x 3 seeds, prints markdown tables

Seeds vary the labelers' and the training's randomness; the rendered datasets are fixed
(dataset seed 0), so features are extracted once per task and cached.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from groupcoop.data.synthetic import TASKS, make_task_dataset
from groupcoop.groups import PSEUDO_VARIANTS
from groupcoop.pipeline import plan_groups, prepare, run_method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per task (default 3)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated synthetic tasks")
    ap.add_argument("--no-train", action="store_true", help="only the agreement table")
    args = ap.parse_args()
    torch.set_num_threads(2)
    labelers = ["zeroshot", "kmeans"] + [f"pseudo:{v}" for v in PSEUDO_VARIANTS]
    agreement = {lab: [] for lab in labelers}
    rows = []
    for task in args.tasks.split(","):
        prep = prepare(make_task_dataset(task), "groupcoop-tiny", progress=False)
        for seed in range(args.seeds):
            acc = {}
            for lab in labelers:
                source, _, variant = lab.partition(":")
                q = plan_groups(prep, source, seed, variant=variant or None).quality
                acc[lab] = q["accuracy"]
                agreement[lab].append(q["accuracy"])
            wga = {}
            if not args.no_train:
                for source in ("gt", "zeroshot", "kmeans", "pseudo"):
                    metrics, _ = run_method(prep, "groupcoop", groups=source, seed=seed, log=lambda s: None)
                    wga[source] = metrics["splits"]["test"]["worst_group_acc"]
            rows.append((task, seed, acc, wga))
            print(f"{task} seed {seed}: " + "  ".join(f"{k} {100 * v:.1f}" for k, v in acc.items())
                  + ("  | WGA " + "  ".join(f"{k} {100 * v:.1f}" for k, v in wga.items()) if wga else ""), flush=True)

    print("\nAgreement with the true training groups (accuracy under best matching, %), mean over seeds:\n")
    print("| task | " + " | ".join(labelers) + " |")
    print("|---|" + "---|" * len(labelers))
    for task in args.tasks.split(","):
        cells = [np.mean([r[2][lab] for r in rows if r[0] == task]) for lab in labelers]
        print(f"| {task} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    print("| **mean** | " + " | ".join(f"**{100 * np.mean(agreement[lab]):.1f}**" for lab in labelers) + " |")
    if not args.no_train:
        sources = ("gt", "zeroshot", "kmeans", "pseudo")
        print("\nGroupCoOp test worst-group accuracy (%) by training groups, mean ± std over seeds:\n")
        print("| task | " + " | ".join(sources) + " |")
        print("|---|" + "---|" * len(sources))
        for task in args.tasks.split(","):
            cells = [[r[3][s] for r in rows if r[0] == task] for s in sources]
            print(f"| {task} | " + " | ".join(f"{100 * np.mean(c):.1f} ± {100 * np.std(c):.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
