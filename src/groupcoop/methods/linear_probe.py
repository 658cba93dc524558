"""CLIP's linear probe, plain and group-balanced: logistic regression on the image features."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool

from ..schema import Frozen, Int, PositiveList
from .base import FitTask, Fitted, Recipe, balanced_weights, score_entry, score_text, selection_score


class LinearProbeParams(Frozen):
    """CLIP's linear probe [Radford et al., ICML 2021, sec. 3.2 / appendix A.3]: L2-regularised
    logistic regression on the frozen image features (sklearn; L-BFGS as CLIP, Newton-Cholesky
    for two classes), ERM on the training split.
    CLIP sweeps C on a validation split; we fit every C of `c_values` and keep the one with the
    best validation score of the run's selection rule (worst-group accuracy by default; ties:
    better average, then smaller C), as every method here selects. `standardize` fits on standardised features (folded back into
    the head's weights and bias)."""

    c_values: PositiveList = [0.01, 0.1, 1.0, 10.0, 100.0]
    standardize: StrictBool = True
    max_iter: Annotated[Int, Field(ge=10, le=100_000)] = 1000


class LinearProbeBalancedParams(LinearProbeParams):
    """The linear probe with a group-balanced loss: each training example weighted by the
    inverse frequency of its group, n / (G * n_g) (G = groups present), so every group
    carries the same total weight [the reweighting baseline of Sagawa et al., ICLR 2020;
    Idrissi et al., CLeaR 2022]."""


def fit_probe(task: FitTask, hp: LinearProbeParams, balanced: bool = False) -> Fitted:
    """Logistic regression on the training features for every C; keep the best by the run's selection rule."""
    from .linear import Scaler, fit_logreg, head_from_logreg, logreg_parameters

    train, val, n_classes = task.train, task.val, task.n_classes
    x, y = train.feats.numpy(), train.y
    group_weights = balanced_weights(train.groups) if balanced else None
    scaler = Scaler.fit(x, hp.standardize)
    xs = scaler(x)
    best, scores = None, []
    for C in hp.c_values:
        coef, intercept = fit_logreg(xs, y, n_classes, C, False, task.seed, hp.max_iter,
                                     sample_weight=None if group_weights is None else group_weights[train.groups])
        head = head_from_logreg(coef, intercept, scaler, n_classes)
        worst, avg = selection_score(head, val)
        entry = score_entry((worst, avg), task.selection_key)
        scores.append({"C": C, **entry})
        task.log(f"  C {C:g}: {score_text(entry)}")
        key = (worst, avg, -C)
        if best is None or key > best[0]:
            best = (key, C, head)
    details = {"selection": {"C": best[1], "rule": f"best {task.plan.selection.describe}, then smaller C",
                             "scores": scores}}
    if balanced:
        details["group_weights"] = [float(w) for w in group_weights]
    return Fitted(best[2], logreg_parameters(n_classes, x.shape[1]), {"linear_probe": details})


def fit_balanced_probe(task: FitTask, hp: LinearProbeBalancedParams) -> Fitted:
    return fit_probe(task, hp, balanced=True)


LOGREG_PARAMS = "C*D + C (D + 1 for 2 classes)"
LINEAR_PROBE = Recipe(
    "linear_probe", "CLIP linear probe: logistic regression on the image features, ERM (C chosen on val)",
    "linear", "class", "none", LinearProbeParams, LOGREG_PARAMS, fit=fit_probe)
LINEAR_PROBE_BALANCED = Recipe(
    "linear_probe_balanced", "linear probe with a group-balanced loss (inverse group frequency weights)",
    "linear", "class", "train", LinearProbeBalancedParams, LOGREG_PARAMS, fit=fit_balanced_probe)
