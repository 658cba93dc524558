"""The `pseudo` labeler's variants: zero-shot assignments seed a model of one class's image features.

Groups then follow the image geometry but keep the names the prompts gave them. A variant is
an entry of `PSEUDO_VARIANTS` (`--variant` takes its name): a function
`(features, zero-shot scores, seed) -> value per image` for one class and attribute, and, where
the variant also looks across classes, a whole-split step run after every class is labelled.
`DEFAULT_PSEUDO_VARIANT` was picked on the dev suite (docs/defaults.md).

    `selftrain` - a linear model trained on the confident zero-shot assignments relabels
               every image (it learns the values' frequencies);
    `selftrain_balanced` - the same with a uniform prior over values, so ambiguous images
               are not pulled into the majority;
    `recall` - self-training and zero-shot; where they disagree, the rarer value;
    `calibrated` - zero-shot after removing each value prompt's mean score over the class;
    `kmeans` - K-means initialised at the zero-shot centroids;
    `gmm`    - diagonal Gaussian mixture whose means, weights and variances start from the
               zero-shot assignment;
    `blend`  - K-means (zero-shot init) on features concatenated with the zero-shot score
               vector, scaled to weigh `BLEND_WEIGHT` times the features' spread;
    `adaptive` - `recall` per class, then adaptive.py's whole-split step: the image geometry
               where zero-shot does not see the attribute.

Imports no scikit-learn until a variant runs (settings are checked before anything heavy loads).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .adaptive import relabel_unseen

SELFTRAIN_DROP = 0.3  # share of least-confident zero-shot assignments left out of the seeds
BLEND_WEIGHT = 0.25  # `blend`: score block's spread relative to the features' spread


def fit_kmeans(x: np.ndarray, k: int, init, n_init: int, seed: int) -> np.ndarray:
    """K-means cluster ids, deterministic for a seed (duplicate points / empty clusters are no errors)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=k, init=init, n_init=n_init, random_state=seed)
        return model.fit_predict(x)


def _zeroshot_centroids(x: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mean of the images zero-shot assigns to each value; for a value that gets none, the
    image scoring highest for it (so every cluster starts somewhere sensible)."""
    assigned = np.argmax(scores, axis=1)
    centroids = np.empty((scores.shape[1], x.shape[1]))
    for v in range(scores.shape[1]):
        members = assigned == v
        centroids[v] = x[members].mean(axis=0) if members.any() else x[np.argmax(scores[:, v])]
    return centroids


def _pseudo_kmeans(x: np.ndarray, scores: np.ndarray, seed: int) -> np.ndarray:
    """K-means started at the zero-shot centroids: cluster v keeps value v's name."""
    return fit_kmeans(x, scores.shape[1], _zeroshot_centroids(x, scores), 1, seed)


def _pseudo_gmm(x: np.ndarray, scores: np.ndarray, seed: int) -> np.ndarray:
    """Diagonal Gaussian mixture whose means, weights and variances start from the zero-shot
    assignment (component v = value v)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    k = scores.shape[1]
    assigned = np.argmax(scores, axis=1)
    counts = np.bincount(assigned, minlength=k)
    floor = 1e-3 * x.var(axis=0).mean() + 1e-12  # keeps tiny components from collapsing
    var = np.tile(x.var(axis=0), (k, 1))  # fallback for values with < 2 images
    for v in np.flatnonzero(counts >= 2):
        var[v] = x[assigned == v].var(axis=0)
    model = GaussianMixture(
        n_components=k,
        covariance_type="diag",
        reg_covar=floor,
        means_init=_zeroshot_centroids(x, scores),
        weights_init=(counts + 1) / (counts.sum() + k),
        precisions_init=1.0 / (var + floor),
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x).predict(x)


def _pseudo_blend(x: np.ndarray, scores: np.ndarray, seed: int) -> np.ndarray:
    """Zero-shot-initialised K-means on [features, scaled scores]: the prompts keep a say
    in the clustering, not only in its start."""
    s = scores - scores.mean(axis=1, keepdims=True)  # only differences between values matter
    feat_spread = np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())
    score_spread = np.sqrt(((s - s.mean(axis=0)) ** 2).sum(axis=1).mean())
    if score_spread > 0:
        s = s * (BLEND_WEIGHT * feat_spread / score_spread)
    return _pseudo_kmeans(np.hstack([x, s]), scores, seed)


def _confident_seeds(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot assignments and the mask of the confident ones (top 70% by score margin)."""
    assigned = np.argmax(scores, axis=1)
    top2 = np.sort(scores, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return assigned, margin >= np.quantile(margin, SELFTRAIN_DROP)


def _selftrain(x: np.ndarray, scores: np.ndarray, seed: int, balanced: bool) -> np.ndarray:
    """The confident zero-shot assignments train a logistic regression on the image features,
    which then labels every image: the prompts name the groups, the feature geometry settles
    the ambiguous images and overrules isolated zero-shot mistakes. `balanced` weighs the
    values equally (a uniform prior) instead of learning their frequencies. A value with fewer
    than two confident seeds cannot be learned; then K-means started at the zero-shot
    centroids is used.
    """
    from sklearn.linear_model import LogisticRegression

    assigned, confident = _confident_seeds(scores)
    if np.bincount(assigned[confident], minlength=scores.shape[1]).min() < 2:
        return _pseudo_kmeans(x, scores, seed)
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed,
                               class_weight="balanced" if balanced else None)
    return model.fit(x[confident], assigned[confident]).predict(x)


def _pseudo_selftrain(x: np.ndarray, scores: np.ndarray, seed: int) -> np.ndarray:
    """Self-training that learns the values' frequencies from the confident seeds."""
    return _selftrain(x, scores, seed, balanced=False)


def _pseudo_selftrain_balanced(x: np.ndarray, scores: np.ndarray, seed: int) -> np.ndarray:
    """Self-training with a uniform prior over values: ambiguous images are not pulled into the majority."""
    return _selftrain(x, scores, seed, balanced=True)


def _pseudo_calibrated(x: np.ndarray, scores: np.ndarray, seed: int) -> np.ndarray:
    """Zero-shot after removing each value prompt's mean score over the class's images: a prompt
    that scores everything high (a biased phrase) no longer takes the ambiguous images."""
    return np.argmax(scores - scores.mean(axis=0, keepdims=True), axis=1)


def _pseudo_recall(x: np.ndarray, scores: np.ndarray, seed: int) -> np.ndarray:
    """Self-training and zero-shot, and where they disagree the rarer value: a minority image
    that either of them finds keeps its own group."""
    trained, zeroshot = _selftrain(x, scores, seed, balanced=False), np.argmax(scores, axis=1)
    counts = np.bincount(trained, minlength=scores.shape[1])
    return np.where(counts[zeroshot] < counts[trained], zeroshot, trained)


@dataclass(frozen=True)
class Variant:
    """A pseudo variant: its per-class step and, if it also looks across classes, its whole-split
    step `(values (n, k), feats, y, sizes, scores, seed, reference) -> values` (adaptive.py)."""

    label: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    whole_split: Callable | None = None


PSEUDO_VARIANTS: dict[str, Variant] = {  # --variant takes these names
    "selftrain": Variant(_pseudo_selftrain),
    "selftrain_balanced": Variant(_pseudo_selftrain_balanced),
    "calibrated": Variant(_pseudo_calibrated),
    "recall": Variant(_pseudo_recall),
    "kmeans": Variant(_pseudo_kmeans),
    "gmm": Variant(_pseudo_gmm),
    "blend": Variant(_pseudo_blend),
    "adaptive": Variant(_pseudo_recall, whole_split=relabel_unseen),
}
DEFAULT_PSEUDO_VARIANT = "adaptive"  # chosen on the dev suite (docs/defaults.md)
assert DEFAULT_PSEUDO_VARIANT in PSEUDO_VARIANTS
