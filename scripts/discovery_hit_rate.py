"""Bias discovery's hit rate over a suite of tasks, for every score (issue 16).

    python scripts/discovery_hit_rate.py dev            # choose on the dev suite
    python scripts/discovery_hit_rate.py --tasks synth-random:0,synth-random:1 --json out.json

Per task, discovery ranks the vocabulary's attributes on the training split (no bias label is
read); a task is a hit for a score when all its true bias attributes are among that score's top
k, k = its number of biases. Counted over the tasks whose biases the vocabulary can name (an
attribute of the same name; `--alias place=land_water` maps a dataset's name to the
vocabulary's). Printed: one row per task, the hit rate per score, the recall per attribute kind,
the scores of true attributes against the best other attribute, and per threshold what
`bias_prompts: auto` would keep (at most `--top`, default labelfree.DISCOVER_TOP): how often
exactly the true attributes, the mean precision and recall of the kept set, and how often nothing
(the fallback labeler). Features come from the cache (extracted where missing).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from groupcoop.backbones.families import TINY, load_backbone
from groupcoop.choices import DISCOVERY_SCORES
from groupcoop.data.registry import load_dataset
from groupcoop.grouping.discovery import discover_on, load_vocabulary
from groupcoop.grouping.labelfree import DISCOVER_TOP, DISCOVERY_THRESHOLDS
from groupcoop import presets
from groupcoop.runs.pipeline import prepare
from groupcoop.sweeps.grid import load_grid

THRESHOLDS = {  # the thresholds the table tries, per score (each score's own scale)
    "cramers_v": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "nmi": [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4],
    "error_concentration": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
}


def ranked(candidates: list[dict], score: str) -> list[str]:
    return [c["attribute"] for c in sorted(candidates, key=lambda c: (-c["scores"][score], c["attribute"]))]


def evaluate(tasks: list[dict], top: int) -> str:
    """The summary tables from per-task results ({task, biases, nameable, candidates})."""
    counted = [t for t in tasks if t["nameable"]]
    lines = [f"\n{len(counted)} of {len(tasks)} tasks have biases the vocabulary names.\n",
             "Hit rate: all true bias attributes among a score's top k (k = number of biases):\n",
             "| score | tasks | hit rate | attributes found (recall) |", "|---|---|---|---|"]
    for score in DISCOVERY_SCORES:
        hits = found = total = 0
        for t in counted:
            topk = set(ranked(t["candidates"], score)[:len(t["biases"])])
            hits += set(t["biases"]) <= topk
            found += len(set(t["biases"]) & topk)
            total += len(t["biases"])
        lines.append(f"| {score} | {len(counted)} | {100 * hits / max(len(counted), 1):.0f}% ({hits}) | "
                     f"{100 * found / max(total, 1):.0f}% ({found}/{total}) |")

    kinds = sorted({b for t in counted for b in t["biases"]})
    lines += ["", "Per attribute kind: tasks with that bias where it is in the top k:", "",
              "| attribute | tasks | " + " | ".join(DISCOVERY_SCORES) + " |", "|---|---|" + "---|" * len(DISCOVERY_SCORES)]
    for kind in kinds:
        having = [t for t in counted if kind in t["biases"]]
        cells = []
        for score in DISCOVERY_SCORES:
            n = sum(kind in ranked(t["candidates"], score)[:len(t["biases"])] for t in having)
            cells.append(f"{100 * n / len(having):.0f}% ({n})")
        lines.append(f"| {kind} | {len(having)} | " + " | ".join(cells) + " |")

    lines += ["", "Scores: true bias attributes against the best other attribute of the same task:", "",
              "| score | true: min / median | best other: median / max | tasks where a true one is below the best other |",
              "|---|---|---|---|"]
    for score in DISCOVERY_SCORES:
        true, other, below = [], [], 0
        for t in counted:
            by = {c["attribute"]: c["scores"][score] for c in t["candidates"]}
            mine = [by.get(b, 0.0) for b in t["biases"]]
            rest = [v for a, v in by.items() if a not in t["biases"]] or [0.0]
            true += mine
            other.append(max(rest))
            below += min(mine) < max(rest)
        lines.append(f"| {score} | {np.min(true):.3f} / {np.median(true):.3f} | {np.median(other):.3f} / "
                     f"{np.max(other):.3f} | {below} |")

    lines += ["", f"What bias_prompts auto keeps (above the threshold, at most {top}), over the counted tasks; "
              "* = the current default threshold:", "",
              "| score | threshold | exactly the true set | precision | recall | nothing kept |", "|---|---|---|---|---|---|"]
    for score in DISCOVERY_SCORES:
        for threshold in sorted(set(THRESHOLDS[score]) | {DISCOVERY_THRESHOLDS[score]}):
            exact, precision, recall, empty = 0, [], [], 0
            for t in counted:
                order = sorted(t["candidates"], key=lambda c: -c["scores"][score])
                kept = {c["attribute"] for c in order if c["scores"][score] > threshold}
                kept = set([c["attribute"] for c in order if c["attribute"] in kept][:top])
                truth = set(t["biases"])
                exact += kept == truth
                empty += not kept
                precision.append(len(kept & truth) / len(kept) if kept else 0.0)
                recall.append(len(kept & truth) / len(truth))
            mark = " *" if threshold == DISCOVERY_THRESHOLDS[score] else ""
            lines.append(f"| {score} | {threshold:g}{mark} | {100 * exact / max(len(counted), 1):.0f}% | "
                         f"{100 * np.mean(precision):.0f}% | {100 * np.mean(recall):.0f}% | {empty} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", help="a grid YAML whose datasets are the tasks (dev)")
    ap.add_argument("--tasks", help="comma-separated dataset names instead of a suite")
    ap.add_argument("--backbone", default=TINY)
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--vocabulary", help="a vocabulary YAML (default: the shipped one for each dataset)")
    ap.add_argument("--alias", action="append", default=[], metavar="DATASET_ATTR=VOCAB_ATTR",
                    help="a dataset attribute's name in the vocabulary, repeatable")
    ap.add_argument("--top", type=int, default=DISCOVER_TOP, help="bias_prompts auto's discover_top")
    ap.add_argument("--json", help="also write the per-task results here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not args.suite and not args.tasks:
        ap.error("give a suite (a preset name or grid file) or --tasks")
    names = [d.name for d in load_grid(presets.resolve(args.suite)).datasets] if args.suite else args.tasks.split(",")
    alias = dict(pair.split("=", 1) for pair in args.alias)
    backbone = load_backbone(args.backbone, args.pretrained)
    results = []
    for name in names:
        ds = load_dataset(name)
        vocabulary = load_vocabulary(args.vocabulary, ds)
        biases = [alias.get(a, a) for a in ds.attribute_names]
        candidates = discover_on(prepare(ds, backbone, progress=False), vocabulary, compute=DISCOVERY_SCORES)
        results.append({"task": name, "biases": biases, "nameable": set(biases) <= set(vocabulary.attributes),
                        "candidates": candidates})
        tops = "  ".join(f"{s}: {','.join(ranked(candidates, s)[:len(biases)])}"
                         f"{'' if set(biases) <= set(ranked(candidates, s)[:len(biases)]) else ' (miss)'}"
                         for s in DISCOVERY_SCORES)
        print(f"{name} [{', '.join(biases)}]  {tops}", flush=True)
    print(evaluate(results, args.top))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
