"""Logistic regression on the cached image features, folded into the same `Head` as every
other method (rows = linear vectors, scale 1.0, a bias), so evaluation, `predict`, `export`
and the reports work unchanged. Used by the linear probes and DFR (`methods/`).

scikit-learn fits on the L2-normalised features (standardised first by default; the scaler
is folded back into the head's weights and bias). Everything is deterministic given the seed:
sklearn gets `random_state=seed`, subsampling a local numpy generator.

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

from ..errors import UserError
from .head import Head


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


def balanced_subsample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of an equal number of examples of every present group (the smallest group's size)."""
    present = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    smallest = min(len(p) for p in present)
    return np.sort(np.concatenate([rng.permutation(p)[:smallest] for p in present]))
