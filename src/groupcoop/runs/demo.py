"""`groupcoop demo`: GroupCoOp against zero-shot, CoOp and the two strongest group-balanced
baselines (coop_balanced, dfr) on a synthetic task with the bundled tiny CLIP.

Features are extracted once (and cached); the learned-prompt runs train together in one fused
pass (`fusion.fit_runs`: each run's results as alone); each method and seed is a normal run
folder under OUT/<method>/seed-<k>/. OUT/summary.json maps each method to its metrics.json
content (seed 0) with an `over_seeds` block of means and standard deviations and the groups it
trained on (`training_groups`: "none", or the source with the training split's group sizes);
OUT/report.txt holds the table that is printed with the conclusion and what each method needs
(both decided here, `conclusion` and `needs_line`; report.html shows them too), OUT/report.png
the per-group bar chart of report.html (test split).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..backbones.families import TINY
from ..errors import UserError
from ..io.folders import atomic_folder, output_lock
from ..metrics import HEADLINE
from ..reports.demo import demo_groups_png, demo_report_html, demo_splits
from ..reports.html import pct

METHODS = ("zeroshot", "coop", "coop_balanced", "dfr", "groupcoop")


# a method's `needs_groups` in the demo's words (`Recipe.labels` says it for `groupcoop methods`)
DEMO_NEEDS = {"train": "group labels on the training split",
              "val": "group labels on the validation split (it trains on val)", "none": "no group labels"}


def mean_std(values: list[float]) -> dict:
    """Values over seeds as {mean, std (population), values}; `reports.html.pct` writes mean ± std."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """{method: metrics of seed 0 + over_seeds {split: {metric: mean/std/values, groups: [...]}}}."""
    summary = {}
    for method, per_seed in runs.items():
        entry = json.loads(json.dumps(per_seed[0]))
        entry.pop("history", None)
        over = {"seeds": [m["seed"] for m in per_seed]}
        for split in per_seed[0]["splits"]:
            block = {k: mean_std([m["splits"][split][k] for m in per_seed]) for k in HEADLINE}
            block["groups"] = [
                {"name": g["name"], "acc": mean_std([m["splits"][split]["groups"][i]["acc"] for m in per_seed])}
                for i, g in enumerate(per_seed[0]["splits"][split]["groups"])
            ]
            over[split] = block
        entry["over_seeds"] = over
        summary[method] = entry
    return summary


def comparison_table(summary: dict, split: str = "test") -> str:
    """Methods as rows: average, worst-group, unbiased and per-group accuracy (percent, mean ± std)."""
    n_seeds = len(next(iter(summary.values()))["over_seeds"]["seeds"])

    def fmt(stat: dict) -> str:
        return pct(stat["mean"], stat["std"] if n_seeds > 1 else None)

    first = next(iter(summary.values()))["over_seeds"][split]
    cols = ["method", "average", "worst-group", "unbiased"] + [g["name"] for g in first["groups"]]
    rows = []
    for method, entry in summary.items():
        o = entry["over_seeds"][split]
        rows.append([method, fmt(o["avg_acc"]), fmt(o["worst_group_acc"]), fmt(o["unbiased_acc"])]
                    + [fmt(g["acc"]) for g in o["groups"]])
    widths = [max(len(str(r[i])) for r in rows + [cols]) for i in range(len(cols))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
    seeds = f"{n_seeds} seeds, mean ± std" if n_seeds > 1 else "1 seed"
    return f"{split} split, accuracy in % ({seeds}):\n" + "\n".join(out)


def needs_line(summary: dict) -> str:
    """One sentence on the group labels each method needs (its metrics' `needs_groups`)."""
    by_need: dict[str, list[str]] = {}
    for m, entry in summary.items():
        by_need.setdefault(entry.get("needs_groups", "none"), []).append(m)
    return "What they need: " + "; ".join(f"{', '.join(ms)}: {DEMO_NEEDS.get(need, need)}"
                                          for need, ms in by_need.items()) + "."


def conclusion(summary: dict, split: str = "test") -> str:
    """The demo in one line: the best worst-group accuracy, and its margin over zero-shot."""
    wga = {m: e["over_seeds"][split]["worst_group_acc"]["mean"] for m, e in summary.items()}
    best = max(wga, key=wga.get)
    line = f"On the {split} split {best} has the best worst-group accuracy, {100 * wga[best]:.1f}%"
    if "zeroshot" in wga and best != "zeroshot":
        line += f", {100 * (wga[best] - wga['zeroshot']):+.1f} points over zero-shot ({100 * wga['zeroshot']:.1f}%)"
    others = sorted((v, m) for m, v in wga.items() if m != best)
    if others:
        line += f"; next best {others[-1][1]} ({100 * others[-1][0]:.1f}%)"
    return line + "."


def demo_html(summary: dict) -> str:
    """The demo's report.html: the page of `reports.demo` with the conclusion on its first split."""
    if not summary:
        raise ValueError("empty demo summary")
    return demo_report_html(summary, conclusion(summary, demo_splits(summary)[0]), needs_line(summary))


def training_groups(metrics: dict, sizes: dict[str, int]) -> dict | str:
    """What a run trained on: "none", or its group source with the training split's group sizes."""
    if metrics.get("needs_groups") != "train":
        return "none"
    return {"source": metrics.get("groups_source"), "sizes": sizes}


def run_demo(out: Path, seeds: int = 1, task: str = "synth-waterbirds", cache_dir=None, workers=None,
             progress: bool = True, log=print, device: str = "cpu") -> dict:
    """Run every demo method and seed into `out` (replaced whole when done; nothing is written on failure)."""
    from .fusion import fit_runs
    from .pipeline import check_run, prepare
    from .folder import fill_run_folder
    from .settings import make_settings

    base = make_settings({"dataset": task, "backbone": TINY, "method": METHODS[0], "device": device}, "demo")
    dataset, base, backbone = check_run(base)
    if not dataset.name.startswith("synth-"):
        raise UserError(f"--task {task} is not a synthetic task; the demo runs on synth-* tasks")
    log(f"groupcoop demo: {task} ({dataset.info['description']}), backbone {TINY}")
    prep = prepare(dataset, backbone, cache_dir=cache_dir, workers=workers, progress=progress)
    sizes = dict(zip(dataset.group_names(), map(int, dataset.group_counts("train"))))
    plan = [(method, seed) for method in METHODS for seed in range(seeds)]
    settings = [check_run(base.replace(method=m, seed=k, hyperparameters={}), dataset, backbone)[1] for m, k in plan]
    with output_lock(out), atomic_folder(out, kind="demo") as tmp:
        def done(i: int, run, seconds: float) -> None:
            method, seed = plan[i]
            fill_run_folder(tmp / method / f"seed-{seed}", run)
            test = run.metrics["splits"]["test"]
            log(f"  {method:<13} seed {seed}: test worst-group {100 * test['worst_group_acc']:.1f}  "
                f"average {100 * test['avg_acc']:.1f}  ({seconds:.1f} s)")

        finished = fit_runs(prep, settings, log=lambda s: None, done=done)
        runs: dict[str, list[dict]] = {}
        for (method, _), run in zip(plan, finished):
            runs.setdefault(method, []).append(run.metrics)
        summary = summarise(runs)
        for entry in summary.values():
            entry["training_groups"] = training_groups(entry, sizes)
        table = comparison_table(summary)
        text = "\n".join([table, "", conclusion(summary), needs_line(summary)])
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        (tmp / "report.txt").write_text(text + "\n", encoding="utf-8")
        (tmp / "report.png").write_bytes(demo_groups_png(summary))
        (tmp / "report.html").write_text(demo_html(summary), encoding="utf-8")
    log("")
    log(text)
    log(f"\nwrote {out}/summary.json, report.txt, report.png, report.html and one run folder per method and seed")
    return summary
