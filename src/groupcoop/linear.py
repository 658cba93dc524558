"""Linear heads on the cached image features: the linear probes, DFR and group_linear.

Every method here ends in the same `Head` as the prompt methods (rows = linear vectors,
scale 1.0, a bias), so evaluation, `predict`, `export` and the reports work unchanged.
Logistic regressions use scikit-learn on the L2-normalised features (standardised first by
default; the scaler is folded back into the head's weights and bias); `group_linear` uses
the one training loop of train.py with free vectors as rows. Everything is deterministic
given the seed: sklearn gets `random_state=seed`, subsampling a local numpy generator.

A binary logistic regression has one weight vector w and intercept b; its head has the rows
-w/2 and +w/2 (biases -b/2, +b/2), whose softmax equals the regression's probabilities.
Multi-class: multinomial L-BFGS for the probes, one-vs-rest binary fits for liblinear
(DFR, as sklearn's liblinear is binary only): the class with the largest score wins, as in
sklearn, but the head's softmax is not the one-vs-rest probability normalisation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .head import Head
from .methods import DFRParams, GroupLinearParams, LinearProbeParams
from .train import SplitData, TrainResult, train_rows, validation_score


# --- group_linear: free vectors trained by the prompt loop ---------------------------------------

class LinearRows:
    """C x G free vectors (and optional biases) as the loop's rows: logits = feats @ W.T (+ b)."""

    def __init__(self, n_rows: int, dim: int, bias: bool, device="cpu"):
        self.weight = nn.Parameter(torch.zeros(n_rows, dim, device=device))
        self.bias = nn.Parameter(torch.zeros(n_rows, device=device)) if bias else None

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def n_rows(self) -> int:
        return self.weight.shape[0]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters)

    def train(self, mode: bool = True) -> None:
        pass

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        out = feats @ self.weight.T
        return out if self.bias is None else out + self.bias

    @torch.no_grad()
    def head(self, n_classes: int, aggregate: str) -> Head:
        bias = None if self.bias is None else self.bias.detach().clone().float()
        return Head(self.weight.detach().clone().float(), 1.0, n_classes, aggregate, bias)


def fit_group_linear(hp: GroupLinearParams, train: SplitData, val: SplitData, n_classes: int, n_groups: int, dim: int,
                     seed: int, device="cpu", log=print) -> TrainResult:
    """GroupCoOp's objective on C*G free vectors (weights start at zero)."""
    rows = LinearRows(n_groups, dim, hp.bias, device)
    return train_rows(rows, hp, hp.objective(), train, val, n_classes, seed, log=log)


# --- logistic regression ------------------------------------------------------------------------

@dataclass
class LinearFit:
    """A fitted linear head and what metrics.json should say about the fit."""

    head: Head
    trainable: int
    details: dict


def _logreg(C: float, l1: bool, seed: int, max_iter: int, multiclass: bool = False):
    """sklearn's LogisticRegression, across sklearn versions: L1 with liblinear (DFR, binary), or L2 with
    L-BFGS (CLIP's solver; multinomial) for more than two classes and Newton-Cholesky for two (the same
    optimum of the same strictly convex loss, in a few Newton steps instead of hundreds of L-BFGS ones)."""
    from sklearn.linear_model import LogisticRegression

    solver = "liblinear" if l1 else "lbfgs" if multiclass else "newton-cholesky"
    if LogisticRegression().get_params().get("penalty") == "deprecated":  # sklearn >= 1.8: l1_ratio says it
        return LogisticRegression(C=C, l1_ratio=1.0 if l1 else 0.0, solver=solver, random_state=seed, max_iter=max_iter)
    return LogisticRegression(penalty="l1" if l1 else "l2", C=C, solver=solver, random_state=seed, max_iter=max_iter)


def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, C: float, l1: bool, seed: int, max_iter: int,
               sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(coef (K, D), intercept (K,)) with K = 1 for two classes, else n_classes (OvR for L1)."""
    from sklearn.exceptions import ConvergenceWarning

    missing = sorted(set(range(n_classes)) - set(np.unique(y).tolist()))
    if missing:
        raise UserError(f"class id(s) {missing} have no examples to fit the linear head on; "
                        "every class needs examples in the split it is trained on")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # small C on tiny subsamples; the fit is still used
        if n_classes > 2 and l1:  # liblinear is binary: one-vs-rest
            fits = [_logreg(C, l1, seed, max_iter).fit(x, (y == c).astype(int), sample_weight=sample_weight)
                    for c in range(n_classes)]
            return np.concatenate([f.coef_ for f in fits]), np.concatenate([f.intercept_ for f in fits])
        model = _logreg(C, l1, seed, max_iter, multiclass=n_classes > 2).fit(x, y, sample_weight=sample_weight)
        return model.coef_.astype(np.float64), model.intercept_.astype(np.float64)


@dataclass
class Scaler:
    """Per-feature standardisation (sklearn's StandardScaler), or the identity."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, on: bool) -> "Scaler":
        if not on:
            return cls(np.zeros(x.shape[1]), np.ones(x.shape[1]))
        std = x.std(axis=0, dtype=np.float64)
        return cls(x.mean(axis=0, dtype=np.float64), np.where(std > 0, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


def head_from_logreg(coef: np.ndarray, intercept: np.ndarray, scaler: Scaler, n_classes: int) -> Head:
    """The Head scoring raw (normalised) features like the regression scores standardised ones."""
    weight = coef / scaler.scale  # w . (x - m) / s + b = (w / s) . x + (b - (w / s) . m)
    bias = intercept - weight @ scaler.mean
    if n_classes == 2 and weight.shape[0] == 1:
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    return Head(torch.as_tensor(weight, dtype=torch.float32), 1.0, n_classes, "max",
                torch.as_tensor(bias, dtype=torch.float32))


def logreg_parameters(n_classes: int, dim: int) -> int:
    return dim + 1 if n_classes == 2 else n_classes * (dim + 1)


def group_balanced_weights(groups: np.ndarray) -> np.ndarray:
    """Per-example loss weights n / (G * n_g), G the groups present: every group weighs n / G in total."""
    counts = np.bincount(groups)
    present = int((counts > 0).sum())
    return len(groups) / (present * counts[groups].astype(np.float64))


def fit_linear_probe(hp: LinearProbeParams, train: SplitData, val: SplitData, n_classes: int, seed: int,
                     balanced: bool, log=print) -> LinearFit:
    """Logistic regression on the training features for every C; keep the best on val worst-group accuracy."""
    x, y = train.feats.numpy(), train.y
    weights = group_balanced_weights(train.groups) if balanced else None
    scaler = Scaler.fit(x, hp.standardize)
    xs = scaler(x)
    best, scores = None, []
    for C in hp.c_values:
        coef, intercept = fit_logreg(xs, y, n_classes, C, False, seed, hp.max_iter, sample_weight=weights)
        head = head_from_logreg(coef, intercept, scaler, n_classes)
        worst, avg = validation_score(head, val)
        scores.append({"C": C, "val_worst_group_acc": worst, "val_avg_acc": avg})
        log(f"  C {C:g}: val worst-group {100 * worst:.1f}  avg {100 * avg:.1f}")
        key = (worst, avg, -C)
        if best is None or key > best[0]:
            best = (key, C, head)
    details = {"selection": {"C": best[1], "rule": "best val worst-group accuracy (ties: average, then smaller C)",
                             "scores": scores}}
    if balanced:
        counts = np.bincount(train.groups)
        details["group_weights"] = [float(len(train.groups) / ((counts > 0).sum() * c)) if c else 0.0 for c in counts]
    return LinearFit(best[2], logreg_parameters(n_classes, x.shape[1]), details)


# --- DFR -------------------------------------------------------------------------------------------

def balanced_subsample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of an equal number of examples of every present group (the smallest group's size)."""
    present = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    smallest = min(len(p) for p in present)
    return np.sort(np.concatenate([rng.permutation(p)[:smallest] for p in present]))


def _worst_group(pred: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    return float(min(np.mean(pred[groups == g] == y[groups == g]) for g in np.unique(groups)))


def fit_dfr(hp: DFRParams, val: SplitData, n_classes: int, seed: int, log=print) -> LinearFit:
    """DFR^Val: tune C on half-splits of val, then average `repeats` fits on balanced subsamples of all of val.

    Reads only the validation split (features, classes, true groups).
    """
    x, y, g = val.feats.numpy(), val.y, val.groups
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
    head = head_from_logreg(np.mean(coefs, axis=0), np.mean(intercepts, axis=0), scaler, n_classes)
    details = {"selection": {"C": C, "rule": "best mean worst-group accuracy on held-out val halves",
                             "scores": [{"C": c, "heldout_worst_group_acc": float(m)}
                                        for c, m in zip(hp.c_values, means)]},
               "subsample_size": sizes[0], "nonzero_weights": int(np.count_nonzero(np.mean(coefs, axis=0)))}
    return LinearFit(head, logreg_parameters(n_classes, x.shape[1]), details)
