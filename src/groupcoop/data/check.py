"""Per-split, per-group counts of a loaded dataset (`groupcoop datasets check`)."""

from __future__ import annotations

from .base import SPLITS, GroupDataset


def dataset_report(ds: GroupDataset) -> dict:
    """{"dataset": name, "splits": {split: {"groups": [{"group", "name", "n"}, ...]}}}; rows
    without group labels are not counted."""
    names = ds.group_names()
    return {
        "dataset": ds.name,
        "splits": {
            split: {
                "groups": [
                    {"group": g, "name": names[g], "n": int(n)} for g, n in enumerate(ds.group_counts(split))
                ]
            }
            for split in SPLITS
        },
    }


def format_report(report: dict) -> str:
    """A readable table: one block per split, one line per group, with the split's total."""
    groups = [e for body in report["splits"].values() for e in body["groups"]]
    totals = {split: sum(e["n"] for e in body["groups"]) for split, body in report["splits"].items()}
    name_width = max([len("total"), *(len(e["name"]) for e in groups)])
    n_width = max([len("n"), *(len(str(t)) for t in totals.values())])
    lines = [f"dataset: {report['dataset']}"]
    for split, body in report["splits"].items():
        lines.append("")
        lines.append(f"{split:<6} {'group':>5}  {'name':<{name_width}}  {'n':>{n_width}}")
        for e in body["groups"]:
            lines.append(f"{'':<6} {e['group']:>5}  {e['name']:<{name_width}}  {e['n']:>{n_width}}")
        lines.append(f"{'':<6} {'':>5}  {'total':<{name_width}}  {totals[split]:>{n_width}}")
    return "\n".join(lines)
