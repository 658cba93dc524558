"""Deep Feature Reweighting: a group-balanced L1 logistic regression retrained on the validation
split's groups (its true ones, or a labeler's where it has none), reading nothing of the training
split's labels."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field, StrictBool

from ..metrics import group_accuracies, worst_group_accuracy
from ..schema import Frozen, Int, PositiveList
from .base import FitTask, Fitted, Recipe
from .linear_probe import LOGREG_PARAMS


class DFRParams(Frozen):
    """Deep Feature Reweighting [Kirichenko, Izmailov, Wilson, ICLR 2023], DFR^Val on the frozen
    CLIP features, as in their `dfr_evaluate_spurious.py`: L1 logistic regression (liblinear)
    on group-balanced subsamples of the validation split. Tuning: `tune_repeats` times, split
    val in two random halves, fit on a group-balanced subsample of one half for every C of
    `c_values`, score worst-group accuracy on the other; the C with the best mean wins.
    Final: `repeats` group-balanced subsamples of the whole val split, one fit each with that
    C, coefficients and intercepts averaged. Features standardised (fit on val; the original
    fits the final scaler on the training split's features, we keep DFR on val alone).
    The original tunes on one half-split (`tune_repeats: 1`); we average five."""

    c_values: PositiveList = [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01]
    tune_repeats: Annotated[Int, Field(ge=1, le=1000)] = 5
    repeats: Annotated[Int, Field(ge=1, le=1000)] = 20
    standardize: StrictBool = True
    max_iter: Annotated[Int, Field(ge=10, le=100_000)] = 1000


def _worst_group(pred: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    return worst_group_accuracy(group_accuracies(pred, y, groups, int(groups.max()) + 1)[0])


def dfr_regression(x: np.ndarray, y: np.ndarray, g: np.ndarray, n_classes: int, hp: DFRParams, seed: int, log):
    """DFR's regression on (x, y, groups g): tune C on half-splits, then average `repeats` fits on
    group-balanced subsamples of all rows. Returns (coef, intercept, scaler, details for metrics.json)."""
    from .linear import Scaler, balanced_subsample, fit_logreg

    rng = np.random.default_rng(seed)
    totals = np.zeros(len(hp.c_values))
    for _ in range(hp.tune_repeats):
        order = rng.permutation(len(y))
        held, fit = order[:len(y) // 2], order[len(y) // 2:]
        fit = fit[balanced_subsample(g[fit], rng)]
        scaler = Scaler.fit(x[fit], hp.standardize)
        for k, C in enumerate(hp.c_values):
            coef, intercept = fit_logreg(scaler(x[fit]), y[fit], n_classes, C, True, seed, hp.max_iter)
            scores = scaler(x[held]) @ coef.T + intercept
            pred = (scores[:, 0] > 0).astype(int) if coef.shape[0] == 1 else scores.argmax(axis=1)
            totals[k] += _worst_group(pred, y[held], g[held])
    means = totals / hp.tune_repeats
    best = int(np.argmax(means))  # the first best in c_values order, as the original
    C = hp.c_values[best]
    for c, m in zip(hp.c_values, means):
        log(f"  C {c:g}: mean held-out worst-group {100 * m:.1f}")
    scaler = Scaler.fit(x, hp.standardize)
    coefs, intercepts, sizes = [], [], []
    for _ in range(hp.repeats):
        sub = balanced_subsample(g, rng)
        coef, intercept = fit_logreg(scaler(x[sub]), y[sub], n_classes, C, True, seed, hp.max_iter)
        coefs.append(coef)
        intercepts.append(intercept)
        sizes.append(len(sub))
    coef = np.mean(coefs, axis=0)
    details = {"selection": {"C": C, "rule": "best mean worst-group accuracy on held-out val halves",
                             "scores": [{"C": c, "heldout_worst_group_acc": float(m)}
                                        for c, m in zip(hp.c_values, means)]},
               "subsample_size": sizes[0], "nonzero_weights": int(np.count_nonzero(coef))}
    return coef, np.mean(intercepts, axis=0), scaler, details


def fit_dfr(task: FitTask, hp: DFRParams) -> Fitted:
    """DFR^Val: tune C on half-splits of val, then average `repeats` fits on balanced subsamples of all of val.

    Reads only the validation split's labels (classes, and its true groups or, where it has none,
    the labeler's: DFR with inferred groups).
    """
    from .linear import head_from_logreg, logreg_parameters

    val, n_classes = task.val_groups, task.n_classes
    x = val.feats.numpy()
    coef, intercept, scaler, details = dfr_regression(x, val.y, val.groups, n_classes, hp, task.seed, task.log)
    head = head_from_logreg(coef, intercept, scaler, n_classes)
    return Fitted(head, logreg_parameters(n_classes, x.shape[1]), {"dfr": details})


DFR = Recipe("dfr", "DFR: group-balanced L1 logistic regression retrained on the val split's groups",
             "linear", "class", "val", DFRParams, LOGREG_PARAMS, fit=fit_dfr)
