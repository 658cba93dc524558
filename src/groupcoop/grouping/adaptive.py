"""The `adaptive` pseudo variant's whole-split step: where zero-shot cannot see a bias attribute.

A bias attribute is one the classes lean on, so zero-shot labels of an attribute it can see
are associated with the class; where their association (Cramer's V over the whole split) is
below `WEAK_ASSOCIATION`, zero-shot cannot see it (a feature captions never named) and the
labels come from what an ERM classifier learned instead: within each class and each cell of
the attributes zero-shot does see, the images with a low out-of-fold class margin (the low
component of a two-Gaussian mixture on the margin, posterior above `CONFLICT_POSTERIOR`) are
the bias-conflicting ones. Their value names are then arbitrary (class c's aligned images get
value c mod size); the partition is what GroupCoOp needs. An attribute zero-shot cannot tell apart
at all (its value prompts are the same text: discovery's unnamed attribute) takes its values from
the image features' own partition instead (`unnamed.find_partition`, fitted on the training split
beside the seen attributes), where one is found. Imports no scikit-learn until it runs.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ..data.base import group_index

WEAK_ASSOCIATION = 0.4  # zero-shot labels less class-associated than this are not trusted (dev suite)
CONFLICT_POSTERIOR = 0.9  # how sure the margin mixture must be that an image is bias-conflicting (dev)
MIN_CELL = 4  # a class x cell with fewer images keeps its zero-shot-based labels
MARGIN_FOLDS = 2  # out-of-fold ERM margins, so an image's margin is not from a model that saw it


class Reference(NamedTuple):
    """The training split a whole-split variant learns from when it labels another split."""

    feats: np.ndarray
    y: np.ndarray
    scores: Sequence[np.ndarray]


def zeroshot_association(values: np.ndarray, y: np.ndarray, size: int) -> float:
    """Cramer's V between the class and an attribute's zero-shot values (add-one smoothed, so
    an empty cell is no error): how much the labels track the class, 0..1."""
    from scipy.stats.contingency import association

    classes = np.unique(y)
    if len(classes) < 2 or size < 2:  # nothing to be associated with
        return 0.0
    table = np.zeros((len(classes), size), dtype=np.int64)
    np.add.at(table, (np.searchsorted(classes, y), values), 1)
    return float(association(table + 1))


def class_margins(feats: np.ndarray, y: np.ndarray, seed: int, reference: Reference | None = None) -> np.ndarray | None:
    """Log-odds of each image's own class under a logistic regression on the features (ERM):
    out-of-fold, or fitted on `reference` (the training split) when given. None when the
    training images do not hold two classes with `MARGIN_FOLDS` images each, or an image's
    class is not among them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    train_y = y if reference is None else reference.y
    classes, counts = np.unique(train_y, return_counts=True)
    if len(classes) < 2 or counts.min() < MARGIN_FOLDS or not np.isin(y, classes).all():
        return None
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    if reference is None:
        folds = StratifiedKFold(MARGIN_FOLDS, shuffle=True, random_state=seed)
        prob = cross_val_predict(model, feats, np.searchsorted(classes, y), cv=folds, method="predict_proba")
    else:
        prob = model.fit(reference.feats, np.searchsorted(classes, train_y)).predict_proba(feats)
    own = np.clip(prob[np.arange(len(y)), np.searchsorted(classes, y)], 1e-6, 1 - 1e-6)
    return np.log(own) - np.log1p(-own)


def _low_margin(margins: np.ndarray, seed: int) -> np.ndarray | None:
    """Which images belong to the lower of two Gaussian components of their margins with
    posterior above `CONFLICT_POSTERIOR`; None when there are too few distinct margins to fit two."""
    from sklearn.mixture import GaussianMixture

    if len(margins) < MIN_CELL or np.ptp(margins) == 0:
        return None
    mixture = GaussianMixture(2, random_state=seed).fit(margins[:, None])
    low = np.argmin(mixture.means_.ravel())
    return mixture.predict_proba(margins[:, None])[:, low] > CONFLICT_POSTERIOR


_PARTITIONS: dict[tuple, object] = {}  # the training split's partition, fitted once for its three splits


def _partition(ref: Reference, seen: list[int], seed: int):
    """`unnamed.find_partition` on the training split beside the seen attributes' zero-shot values."""
    import hashlib

    from .unnamed import find_partition

    values = [np.argmax(ref.scores[j], axis=1) for j in seen]
    digest = hashlib.sha1(np.ascontiguousarray(ref.feats).tobytes() + np.ascontiguousarray(ref.y).tobytes()
                          + b"".join(np.ascontiguousarray(v).tobytes() for v in values)).hexdigest()
    key = (digest, seed)
    if key not in _PARTITIONS:
        _PARTITIONS.clear()  # one training split at a time
        _PARTITIONS[key] = find_partition(np.asarray(ref.feats, dtype=np.float64), ref.y, values, seed)
    return _PARTITIONS[key]


def _blind(scores: np.ndarray) -> bool:
    """Zero-shot cannot tell the values apart at all: every value's prompt scores the same."""
    return scores.shape[1] == 2 and bool(np.allclose(scores, scores[:, :1]))


def relabel_unseen(out: np.ndarray, feats, y, sizes, scores, seed: int, reference: Reference | None) -> np.ndarray:
    """Relabel the attributes whose zero-shot values hardly track the class by the ERM margin,
    within each class x cell of the attributes zero-shot does see; one zero-shot cannot tell apart
    at all, by the image features' own partition where there is one. Which attributes those are,
    the ERM and the partition come from the training split (`reference`, or this split itself)."""
    ref = reference or Reference(feats, y, scores)
    unseen = [j for j, s in enumerate(sizes)
              if zeroshot_association(np.argmax(ref.scores[j], axis=1), ref.y, int(s)) < WEAK_ASSOCIATION]
    blind = [j for j in unseen if _blind(ref.scores[j])]
    if blind and len(np.unique(ref.y)) == 2:
        part = _partition(ref, [j for j in range(len(sizes)) if j not in unseen], seed)
        if part is not None:
            out = out.copy()
            for j in blind:
                out[:, j] = part.labels(np.asarray(feats, dtype=np.float64))
            unseen = [j for j in unseen if j not in blind]
    margins = class_margins(feats, y, seed, reference) if unseen else None
    if margins is None:
        return out
    seen = [j for j in range(len(sizes)) if j not in unseen]
    cells = group_index(y, out[:, seen], [int(sizes[j]) for j in seen]) if seen else y
    out = out.copy()
    for j in unseen:
        size = int(sizes[j])
        for cell in np.unique(cells):
            rows = np.flatnonzero(cells == cell)
            low = _low_margin(margins[rows], seed)
            if low is None:  # too few images to split: the zero-shot-based labels stand
                continue
            aligned = int(y[rows[0]]) % size
            out[rows, j] = np.where(low, (aligned + 1) % size, aligned)
    return out
