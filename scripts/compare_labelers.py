"""Compare group labelers on a suite of tasks by what GroupCoOp needs from them.

    python scripts/compare_labelers.py dev          # the dev suite (choices are made here)
    python scripts/compare_labelers.py --tasks synth-waterbirds,synth-threebias

For every task and labeler: agreement with the true training groups (accuracy under the best
matching) and, above all, the recall of the smallest true groups (`min_recall`: the lowest
per-group recall; a labeler that folds a 5-image group into the majority scores near 0 there
however high its overall agreement). No training: features come from the cache, labelling
takes seconds. Prints one row per task, a summary table, and the same table for each kind of
task: a task's kind is that of its least-named bias attribute (the world card's bands:
`groupcoop.data.world.card.attribute_kind`), so "unnamed" tasks carry the mark and "rarely named" ones the
pattern without the mark.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from groupcoop.backbones.families import TINY, load_backbone
from groupcoop.data.registry import load_dataset
from groupcoop.grouping.plan import plan_groups, resolve_grouping
from groupcoop.grouping.labelers import LABELERS
from groupcoop.grouping.options import GroupingOptions
from groupcoop.runs.pipeline import prepare
from groupcoop.presets import resolve
from groupcoop.sweeps.grid import load_grid
from groupcoop.data.world.card import KINDS, attribute_kind, zero_shot_accuracy

# every labeler that needs no bias labels, a labeler with variants once per variant ("pseudo:recall")
DEFAULT_LABELERS = [name for name, lab in LABELERS.items() if not lab.needs_truth and not lab.variants] + \
    [f"{name}:{v}" for name, lab in LABELERS.items() if not lab.needs_truth and lab.variants for v in lab.variants]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", help="a grid YAML or preset whose datasets are the tasks (e.g. dev)")
    ap.add_argument("--tasks", help="comma-separated dataset names instead of a suite")
    ap.add_argument("--labelers", default=",".join(DEFAULT_LABELERS), help="source or pseudo:<variant>, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tasks = [d.name for d in load_grid(resolve(args.suite)).datasets] if args.suite else args.tasks.split(",")
    labelers = args.labelers.split(",")
    backbone = load_backbone(TINY)
    results: dict[str, list[tuple[float, float]]] = {lab: [] for lab in labelers}
    kind_of = {a: attribute_kind(acc) for a, acc in zero_shot_accuracy(backbone).items()}
    task_kinds = []
    for task in tasks:
        prep = prepare(load_dataset(task), backbone, progress=False)
        kinds = [kind_of.get(a) for a in prep.dataset.attribute_names]
        task_kinds.append(max(kinds, key=KINDS.index) if None not in kinds else "other")
        cells = []
        for lab in labelers:
            source, _, variant = lab.partition(":")
            options = GroupingOptions(source=source, **({"variant": variant} if variant else {}))
            q = plan_groups(prep, resolve_grouping(prep.dataset, options), args.seed).quality
            results[lab].append((q["accuracy"], q["min_recall"]))
            cells.append(f"{lab} {100 * q['accuracy']:.1f}/{100 * q['min_recall']:.0f}")
        print(f"{task}: " + "  ".join(cells), flush=True)

    summary(results, f"all {len(tasks)} tasks")
    for kind in (*KINDS, "other"):
        keep = [k == kind for k in task_kinds]
        if any(keep):
            summary({lab: [v for v, m in zip(values, keep) if m] for lab, values in results.items()},
                    f"{sum(keep)} tasks whose least-named bias is {kind}")


def summary(results: dict[str, list[tuple[float, float]]], what: str) -> None:
    print(f"\nAgreement with the true training groups / minimum per-group recall, %, {what}:\n")
    print("| labeler | agreement | min recall (mean) | min recall (worst task) | tasks with min recall < 50% |")
    print("|---|---|---|---|---|")
    for lab, values in results.items():
        acc, rec = np.array(values).T
        print(f"| {lab} | {100 * acc.mean():.1f} | {100 * rec.mean():.1f} | {100 * rec.min():.1f} | "
              f"{int((rec < 0.5).sum())} |")


if __name__ == "__main__":
    main()
