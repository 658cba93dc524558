"""Training-free debiasing of the class prompts by projection: Orth-Proj and Orth-Cali.

The zero-shot class embeddings (template-ensembled, as `zeroshot`) are multiplied by a
projection that removes the bias attributes' text directions; the image features are left as
they are and nothing is trained. The bias prompts are the value phrases of the run's groups
(`spec.phrases`: the dataset's, `--bias-prompts`, or discovered with `--bias-prompts auto`);
without phrases (unnamed clusters) the classifier is plain zero-shot.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from ..data.base import apply_phrase
from ..errors import UserError
from ..schema import Number, Text
from .base import FitTask, Fitted, Recipe, needs_phrases
from .zeroshot import ZeroShotParams

SpuriousPrompts = Literal["phrase", "filler", "classes"]


class OrthProjParams(ZeroShotParams):
    """Orth-Proj [Chuang, Jampani, Li, Torralba, Jegelka, "Debiasing Vision-Language Models via
    Biased Prompts", arXiv 2302.00070, 2023]: class embeddings z -> P0 z, renormalised, with
    P0 = I - A (A^T A)^+ A^T the orthogonal complement of the span of the class-free spurious
    prompts' embeddings A (one per value of every bias attribute). Nothing is trained.

    `spurious` says how a value phrase ("{} on water") becomes a class-free prompt: `phrase`
    drops the class slot ("on water"), `filler` puts `filler` in it ("object on water"),
    `classes` averages the prompts of every class name ("round shape on water", ...).
    `classes` was chosen on the dev suite (label-free synth-random:0..29, best mean worst-group
    accuracy of orth_proj: classes 55.0, filler 53.2, phrase 49.4; zero-shot 48.1)."""

    spurious: SpuriousPrompts = "classes"
    filler: Text = "object"  # the class slot's word with spurious: filler


class OrthCaliParams(OrthProjParams):
    """Orth-Cali [Chuang et al., arXiv 2302.00070]: P = P0 (I + lam M)^-1, M the mean of
    (z_i - z_j)(z_i - z_j)^T over the positive pairs: prompts of the same class with two values
    of one attribute ("round shape on water", "round shape on grass"). lam 0 is Orth-Proj.
    The authors' runs use lam 1000 (their main.py default); 100 was chosen on the dev suite
    (mean worst-group accuracy 55.0 at 100, 54.0 at 1000, 52.9 at 10000, with spurious: classes)."""

    lam: Annotated[Number, Field(ge=0, le=1e9)] = 100.0


# --- the linear algebra (numpy, float64) ----------------------------------------------------------

def complement(directions: np.ndarray, rtol: float = 1e-8) -> tuple[np.ndarray, int]:
    """(I - Q Q^T, rank) with Q an orthonormal basis of the rows' span: A (A^T A)^+ A^T's complement."""
    d = directions.shape[1]
    if not len(directions):
        return np.eye(d), 0
    _, s, vt = np.linalg.svd(directions, full_matrices=False)
    q = vt[s > rtol * s[0]]
    return np.eye(d) - q.T @ q, len(q)


def pair_matrix(pairs: list[tuple[np.ndarray, np.ndarray]], d: int) -> np.ndarray:
    """M = mean over pairs of (z_i - z_j)(z_i - z_j)^T (zero without pairs)."""
    if not pairs:
        return np.zeros((d, d))
    diffs = np.stack([zi - zj for zi, zj in pairs])
    return diffs.T @ diffs / len(pairs)


def calibrated(p0: np.ndarray, m: np.ndarray, lam: float) -> np.ndarray:
    """P = P0 (I + lam M)^-1, the closed-form minimiser of ||P - P0||^2 + lam sum ||P (z_i - z_j)||^2."""
    g = np.eye(len(m)) + lam * m
    return np.linalg.solve(g.T, p0.T).T  # P0 G^-1 without forming the inverse


# --- the prompts ----------------------------------------------------------------------------------

def _texts(task: FitTask, texts: list[str], hp) -> np.ndarray:
    return task.backbone.text_features(texts, hp.templates).detach().cpu().double().numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def class_free(phrase: str, hp: OrthProjParams) -> str:
    """A value phrase as a class-free prompt: the slot dropped ("on water") or filled with `filler`."""
    return " ".join(apply_phrase(phrase, hp.filler if hp.spurious == "filler" else "").split())


def spurious_embeddings(task: FitTask, hp: OrthProjParams) -> tuple[np.ndarray, list[str]]:
    """(one embedding per value of every attribute, the texts they stand for)."""
    rows, shown = [], []
    for values in task.spec.phrases:
        if hp.spurious == "classes":  # (C, V, D) -> the class-averaged value embeddings
            per_class = np.stack([_texts(task, [apply_phrase(p, c) for p in values], hp)
                                  for c in task.dataset.class_names])
            rows.append(_unit(per_class.mean(axis=0)))
            shown += [f"mean over classes of {apply_phrase(p, '<class>')!r}" for p in values]
        else:
            texts = [class_free(p, hp) for p in values]
            rows.append(_texts(task, texts, hp))
            shown += texts
    return np.concatenate(rows), shown


def positive_pairs(task: FitTask, hp) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class and attribute, every pair of prompts naming two different values of it."""
    pairs = []
    for values in task.spec.phrases:
        for c in task.dataset.class_names:
            z = _texts(task, [apply_phrase(p, c) for p in values], hp)
            pairs += [(z[i], z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
    return pairs


# --- the trainers ---------------------------------------------------------------------------------

def _fit(task: FitTask, hp: OrthProjParams, lam: float | None, name: str) -> Fitted:
    import torch

    from .head import Head

    bb, spec = task.backbone, task.spec
    classes = _texts(task, list(task.dataset.class_names), hp)
    if spec.phrases is None:
        task.log(f"{name}: the groups have no value phrases (unnamed clusters), so nothing is projected: "
                 "plain zero-shot")
        info = {"directions": 0, "attributes": [], "lambda": lam, "note": "no bias phrases: zero-shot"}
        text = classes
    else:
        spurious, shown = spurious_embeddings(task, hp)
        p0, rank = complement(spurious)
        info = {"attributes": [list(v) for v in spec.value_names], "spurious": hp.spurious,
                "spurious_prompts": shown, "directions": rank, "lambda": lam}
        p = p0
        if lam is not None:
            pairs = positive_pairs(task, hp)
            p = calibrated(p0, pair_matrix(pairs, p0.shape[0]), lam)
            info["pairs"] = len(pairs)
        text = classes @ p.T
        if not np.all(np.linalg.norm(text, axis=1) > 1e-6):
            raise UserError(f"--method {name}: a class prompt lies in the span of the bias prompts and projects to "
                            "zero; give other --bias-prompts or class names")
        task.log(f"{name}: projected {rank} bias direction(s) out of the class prompts "
                 f"({'; '.join(' / '.join(v) for v in spec.value_names)})"
                 + (f", lambda {lam:g} over {info['pairs']} positive pairs" if lam is not None else ""))
    head = Head.from_text(torch.as_tensor(text, dtype=torch.float32), bb.logit_scale, task.n_classes, "max",
                          bias=bb.row_bias(task.n_classes))
    return Fitted(head, 0, {"orth": info})


def fit_orth_proj(task: FitTask, hp: OrthProjParams) -> Fitted:
    return _fit(task, hp, None, "orth_proj")


def fit_orth_cali(task: FitTask, hp: OrthCaliParams) -> Fitted:
    return _fit(task, hp, hp.lam, "orth_cali")


ORTH_WHAT = "projects the bias directions out of the class prompts"
ORTH_PROJ = Recipe("orth_proj", "Orth-Proj: class prompts projected orthogonal to the bias prompts' text "
                   "directions; nothing is trained", "text", "class", "none", OrthProjParams, "0",
                   fit=fit_orth_proj, check=needs_phrases("orth_proj", ORTH_WHAT), phrases=True)
ORTH_CALI = Recipe("orth_cali", "Orth-Cali: Orth-Proj calibrated so same-class prompts differing only in a bias "
                   "value map together (closed form); nothing is trained", "text", "class", "none", OrthCaliParams,
                   "0", fit=fit_orth_cali, check=needs_phrases("orth_cali", ORTH_WHAT), phrases=True)
