"""How well a labeler's groups agree with the true ones: the report `groupcoop groups` writes
(quality.json) and a run's metrics.json `group_quality`."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def quality(
    true_groups: np.ndarray,
    pred_groups: np.ndarray,
    names: Sequence[str] | Mapping[int, str] | None = None,
    pred_names: Sequence[str] | Mapping[int, str] | None = None,
) -> dict:
    """How well predicted groups agree with true ones (rows with a true group < 0 are skipped).

    `accuracy` counts agreement under the best one-to-one matching of predicted to true
    groups (Hungarian), so unnamed cluster ids are judged fairly; `named_accuracy` is plain
    equality (meaningful when ids share the true naming: gt, zeroshot, pseudo). Per true
    group: its matched predicted group `pred` (None if unmatched), sizes, precision, recall.
    `min_recall` is the smallest of those recalls (the worst-served true group);
    `confusion` holds the counts: `matrix[i][j]` images of true group `true[i]` that got
    predicted group `pred[j]` (ids in increasing order, only ids that occur). With `pred_names`
    (the labeler's group names) each matched group has its `pred_name` and the confusion its
    `pred_names`, so reports show names, not ids.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t = np.asarray(true_groups, dtype=np.int64)
    p = np.asarray(pred_groups, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"true_groups {t.shape} and pred_groups {p.shape} differ in shape")
    keep = t >= 0
    t, p = t[keep], p[keep]
    if len(t) == 0:
        raise ValueError("no rows with a true group to compare against")

    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    table = np.zeros((len(t_ids), len(p_ids)), dtype=np.int64)
    np.add.at(table, (t_inv, p_inv), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    match = dict(zip(rows.tolist(), cols.tolist()))

    groups = []
    for i, g in enumerate(t_ids.tolist()):
        n_true = int(table[i].sum())
        if i in match:
            jcol = match[i]
            hit, n_pred, pred = int(table[i, jcol]), int(table[:, jcol].sum()), int(p_ids[jcol])
        else:
            hit, n_pred, pred = 0, 0, None
        groups.append({
            "group": g,
            "name": _name(names, g),
            "pred": pred,
            **({"pred_name": None if pred is None else _name(pred_names, pred)} if pred_names is not None else {}),
            "n_true": n_true,
            "n_pred": n_pred,
            "precision": hit / n_pred if n_pred else 0.0,
            "recall": hit / n_true,
        })
    return {
        "accuracy": float(table[rows, cols].sum() / len(t)),
        "named_accuracy": float(np.mean(t == p)),
        "nmi": float(normalized_mutual_info_score(t, p)),
        "ari": float(adjusted_rand_score(t, p)),
        "n": int(len(t)),
        "min_recall": float(min(g["recall"] for g in groups)),
        "groups": groups,
        "confusion": {"true": t_ids.tolist(), "pred": p_ids.tolist(), "matrix": table.tolist(),
                      **({"pred_names": [_name(pred_names, g) for g in p_ids.tolist()]} if pred_names is not None
                         else {})},
    }


def _name(names, g: int) -> str:
    if names is None:
        return str(g)
    if isinstance(names, Mapping):
        return str(names.get(g, g))
    return str(names[g]) if 0 <= g < len(names) else str(g)
