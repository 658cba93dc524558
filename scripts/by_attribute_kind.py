"""A sweep's results on synth-random tasks, split by the kind of bias attribute the task carries.

    python scripts/by_attribute_kind.py runs/suite-report

A task's kind is that of its least-named bias attribute, by the world card's bands
(`groupcoop.data.world.card.attribute_kind` on the bundled model's held-out zero-shot accuracy): tasks
carrying the mark are "unnamed", tasks carrying the pattern but not the mark "rarely named",
the others "well named". Reads the sweep's runs.csv; prints, per kind and per method [groups],
the mean over tasks (of each task's mean over seeds) of test worst-group accuracy (with its
standard deviation over tasks) and of the labeler's minimum per-group recall on the training
split; then the same for the rarely named and unnamed tasks together ("weakly named").
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from groupcoop.backbones.families import TINY, load_backbone
from groupcoop.data.world.random_tasks import parse_random_task_name, random_task
from groupcoop.data.world.card import KINDS, attribute_kind, zero_shot_accuracy


def task_kind(dataset: str, kind_of: dict[str, str]) -> str | None:
    seed = parse_random_task_name(dataset)
    if seed is None:
        return None
    return max((kind_of[attr] for attr, _ in random_task(seed).biases), key=KINDS.index)


def number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path, help="a sweep folder holding runs.csv")
    args = ap.parse_args()
    with open(args.sweep / "runs.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kind_of = {a: attribute_kind(acc) for a, acc in zero_shot_accuracy(load_backbone(TINY)).items()}
    cells: dict[tuple[str, str], dict[str, list[tuple[float, float | None]]]] = defaultdict(lambda: defaultdict(list))
    kinds = {}
    for row in rows:
        kind = kinds.setdefault(row["dataset"], task_kind(row["dataset"], kind_of))
        wga = number(row.get("test_worst_group_acc"))
        if kind is None or wga is None:
            continue
        entry = f"{row['method']} [{row['groups']}]" if row.get("groups") else row["method"]
        cells[(kind, entry)][row["dataset"]].append((wga, number(row.get("group_min_recall"))))
    print(f"kinds of the bundled model's attributes: {kind_of}")
    for title, group in [*((k, (k,)) for k in KINDS), ("weakly named (rarely named or unnamed)", KINDS[1:])]:
        entries = sorted({e for k, e in cells if k in group})
        if not entries:
            continue
        n_tasks = len({d for k, e in cells if k in group for d in cells[(k, e)]})
        print(f"\n{title}: {n_tasks} tasks\n")
        print("| method [groups] | tasks | mean WGA | sd over tasks | mean min recall of the groups |")
        print("|---|---|---|---|---|")
        for entry in entries:
            per_task = [runs for k in group for runs in cells.get((k, entry), {}).values()]
            wgas = [np.mean([w for w, _ in runs]) for runs in per_task]
            recalls = [np.mean([r for _, r in runs]) for runs in per_task if all(r is not None for _, r in runs)]
            recall = f"{100 * np.mean(recalls):.1f}" if recalls else "-"
            print(f"| {entry} | {len(per_task)} | {100 * np.mean(wgas):.1f} | {100 * np.std(wgas):.1f} | {recall} |")


if __name__ == "__main__":
    main()
