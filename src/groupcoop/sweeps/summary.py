"""A sweep's summary: `runs.csv`, `table.md`, `summary.json` and `report.html` (`write_summary`),
rebuilt from whatever run folders exist, so it can be made again after all shards finish.

`table.md` holds mean ± std over seeds (`table_md`); with several datasets, the suite aggregate
over tasks with bootstrap intervals (`suite_aggregate`) and the focus method against every other
(`focus_table`).
"""

from __future__ import annotations

from pathlib import Path

from ..metrics import HEADLINE
from ..reports.html import md_cell, pct
from ..reports.sweep import method_label
from .grid import Grid, RunSpec


def collect(specs: list[RunSpec], out: Path) -> list[dict]:
    """One row per finished run of the grid: its keys, headline metrics (val and test), run folder
    (relative to `out`) and provenance (versions, commit, host, start and wall time)."""
    from ..runs.provenance import CSV_COLUMNS, PROVENANCE

    from ..runs.folder import read_metrics

    rows = []
    for spec in specs:
        metrics = read_metrics(out / spec.folder)
        if metrics is None:  # not run yet, or damaged (the next sweep redoes it)
            continue
        row = dict(spec.keys())
        for split in ("test", "val"):
            for key in HEADLINE:
                value = metrics.get("splits", {}).get(split, {}).get(key)
                row[f"{split}_{key}"] = value
        if "group_quality" in metrics:
            row["group_agreement"] = metrics["group_quality"].get("accuracy")
            row["group_min_recall"] = metrics["group_quality"].get("min_recall")
        row["run_folder"] = spec.folder.as_posix()
        made = metrics.get(PROVENANCE) if isinstance(metrics.get(PROVENANCE), dict) else {}
        row.update({key: made.get(key) for key in CSV_COLUMNS})
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> str:
    """Accuracies over seeds as "81.2 ± 1.3" (one seed: "81.2"), "-" for none."""
    import numpy as np

    if not values:
        return "-"
    return pct(float(np.mean(values)), float(np.std(values)) if len(values) > 1 else None)


def table_md(rows: list[dict], split: str = "test") -> str:
    """Worst-group and average accuracy (%), mean ± std over seeds: methods x datasets, or datasets
    as rows when there are more datasets than methods (a suite)."""
    methods = list(dict.fromkeys(method_label(r) for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))

    def cell(m: str, d: str) -> str:
        sel = [r for r in rows if method_label(r) == m and r["dataset"] == d]
        wga = [r[f"{split}_worst_group_acc"] for r in sel if r[f"{split}_worst_group_acc"] is not None]
        avg = [r[f"{split}_avg_acc"] for r in sel if r[f"{split}_avg_acc"] is not None]
        return f"{_mean_std(wga)} / {_mean_std(avg)}" if sel else "-"

    by_dataset = len(datasets) > len(methods)
    first, columns = ("dataset", methods) if by_dataset else ("method", datasets)
    lines = [f"{split} split, accuracy in % (mean ± std over seeds); each cell: worst-group / average", "",
             f"| {first} | " + " | ".join(map(md_cell, columns)) + " |", "|---|" + "---|" * len(columns)]
    for r in (datasets if by_dataset else methods):
        lines.append(f"| {md_cell(r)} | " + " | ".join(cell(c, r) if by_dataset else cell(r, c) for c in columns) + " |")
    return "\n".join(lines)


def per_task(rows: list[dict], split: str = "test", key: str = "worst_group_acc") -> dict[str, dict[str, float]]:
    """{method label: {dataset: mean over seeds}}."""
    import numpy as np

    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        value = r.get(f"{split}_{key}")
        if value is not None:
            out.setdefault(method_label(r), {}).setdefault(r["dataset"], []).append(value)
    return {m: {d: float(np.mean(v)) for d, v in by.items()} for m, by in out.items()}


def bootstrap_ci(diffs, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `diffs` (resampling tasks)."""
    import numpy as np

    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n, len(diffs)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def suite_aggregate(rows: list[dict], baselines: list[str], split: str = "test") -> tuple[str, dict]:
    """Per method over tasks: mean worst-group, gain over each baseline with a bootstrap 95% interval,
    win rate (tasks where it is at least as good), and its worst task."""
    import numpy as np

    table = per_task(rows, split)
    baseline_labels = {b: next((m for m in table if m.split(" [")[0] == b), None) for b in baselines}
    lines = [f"{split} worst-group accuracy over tasks (%): mean; gain over each baseline with bootstrap 95% interval "
             "over tasks; win rate = share of tasks at least as good; worst task", ""]
    header = ["method", "tasks", "mean WGA"]
    for b, label in baseline_labels.items():
        if label:
            header += [f"gain vs {b}", f"win rate vs {b}"]
    header += ["worst task"]
    lines += ["| " + " | ".join(map(md_cell, header)) + " |", "|" + "---|" * len(header)]
    data = {}
    for m, by_task in table.items():
        tasks = sorted(by_task)
        cells = [md_cell(m), str(len(tasks)), f"{100 * np.mean([by_task[t] for t in tasks]):.1f}"]
        entry = {"tasks": len(tasks), "mean": float(np.mean([by_task[t] for t in tasks]))}
        for b, label in baseline_labels.items():
            if not label:
                continue
            common = [t for t in tasks if t in table[label]]
            diffs = np.array([by_task[t] - table[label][t] for t in common])
            if m == label or not len(common):
                cells += ["-", "-"]
                continue
            lo, hi = bootstrap_ci(diffs)
            win = float(np.mean(diffs >= 0))
            cells += [f"{100 * diffs.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]", f"{100 * win:.0f}%"]
            entry[f"gain_vs_{b}"] = {"mean": float(diffs.mean()), "ci95": [lo, hi], "win_rate": win,
                                     "min": float(diffs.min())}
        worst = min(tasks, key=lambda t: by_task[t])
        cells.append(f"{md_cell(worst)} ({100 * by_task[worst]:.1f})")
        entry["worst_task"] = {"task": worst, "wga": by_task[worst]}
        data[m] = entry
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), data


def focus_table(rows: list[dict], focus: str, split: str = "test") -> str:
    """`focus` against every other method over tasks: its worst-group gain (bootstrap 95% interval),
    win rate, and the tasks where it loses and where it gains most."""
    import numpy as np

    table = per_task(rows, split)
    if focus not in table:
        return f"({focus} has no finished runs)"
    mine = table[focus]
    lines = [f"{focus} against every other method, {split} worst-group accuracy (%), over the tasks both ran: "
             "mean gain with bootstrap 95% interval, share of tasks at least as good, largest loss and gain", "",
             "| other method | tasks | its mean WGA | gain of " + md_cell(focus) + " | win rate | largest loss | largest gain |",
             "|---|---|---|---|---|---|---|"]
    for m, theirs in sorted(table.items(), key=lambda kv: -np.mean(list(kv[1].values()))):
        common = sorted(set(mine) & set(theirs))
        if m == focus or not common:
            continue
        diffs = np.array([mine[t] - theirs[t] for t in common])
        lo, hi = bootstrap_ci(diffs)
        worst, best = common[int(np.argmin(diffs))], common[int(np.argmax(diffs))]
        lines.append(f"| {md_cell(m)} | {len(common)} | {100 * np.mean([theirs[t] for t in common]):.1f} | "
                     f"{100 * diffs.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {100 * np.mean(diffs >= 0):.0f}% | "
                     f"{100 * diffs.min():+.1f} ({md_cell(worst)}) | {100 * diffs.max():+.1f} ({md_cell(best)}) |")
    return "\n".join(lines)


def write_summary(specs: list[RunSpec], out: Path, grid: Grid) -> tuple[str, int]:
    """runs.csv, table.md and report.html from the finished runs; returns (table text, finished runs)."""
    import json

    from ..io.csv_safe import csv_text
    from ..io.write import atomic_text

    rows = collect(specs, out)
    if not rows:
        return "no finished runs yet", 0
    atomic_text(out / "runs.csv", csv_text(rows))
    text = table_md(rows)
    datasets = {r["dataset"] for r in rows}
    aggregate = None
    if len(datasets) > 1:
        agg_text, aggregate = suite_aggregate(rows, grid.baseline_methods)
        text += "\n\n" + agg_text
        if grid.focus:
            text += "\n\n" + focus_table(rows, grid.focus)
    missing = len(specs) - len(rows)
    if missing:
        text += f"\n\n({missing} of {len(specs)} runs not finished yet)"
    atomic_text(out / "table.md", text + "\n")
    atomic_text(out / "summary.json", json.dumps({"grid": grid.model_dump(), "runs": len(rows),
                                                  "aggregate": aggregate}, indent=1) + "\n")
    from ..reports.sweep import sweep_report_html

    atomic_text(out / "report.html", sweep_report_html(grid.name, rows, text))
    return text, len(rows)

