"""What `bias_prompts: auto` keeps over a suite of tasks, caption and image side together (issue 24).

    python scripts/discovery_kept.py dev                                      # choose on the dev suite
    python scripts/discovery_kept.py discovery-dev-wide --conditional 0.15,0.3 --max-proxy 0.3,1.01
    python scripts/discovery_kept.py report                                   # report, never choose
    python scripts/discovery_kept.py --planted                                # the planted tasks of the tests
    python scripts/discovery_kept.py dev --vocabulary clip                    # real CLIP's vocabulary instead
    python scripts/discovery_kept.py report --reach                           # which biases were within reach

Per task, discovery runs on the training split (no bias label is read) and keeps at most `--top`
spurious candidates. A task is a hit when every true bias is found: a captioned one by its name,
any one (the never-captioned `mark` above all) by a kept unnamed attribute whose values go with
the bias's within each class (Cramér's V, size-weighted, at least `MATCH`; the true labels are
read here, to judge, never by discovery). With a vocabulary other than the world's own
(`--vocabulary clip`), whose names are not the world's, every kept attribute is judged that way.
A distractor is a kept attribute that is none of the task's biases. Printed per pair of the caption side's thresholds (`--conditional`:
`labelfree.DISCOVERY_MIN_CONDITIONAL`, `--max-proxy`: `labelfree.DISCOVERY_MAX_PROXY`): the hit
rate overall and on the tasks with the mark, the share of tasks that keep a distractor, and the
mean number of distractors kept. Each task's line shows what was kept and the image side's test
(set-apart images, zero-shot's relative accuracy on them, share near the boundary).

`--reach` asks, per true bias, whether any label-free signal here could find it, reading the true
labels (to judge, never to discover): `read`, how well its caption's zero-shot values go with it
within each class, and `held`, how well the image side's self-training keeps it when started on
its true values (the task's other biases projected out), both as within-class Cramér's V. A bias
is within reach when either is at least `MATCH`. Printed per bias kind: how often it was within
reach, and how often found (at the first thresholds given) within reach and out of it.
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
from groupcoop.grouping.discovery import discover_on, load_vocabulary, mark_spurious, read_off
from groupcoop.grouping.labelfree import DISCOVER_TOP, DISCOVERY_MAX_PROXY, DISCOVERY_MIN_CONDITIONAL, DISCOVERY_SCORE
from groupcoop.grouping.unnamed import SAME_PARTITION, image_candidate, project_out, seen_basis, self_trained
from groupcoop.grouping.vocabulary import SHIPPED, default_vocabulary, shipped_path
from groupcoop.runs.pipeline import prepare
from groupcoop.sweeps.grid import load_grid

UNSEEN = "mark"  # the world's never-captioned attribute
MATCH = SAME_PARTITION  # an unnamed attribute is the bias whose values go with its own this much within each class


def planted_tasks() -> list[SyntheticTask]:
    """Small tasks with one planted bias (or none: balanced groups), as in tests/test_unnamed.py."""
    def task(name, attr, values, train):
        return SyntheticTask(name=name, description="planted", biases=((attr, values),),
                             counts={"train": train, "val": (40,) * 4, "test": (40,) * 4})
    return [task("planted-nobias", "mark", ("none", "tag"), (200, 200, 200, 200)),
            task("planted-mark", "mark", ("none", "tag"), (380, 20, 20, 380)),
            task("planted-background", "background", ("grass", "water"), (380, 20, 20, 380))]


def image_side_inputs(prep, candidates: list[dict], conditional: float, proxy: float):
    """What the image side reads on the training split: the spurious caption candidates at these
    thresholds, best first, the features, the classes and zero-shot's predictions."""
    ds = prep.dataset
    rows = ds.split_indices("train")
    y = ds.y[rows]
    caption = sorted([c for c in candidates if not c.get("unnamed")], key=lambda c: (-c["score"], c["attribute"]))
    mark_spurious(caption, y, DISCOVERY_SCORE, conditional, proxy)
    x = prep.feats.numpy(rows).astype(np.float64)
    classes = prep.backbone.text_features(list(ds.class_names)).float().cpu().numpy()
    return [c for c in caption if c["spurious"]], x, y, np.argmax(x @ classes.T, axis=1)


def matched_bias(prep, y: np.ndarray, assigned: np.ndarray) -> str | None:
    """The true bias whose values go with `assigned` within each class (at least `MATCH`), if any."""
    ds = prep.dataset
    truth = ds.attrs[ds.split_indices("train")]
    match = {b: read_off(y, assigned, [{"assigned": truth[:, j]}]) for j, b in enumerate(ds.attribute_names)}
    best = max(match, key=match.get, default=None)
    return best if best is not None and match[best] >= MATCH else None


def kept_for(prep, candidates: list[dict], conditional: float, proxy: float, top: int, seed: int = 0,
             memo: dict | None = None, by_name: bool = True) -> tuple[list[str], str]:
    """The attributes auto keeps at these thresholds (caption side, then the image side), an unnamed one
    named by the true bias it matches (`MATCH`, else "unnamed"), and the image side's test in words.
    Without `by_name` a caption attribute is also shown as `attribute=bias` by the bias it matches."""
    spurious, x, y, zeroshot_pred = image_side_inputs(prep, candidates, conditional, proxy)
    kept = [c["attribute"] if by_name else f"{c['attribute']}={matched_bias(prep, y, c['assigned']) or ''}"
            for c in spurious]
    memo = {} if memo is None else memo  # the image side depends only on the kept caption candidates
    key = (tuple(kept), proxy)
    if key not in memo:
        memo[key] = image_candidate(x, y, spurious, zeroshot_pred, seed, proxy)
    found = memo[key]
    if found is not None and found["found"]:
        kept.append(f"unnamed={matched_bias(prep, y, found['assigned']) or ''}")
    image_side = "" if found is None else (f" [image side: {found['set_apart']} set apart, zero-shot ratio "
                                           f"{found['zeroshot_ratio']:.2f}, near boundary {found['near_boundary']:.3f}]")
    return kept[:top], image_side


def reach(prep, candidates: list[dict]) -> dict[str, tuple[float, float]]:
    """Per true bias, (read, held): its caption's zero-shot reading and the image side's hold on it (`--reach`)."""
    ds = prep.dataset
    rows = ds.split_indices("train")
    y, x = ds.y[rows], prep.feats.numpy(rows).astype(np.float64)
    truth = [np.unique(ds.attrs[rows, j], return_inverse=True)[1] for j in range(len(ds.attribute_names))]
    by_name = {c["attribute"]: c["assigned"] for c in candidates if not c.get("unnamed")}
    out = {}
    for j, bias in enumerate(ds.attribute_names):
        read = read_off(y, by_name[bias], [{"assigned": truth[j]}]) if bias in by_name else 0.0
        others = [t for k, t in enumerate(truth) if k != j]
        _, held = self_trained(project_out(x, seen_basis(x, y, others) if others else None), truth[j], seed=0)
        out[bias] = (read, read_off(y, held, [{"assigned": truth[j]}]))
    return out


def print_reach(rows: list[tuple[str, str, float, float, bool]]) -> None:
    """The `--reach` table: per bias kind, how often within reach, and found within reach and out of it; then
    the tasks whose every bias was within reach, and how many of them, and of the others, were found whole."""
    tasks = {}
    for task, *bias in rows:
        tasks.setdefault(task, []).append(bias)
    rows = [bias for task in tasks.values() for bias in task]
    print(f"\n| bias | tasks with it | within reach (read or held >= {MATCH}) | found within reach | found out of reach |"
          "\n|---|---|---|---|---|")
    for bias in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == bias]
        inside = [r for r in mine if max(r[1], r[2]) >= MATCH]
        outside = [r for r in mine if max(r[1], r[2]) < MATCH]
        print(f"| {bias} | {len(mine)} | {len(inside)} | {sum(r[3] for r in inside)}/{len(inside)} | "
              f"{sum(r[3] for r in outside)}/{len(outside)} |")
    inside = [all(b[3] for b in biases) for biases in tasks.values() if all(max(b[1], b[2]) >= MATCH for b in biases)]
    outside = [all(b[3] for b in biases) for biases in tasks.values() if any(max(b[1], b[2]) < MATCH for b in biases)]
    print(f"\nevery bias within reach on {len(inside)} of {len(tasks)} tasks ({100 * len(inside) / len(tasks):.0f}%): "
          f"all found on {sum(inside)} of them; on the {len(outside)} others, all found on {sum(outside)}")


def judge(biases: list[str], kept: list[str]) -> tuple[bool, int, bool]:
    """(every bias found, number of distractors kept, the mark found); an `attribute=bias` one counts as
    the bias it matched (none: a distractor)."""
    found = {k.partition("=")[2] if "=" in k else k for k in kept} - {""}
    distractors = len([k for k in found if k not in biases]) + (len(kept) - len(found))
    return set(biases) <= found, distractors, UNSEEN in found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", help="a grid YAML whose datasets are the tasks (dev)")
    ap.add_argument("--planted", action="store_true", help="the planted tasks instead of a suite")
    ap.add_argument("--conditional", default=str(DISCOVERY_MIN_CONDITIONAL),
                    help=f"comma-separated minimum conditional associations to try (default {DISCOVERY_MIN_CONDITIONAL})")
    ap.add_argument("--max-proxy", default=str(DISCOVERY_MAX_PROXY),
                    help=f"comma-separated maximum within-class association with a kept attribute to try "
                         f"(default {DISCOVERY_MAX_PROXY}; 1.01 is off)")
    ap.add_argument("--top", type=int, default=DISCOVER_TOP)
    ap.add_argument("--reach", action="store_true", help="also judge, per true bias, whether it was within reach "
                                                          "of the caption or image side (world vocabulary only)")
    ap.add_argument("--vocabulary", help="a shipped vocabulary's name (world, clip) or a file; default: each "
                                         "dataset's own (world for the synthetic tasks)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.planted:
        datasets = [make_task_dataset(t) for t in planted_tasks()]
    elif args.suite:
        datasets = [load_dataset(d.name) for d in load_grid(presets.resolve(args.suite)).datasets]
    else:
        ap.error("give a suite (a preset name or grid file) or --planted")
    if args.reach and args.vocabulary not in (None, "world"):
        ap.error("--reach judges a caption by its bias's name: use it with the world's own vocabulary")
    pairs = [(float(c), float(p)) for c in args.conditional.split(",") for p in args.max_proxy.split(",")]
    backbone = load_backbone(TINY)
    results, reached = {t: [] for t in pairs}, []
    for ds in datasets:
        prep = prepare(ds, backbone, progress=False)
        vocabulary = load_vocabulary(shipped_path(args.vocabulary) if args.vocabulary in SHIPPED else args.vocabulary, ds)
        by_name = args.vocabulary in (None, default_vocabulary(ds))  # else the names are not the world's
        candidates = discover_on(prep, vocabulary, image_side=False)  # kept_for runs it
        line, memo = [f"{ds.name} [{', '.join(ds.attribute_names)}]"], {}
        for t in pairs:
            kept, image_side = kept_for(prep, candidates, *t, args.top, memo=memo, by_name=by_name)
            hit, distractors, mark = judge(list(ds.attribute_names), kept)
            results[t].append((list(ds.attribute_names), hit, distractors, mark))
            line.append(f"{t[0]:g}/{t[1]:g}: {', '.join(kept) or 'nothing'}{'' if hit else ' (miss)'}{image_side}")
            if args.reach and t == pairs[0]:
                found = {k.partition("=")[2] if "=" in k else k for k in kept}
                for bias, (read, held) in reach(prep, candidates).items():
                    reached.append((ds.name, bias, read, held, bias in found))
                    line.append(f"{bias} read {read:.2f} held {held:.2f}")
        print("  ".join(line), flush=True)
    print(f"\n| min conditional / max proxy | tasks | all biases found | tasks with the {UNSEEN}: found | "
          "tasks keeping a distractor | distractors per task |\n|---|---|---|---|---|---|")
    for t, rows in results.items():
        marked = [r for r in rows if UNSEEN in r[0]]
        mark_hits = sum(r[3] for r in marked)
        default = t == (DISCOVERY_MIN_CONDITIONAL, DISCOVERY_MAX_PROXY)
        print(f"| {t[0]:g} / {t[1]:g}{' *' if default else ''} | {len(rows)} | "
              f"{100 * np.mean([r[1] for r in rows]):.0f}% | "
              f"{100 * mark_hits / max(len(marked), 1):.0f}% ({mark_hits}/{len(marked)}) | "
              f"{100 * np.mean([r[2] > 0 for r in rows]):.0f}% | {np.mean([r[2] for r in rows]):.2f} |")
    if reached:
        print_reach(reached)


if __name__ == "__main__":
    main()
