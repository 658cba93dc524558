"""What `bias_prompts: auto` keeps over a suite of tasks, caption and image side together (issue 24).

    python scripts/discovery_kept.py dev                          # choose on the dev suite
    python scripts/discovery_kept.py report --conditional 0.3     # report, never choose
    python scripts/discovery_kept.py --planted                    # the planted tasks of the tests
    python scripts/discovery_kept.py dev-wide --zeroshot-ratio 0.5,0.6,0.7,0.8   # the image side's threshold

Per task, discovery runs on the training split (no bias label is read) and keeps at most `--top`
spurious candidates. A task is a hit when every true bias is found: a captioned one by its name,
the never-captioned `mark` by a kept unnamed attribute. A distractor is a kept attribute that is
none of the task's biases (an unnamed one counts as the mark where the task has it, else as a
distractor). Printed per minimum conditional association (`labelfree.DISCOVERY_MIN_CONDITIONAL`,
`--conditional` to try others): the hit rate overall and on the tasks with the mark, the share of
tasks that keep a distractor, and the mean number of distractors kept. `--zeroshot-ratio` tries
thresholds of the image side's test (`unnamed.ZEROSHOT_RATIO`) at the default conditional one
instead, and prints each task's ratio: the largest over the two hard sets with enough residual
images, so a task's unnamed attribute is found exactly where it is at least the threshold.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from groupcoop import presets
from groupcoop.backbones.families import TINY, load_backbone
from groupcoop.data.registry import load_dataset
from groupcoop.data.world.datasets import make_task_dataset
from groupcoop.data.world.tasks import SyntheticTask
from groupcoop.grouping.discovery import discover_on, load_vocabulary, mark_spurious
from groupcoop.grouping.labelfree import DISCOVER_TOP, DISCOVERY_MIN_CONDITIONAL, DISCOVERY_SCORE
from groupcoop.grouping import unnamed
from groupcoop.grouping.unnamed import explained, hard_sets, image_candidate, residual_test
from groupcoop.runs.pipeline import prepare
from groupcoop.sweeps.grid import load_grid

UNSEEN = "mark"  # the world's never-captioned attribute


def planted_tasks() -> list[SyntheticTask]:
    """Small tasks with one planted bias (or none: balanced groups), as in tests/test_unnamed.py."""
    def task(name, attr, values, train):
        return SyntheticTask(name=name, description="planted", biases=((attr, values),),
                             counts={"train": train, "val": (40,) * 4, "test": (40,) * 4})
    return [task("planted-nobias", "mark", ("none", "tag"), (200, 200, 200, 200)),
            task("planted-mark", "mark", ("none", "tag"), (380, 20, 20, 380)),
            task("planted-background", "background", ("grass", "water"), (380, 20, 20, 380))]


def image_side_inputs(prep, candidates: list[dict], conditional: float = DISCOVERY_MIN_CONDITIONAL):
    """What the image side reads on the training split: the spurious caption candidates at this
    conditional threshold, best first, the features, the classes and zero-shot's predictions."""
    ds = prep.dataset
    rows = ds.split_indices("train")
    y = ds.y[rows]
    caption = sorted([c for c in candidates if not c.get("unnamed")], key=lambda c: (-c["score"], c["attribute"]))
    mark_spurious(caption, y, DISCOVERY_SCORE, conditional)
    x = prep.feats.numpy(rows).astype(np.float64)
    classes = prep.backbone.text_features(list(ds.class_names)).float().cpu().numpy()
    return [c for c in caption if c["spurious"]], x, y, np.argmax(x @ classes.T, axis=1)


def kept_for(prep, candidates: list[dict], conditional: float, top: int, seed: int = 0) -> tuple[list[str], str]:
    """The attributes auto keeps at this conditional threshold (caption side, then the image side), and
    the image side's test in words (residual hard images, zero-shot's relative accuracy on them)."""
    spurious, x, y, zeroshot_pred = image_side_inputs(prep, candidates, conditional)
    found = image_candidate(x, y, spurious, zeroshot_pred, seed)
    ranked = [c["attribute"] for c in spurious]
    if found is not None and found["found"]:
        ranked.append(found["attribute"])
    image_side = "" if found is None else f" [image side: {found['residual_errors']} residual, zero-shot ratio " \
                                          f"{found['zeroshot_ratio']:.2f}]"
    return ranked[:top], image_side


def largest_ratio(prep, candidates: list[dict], seed: int = 0) -> float:
    """The image side's ratio that decides: the largest over the hard sets with enough residual images."""
    spurious, x, y, zeroshot_pred = image_side_inputs(prep, candidates)
    by_captions = explained(y, spurious)
    tests = [residual_test(hard, by_captions, zeroshot_pred == y) for hard in hard_sets(x, y, seed) or []]
    return max((t["ratio"] for t in tests if t["enough"]), default=0.0)


def judge(biases: list[str], kept: list[str]) -> tuple[bool, int]:
    """(every bias found, number of distractors kept)."""
    unnamed = [k for k in kept if k.startswith("unnamed")]
    named = [k for k in kept if not k.startswith("unnamed")]
    found = set(named) | ({UNSEEN} if unnamed else set())
    distractors = len([k for k in named if k not in biases]) + (len(unnamed) if UNSEEN not in biases else 0)
    return set(biases) <= found, distractors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", help="a grid YAML whose datasets are the tasks (dev)")
    ap.add_argument("--planted", action="store_true", help="the planted tasks instead of a suite")
    ap.add_argument("--conditional", default=None, help="comma-separated thresholds to try "
                    f"(default {DISCOVERY_MIN_CONDITIONAL} and 0, i.e. off)")
    ap.add_argument("--top", type=int, default=DISCOVER_TOP)
    ap.add_argument("--zeroshot-ratio", default=None, help="comma-separated thresholds of the image side's test "
                    f"to try at the default conditional one (default: {unnamed.ZEROSHOT_RATIO} only)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.planted:
        datasets = [make_task_dataset(t) for t in planted_tasks()]
    elif args.suite:
        datasets = [load_dataset(d.name) for d in load_grid(presets.resolve(args.suite)).datasets]
    else:
        ap.error("give a suite (a preset name or grid file) or --planted")
    thresholds = ([float(t) for t in args.conditional.split(",")] if args.conditional
                  else [0.0, DISCOVERY_MIN_CONDITIONAL])
    ratios = [float(t) for t in args.zeroshot_ratio.split(",")] if args.zeroshot_ratio else None
    default_ratio = unnamed.ZEROSHOT_RATIO
    if ratios:
        thresholds = [DISCOVERY_MIN_CONDITIONAL]
    backbone = load_backbone(TINY)
    results = {t: [] for t in (ratios or thresholds)}
    for ds in datasets:
        prep = prepare(ds, backbone, progress=False)
        candidates = discover_on(prep, load_vocabulary(None, ds))
        line = [f"{ds.name} [{', '.join(ds.attribute_names)}]"]
        if ratios:
            line.append(f"ratio {largest_ratio(prep, candidates):.3f}")
        for t in ratios or thresholds:
            if ratios:
                unnamed.ZEROSHOT_RATIO = t
            kept, image_side = kept_for(prep, candidates, DISCOVERY_MIN_CONDITIONAL if ratios else t, args.top)
            hit, distractors = judge(list(ds.attribute_names), kept)
            results[t].append((list(ds.attribute_names), hit, distractors))
            line.append(f"{t:g}: {', '.join(kept) or 'nothing'}{'' if hit else ' (miss)'}{image_side}")
        print("  ".join(line), flush=True)
    print(f"\n| {'zero-shot ratio' if ratios else 'min conditional'} | tasks | all biases found | tasks with the {UNSEEN}: found | "
          "tasks keeping a distractor | distractors per task |\n|---|---|---|---|---|---|")
    for t, rows in results.items():
        marked = [r for r in rows if UNSEEN in r[0]]
        mark_hits = sum(r[1] for r in marked)
        default = t == (default_ratio if ratios else DISCOVERY_MIN_CONDITIONAL)
        print(f"| {t:g}{' *' if default else ''} | {len(rows)} | "
              f"{100 * np.mean([r[1] for r in rows]):.0f}% | "
              f"{100 * mark_hits / max(len(marked), 1):.0f}% ({mark_hits}/{len(marked)}) | "
              f"{100 * np.mean([r[2] > 0 for r in rows]):.0f}% | {np.mean([r[2] for r in rows]):.2f} |")


if __name__ == "__main__":
    main()
