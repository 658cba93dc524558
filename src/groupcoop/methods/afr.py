"""Automatic Feature Reweighting: an ERM linear head on part of the training split, then its last
layer retrained on the rest with the examples it fits worst upweighted. No group labels."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated

import numpy as np
from pydantic import BeforeValidator, Field, StrictBool

from ..errors import UserError
from ..schema import Frozen, Int, Number
from .base import FitTask, Fitted, Recipe, score_entry, score_text, selection_score
from .linear_probe import LOGREG_PARAMS


def _numbers(value):
    """'1,2' or [1, 2] -> [1, 2] (a --set value arrives as one string)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


NonNegativeList = Annotated[list[Annotated[Number, Field(ge=0, le=1e6)]], BeforeValidator(_numbers),
                            Field(min_length=1)]


class AFRParams(Frozen):
    """Automatic Feature Reweighting [Qiu, Potapczynski, Izmailov, Wilson, ICML 2023] on the frozen
    CLIP features, after their `train_embeddings.py` and notebooks/wb_celeba.ipynb. The training
    split is cut at random (seeded) into a base part (`base_fraction`, their 80%) and a reweighting
    part (the rest). Base: ERM L2 logistic regression on the base part (C = `base_c`; their base is
    the ERM network's own last layer). Reweighting: example i gets exp(-gamma * p_i), p_i the base
    model's probability of its true class, times 1 / (its class's count) (their class balancing),
    weights summing to 1. The last layer (weights and bias, from the base's) is retrained by
    full-batch gradient descent (`steps` steps, `lr`, gradient norm clipped to `grad_clip`, as
    theirs) on the weighted cross-entropy + lambda * ||(W, b) - (W_base, b_base)||^2. Their
    Waterbirds run: 500 steps at lr 0.01; on our standardised features lr 0.04 did better on
    the dev suite (label-free, synth-random:0..29: worst-group 39.2 vs 37.4).
    `early_stop`: keep each fit's step with the best validation score (their sweep's 'wga'),
    else its last step. Every (gamma, lambda) of the grid is fitted; the best validation score of
    the run's selection rule wins (ties: better average, then grid order). Grids: a trimmed union
    of theirs (Waterbirds gamma 4..20, lambda 0..0.3; CelebA gamma 1..3, lambda 1e-3..1e-1).
    Features standardised (statistics of the training split, folded back into the head)."""

    base_fraction: Annotated[Number, Field(gt=0, lt=1)] = 0.8
    base_c: Annotated[Number, Field(gt=0, le=1e6)] = 1.0
    gammas: NonNegativeList = [1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0]
    lambdas: NonNegativeList = [0.0, 0.001, 0.01, 0.1, 0.3]
    steps: Annotated[Int, Field(ge=1, le=100_000)] = 500
    lr: Annotated[Number, Field(gt=0, le=10)] = 0.04
    grad_clip: Annotated[Number, Field(gt=0, le=1e6)] = 1.0
    early_stop: StrictBool = True
    balance_classes: StrictBool = True
    standardize: StrictBool = True
    max_iter: Annotated[Int, Field(ge=10, le=100_000)] = 1000


# --- the pieces ------------------------------------------------------------------------------------

def split_train(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base rows, reweighting rows) of a seeded random cut of n rows, the first `fraction` for the base."""
    order = np.random.default_rng([seed, 2023]).permutation(n)
    cut = int(n * fraction)
    if cut < 1 or cut >= n:
        raise UserError(f"AFR cannot cut {n} training examples into a base part of {fraction:g} and a "
                        "reweighting part: both would need at least one; change base_fraction")
    return np.sort(order[:cut]), np.sort(order[cut:])


def afr_weights(p_true: np.ndarray, y: np.ndarray, gammas, balance: bool) -> np.ndarray:
    """(len(gammas), n) weights exp(-gamma * p_true), times 1 / class count when `balance`, each row summing to 1."""
    w = np.exp(-np.outer(np.asarray(gammas, dtype=np.float64), p_true))
    if balance:
        w = w / np.bincount(y)[y]
    return w / w.sum(axis=1, keepdims=True)


def fit_base(xs: np.ndarray, y: np.ndarray, n_classes: int, hp: AFRParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ERM logistic regression as one row per class: (W (C, D), b (C,)), a binary fit as rows -w/2, +w/2."""
    from .linear import fit_logreg

    coef, intercept = fit_logreg(xs, y, n_classes, hp.base_c, False, seed, hp.max_iter)
    if coef.shape[0] == 1:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def true_class_probability(xs: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    logits = xs @ w.T + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True))[np.arange(len(y)), y]


class ValKeys:
    """The selection key (worst part's accuracy, average accuracy) of many linear heads at once, on
    standardised val features: `selection_score` vectorised, for early stopping."""

    def __init__(self, xs, y, parts):
        import torch

        self.x, self.y = torch.as_tensor(xs, dtype=torch.float32), torch.as_tensor(y)
        counts = np.bincount(parts)
        present = np.flatnonzero(counts)
        self.onehot = torch.as_tensor((parts[:, None] == present[None, :]).astype(np.float32))
        self.counts = torch.as_tensor(counts[present].astype(np.float32))

    def __call__(self, W, B):
        """Keys of the heads W (C, M, D), B (C, M): two tensors of shape (M,)."""
        c, m, d = W.shape
        logits = (self.x @ W.reshape(c * m, d).T + B.reshape(-1)).view(-1, c, m)
        pred = logits.transpose(1, 2).contiguous().argmax(dim=-1)  # argmax over a non-last dim is slow
        correct = (pred == self.y[:, None]).float()  # (n, M)
        return (self.onehot.T @ correct / self.counts[:, None]).min(dim=0).values, correct.mean(dim=0)


@contextmanager
def one_thread():
    """Torch on one thread for the duration: these products are small, and on a busy machine extra
    threads only wait on each other (50x slower here); results also stop depending on the thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def retrain(xs, y, weights, lambdas, w0, b0, hp: AFRParams, val: ValKeys | None):
    """Full-batch gradient descent on every (weights row, lambda) at once: M independent last layers
    started at the base's, each step's gradient clipped to `grad_clip` per layer (torch's
    clip_grad_norm_). Returns (W (M, C, D), b (M, C), step of each) at each layer's best
    validation step (`val`), else at the last one."""
    import torch

    f32 = torch.float32  # class-major (C, M, ...) layout: one product per step, softmax over a non-last dim
    x = torch.as_tensor(xs, dtype=f32)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(y), w0.shape[0]).to(f32)[:, :, None]  # (n, C, 1)
    w = torch.as_tensor(weights, dtype=f32).T[:, None, :]  # (n, 1, M)
    lam = torch.as_tensor(lambdas, dtype=f32)
    (c, d), m = w0.shape, len(lam)
    W = torch.as_tensor(w0, dtype=f32)[:, None, :].repeat(1, m, 1)  # (C, M, D)
    B = torch.as_tensor(b0, dtype=f32)[:, None].repeat(1, m)  # (C, M)
    W0, B0 = W.clone(), B.clone()
    best = None
    for step in range(1, hp.steps + 1):
        logits = (x @ W.reshape(c * m, d).T + B.reshape(-1)).view(-1, c, m)
        r = w * (logits.softmax(dim=1) - onehot)  # (n, C, M): d(weighted CE)/d(logits)
        gW = (r.reshape(-1, c * m).T @ x).view(c, m, d) + 2 * lam[:, None] * (W - W0)
        gB = r.sum(dim=0) + 2 * lam * (B - B0)
        norm = (gW.pow(2).sum(dim=(0, 2)) + gB.pow(2).sum(dim=0)).sqrt()
        coef = (hp.grad_clip / (norm + 1e-6)).clamp(max=1.0) * hp.lr
        W -= coef[:, None] * gW
        B -= coef * gB
        if val is not None:
            best = _keep_best(best, val(W, B), W, B, step)
    W, B, steps = (W, B, [hp.steps] * m) if best is None else (best["W"], best["B"], best["step"].tolist())
    return W.transpose(0, 1).numpy(), B.T.numpy(), steps


def _keep_best(best, keys, W, B, step: int):
    """Per layer (dim 1 of W and B), this step's parameters where its (worst, avg) key beats the best
    so far (the first best stays)."""
    import torch

    worst, avg = keys
    if best is None:
        return {"worst": worst, "avg": avg, "W": W.clone(), "B": B.clone(),
                "step": torch.full(worst.shape, step, dtype=torch.int64)}
    better = (worst > best["worst"]) | ((worst == best["worst"]) & (avg > best["avg"]))
    best["worst"] = torch.where(better, worst, best["worst"])
    best["avg"] = torch.where(better, avg, best["avg"])
    best["W"][:, better], best["B"][:, better] = W[:, better], B[:, better]
    best["step"][better] = step
    return best


# --- the trainer -----------------------------------------------------------------------------------

def fit_afr(task: FitTask, hp: AFRParams) -> Fitted:
    """Base ERM on one part of train, AFR retraining on the other for every (gamma, lambda), the best by val.

    Reads the training split's features and classes only, never its groups.
    """
    with one_thread():
        return _fit(task, hp)


def _fit(task: FitTask, hp: AFRParams) -> Fitted:
    from .linear import Scaler, head_from_logreg, logreg_parameters

    train, val, n_classes = task.train, task.val, task.n_classes
    x, y = train.feats.numpy(), np.asarray(train.y)
    scaler = Scaler.fit(x, hp.standardize)
    xs = scaler(x)
    base_rows, rw_rows = split_train(len(y), hp.base_fraction, task.seed)
    w0, b0 = fit_base(xs[base_rows], y[base_rows], n_classes, hp, task.seed)
    base_entry = score_entry(selection_score(head_from_logreg(w0, b0, scaler, n_classes), val), task.selection_key)
    task.log(f"  base ERM on {len(base_rows)} examples: {score_text(base_entry)}")

    p_true = true_class_probability(xs[rw_rows], y[rw_rows], w0, b0)
    grid = [(g, lam) for g in hp.gammas for lam in hp.lambdas]
    per_gamma = afr_weights(p_true, y[rw_rows], hp.gammas, hp.balance_classes)
    weights = np.repeat(per_gamma, len(hp.lambdas), axis=0)
    keys = ValKeys(scaler(val.feats.numpy()), np.asarray(val.y), np.asarray(val.groups)) if hp.early_stop else None
    W, B, steps = retrain(xs[rw_rows], y[rw_rows], weights, [lam for _, lam in grid], w0, b0, hp, keys)

    best, scores = None, []
    for m, (gamma, lam) in enumerate(grid):
        head = head_from_logreg(W[m], B[m], scaler, n_classes)
        score = selection_score(head, val)
        scores.append({"gamma": gamma, "lambda": lam, "step": int(steps[m]),
                       **score_entry(score, task.selection_key)})
        if best is None or score > best[0]:  # strictly better: the first best in grid order stays
            best = (score, m, head)
    m = best[1]
    gamma, lam = grid[m]
    chosen = weights[m]
    task.log(f"  AFR gamma {gamma:g} lambda {lam:g} (step {steps[m]}): {score_text(scores[m])}")
    details = {
        "split": {"base": len(base_rows), "reweight": len(rw_rows), "base_fraction": hp.base_fraction},
        "base": base_entry,
        "selection": {"gamma": gamma, "lambda": lam, "step": int(steps[m]),
                      "rule": "best val score of the run's selection rule, then better average, then grid order",
                      "scores": scores},
        "reweight_p_true_mean": float(p_true.mean()),
        "effective_size": float(1.0 / np.sum(chosen ** 2)),  # 1 / sum w^2 of the chosen weights, as their notebook
    }
    return Fitted(best[2], logreg_parameters(n_classes, x.shape[1]), {"afr": details})


AFR = Recipe("afr", "AFR: last layer retrained with an ERM base model's poorly fit examples upweighted "
             "(no group labels)", "linear", "class", "none", AFRParams, LOGREG_PARAMS, fit=fit_afr)
