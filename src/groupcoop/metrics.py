"""Accuracy per group and the summaries built on it.

Every number is computed from predictions and labels handed in; weights such as the training
group shares come from the data, never from constants. Accuracies are fractions in [0, 1].
A group with no samples in a split is reported with n = 0 and acc = None, and is left out
of the worst-group and mean-over-groups figures (it says so instead of vanishing).
A dataset's own further metrics are named by its loader (`GroupDataset.extra_metrics`) and
computed here (`EXTRA_METRICS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# the headline numbers of a split, in the order tables show them, with their names in words
HEADLINE = {"avg_acc": "average", "worst_group_acc": "worst-group", "unbiased_acc": "unbiased"}


def group_accuracies(pred: np.ndarray, y: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy per group, count per group); accuracy is NaN for an empty group."""
    correct = (np.asarray(pred) == np.asarray(y)).astype(np.float64)
    groups = np.asarray(groups)
    counts = np.bincount(groups, minlength=n_groups).astype(np.int64)
    hits = np.bincount(groups, weights=correct, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return acc, counts


def worst_group_accuracy(acc: np.ndarray) -> float:
    return float(np.nanmin(acc))


def unbiased_accuracy(acc: np.ndarray) -> float:
    """Mean over non-empty groups."""
    return float(np.nanmean(acc))


def weighted_accuracy(acc: np.ndarray, weights: np.ndarray) -> float:
    """Per-group accuracy weighted by (training) group counts, e.g. Waterbirds' convention."""
    weights = np.asarray(weights, dtype=np.float64)
    present = ~np.isnan(acc)
    return float(np.sum(acc[present] * weights[present]) / np.sum(weights[present]))


def split_metrics(pred, y, groups, group_names: list[str], train_counts: np.ndarray | None = None,
                  extra: Sequence[str] = ()) -> dict:
    """The metrics.json block for one split.

    `train_counts` adds the train-weighted average ("train_weighted_acc"); `extra` names the
    further blocks to add (`EXTRA_METRICS`), e.g. 'multiceleba': WORST/UNBIASED/InDist and pair averages.
    """
    n_groups = len(group_names)
    acc, counts = group_accuracies(pred, y, groups, n_groups)
    out = {
        "avg_acc": float(np.mean(np.asarray(pred) == np.asarray(y))),
        "worst_group_acc": worst_group_accuracy(acc),
        "unbiased_acc": unbiased_accuracy(acc),
        "groups": [
            {"group": g, "name": group_names[g], "n": int(counts[g]), "acc": None if np.isnan(acc[g]) else float(acc[g])}
            for g in range(n_groups)
        ],
    }
    out["gap"] = out["avg_acc"] - out["worst_group_acc"]
    empty = [g for g in range(n_groups) if counts[g] == 0]
    if empty:
        out["empty_groups"] = empty
    if train_counts is not None:
        out["train_weighted_acc"] = weighted_accuracy(acc, train_counts)
    for name in extra:
        out.update(EXTRA_METRICS[name](acc, train_counts))
    return out


def multiceleba_metrics(acc: np.ndarray, train_counts: np.ndarray | None) -> dict:
    """MultiCelebA's WORST, UNBIASED, InDist and the aligned/conflicting pair averages.

    Groups g = 4*y + Young + 2*Male; GG (both biases aligned) = mean(g2, g5), GC = mean(g3, g4),
    CG = mean(g0, g7), CC (both conflicting) = mean(g1, g6).
    """
    pair = lambda a, b: float(np.nanmean([acc[a], acc[b]]))  # noqa: E731
    out = {
        "WORST": worst_group_accuracy(acc),
        "UNBIASED": unbiased_accuracy(acc),
        "GG": pair(2, 5),
        "GC": pair(3, 4),
        "CG": pair(0, 7),
        "CC": pair(1, 6),
    }
    if train_counts is not None:
        out["InDist"] = weighted_accuracy(acc, train_counts)
    return out


# further metrics a loader may declare for its dataset's true groups: name -> (acc, train_counts) -> block
EXTRA_METRICS = {"multiceleba": multiceleba_metrics}


def format_group_table(metrics: dict, title: str = "") -> str:
    """A per-group table of one split's metrics, for the terminal."""
    width = max([len(g["name"]) for g in metrics["groups"]] + [10])
    lines = [title] if title else []
    lines.append(f"  {'group':<{width}}  {'n':>6}  {'acc':>6}")
    for g in metrics["groups"]:
        acc = "empty" if g["acc"] is None else f"{100 * g['acc']:.1f}"
        lines.append(f"  {g['name']:<{width}}  {g['n']:>6}  {acc:>6}")
    lines.append(f"  average {100 * metrics['avg_acc']:.1f}   worst-group {100 * metrics['worst_group_acc']:.1f}"
                 f"   unbiased {100 * metrics['unbiased_acc']:.1f}")
    return "\n".join(lines)
