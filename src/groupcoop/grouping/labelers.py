"""Group labelers (gt | zeroshot | kmeans | pseudo) behind one interface, and a quality report.

A labeler gives each image a value index for every bias attribute; groups are then the
class x the product of all attributes, numbered with `group_index` (a1 least significant).
Every labeler except `gt` works PER CLASS: each class's images are labelled on their own,
because a bias value ("on water") looks different for each class and groups never cross
classes.

- `gt`: the dataset's own bias labels.
- `zeroshot`: argmax of the caller's zero-shot scores `attr_scores[j]` (n, n_values_j),
  cosine similarities to "a photo of a {class} {value phrase}".
- `kmeans`: K-means on the class's image features. Cluster ids carry no names, so they are
  returned raw (they are NOT aligned with value names); judge them with `quality`, which
  matches predicted to true groups one-to-one before counting. With several attributes it
  clusters once into prod(sizes) clusters and writes each id as mixed-radix digits (one per
  attribute): clustering the same features once per attribute would give every attribute
  the same split and leave most product groups empty.
- `pseudo` (the default when labels are missing): the zero-shot assignments seed a model of
  the class's image features, so groups follow the image geometry but keep the names the
  prompts gave them. Variants, chosen by `variant=` (default `DEFAULT_PSEUDO_VARIANT`,
  picked on the dev suite, see docs/defaults.md):
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
    `adaptive` - `recall` where zero-shot sees the attribute, the image geometry where it
               does not. A bias attribute is one the classes lean on, so zero-shot labels of an
               attribute it can see are associated with the class; where their association
               (Cramer's V over the whole split) is below `WEAK_ASSOCIATION`, zero-shot cannot
               see it (a feature captions never named) and the labels come from what an ERM
               classifier learned instead: within each class and each cell of the attributes
               zero-shot does see, the images with a low out-of-fold class margin (the low
               component of a two-Gaussian mixture on the margin, posterior above
               `CONFLICT_POSTERIOR`) are the bias-conflicting
               ones. Their value names are then arbitrary (class c's aligned images get value
               c mod size); the partition is what GroupCoOp needs.

A class with fewer images than clusters cannot be clustered: `pseudo` falls back to
zero-shot there and `kmeans` gives each image its own cluster. Everything is deterministic
for a given seed (estimators get `random_state=seed`; no global RNG is touched).

The names of the group sources (`LABELERS`) and of the pseudo variants (`PSEUDO_VARIANTS`)
are said here and nowhere else; `GroupingOptions` validates with them. Importing this module
imports no scikit-learn (settings are checked before anything heavy loads): the labelers
import it when they run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Mapping, NamedTuple, Sequence

import numpy as np
from pydantic import Field, model_validator

from ..choices import AUTO, DiscoveryScore
from ..data.base import group_index
from ..errors import UserError, close_matches
from .labelfree import DISCOVER_TOP, DISCOVERY_SCORE
from ..schema import Frozen, Int, PhraseLists, Text

KMEANS_N_INIT = 10  # restarts for plain `kmeans` (fixed so results do not depend on sklearn's default)
SELFTRAIN_DROP = 0.3  # share of least-confident zero-shot assignments left out of the seeds
BLEND_WEIGHT = 0.25  # `blend`: score block's spread relative to the features' spread
WEAK_ASSOCIATION = 0.4  # `adaptive`: zero-shot labels less class-associated than this are not trusted (dev suite)
CONFLICT_POSTERIOR = 0.9  # `adaptive`: how sure the margin mixture must be that an image is bias-conflicting (dev)
MIN_CELL = 4  # `adaptive`: a class x cell with fewer images keeps its zero-shot-based labels
MARGIN_FOLDS = 2  # `adaptive`: out-of-fold ERM margins, so an image's margin is not from a model that saw it

_MISSING_SCORES = (
    "the '{method}' group labeler needs zero-shot scores for every bias attribute: give the "
    "dataset's attribute phrases or pass --bias-prompts \"on land,on water\" "
    "(or use --groups gt / kmeans)"
)


class ClassPart(NamedTuple):
    """One class's images for one attribute: what a per-class labeler sees."""

    feats: np.ndarray | None  # (m, d) float64, or None when the labeler needs none
    scores: np.ndarray | None  # (m, size) zero-shot scores, or None
    truth: np.ndarray | None  # (m,) true value indices (gt only), or None
    size: int  # number of attribute values
    k: int  # number of clusters to make (== size except for kmeans with `clusters`)
    seed: int
    variant: str


@dataclass(frozen=True)
class Labeler:
    """A named way to label one class's images with one attribute's value indices."""

    name: str
    label: Callable[[ClassPart], np.ndarray]
    needs_scores: bool = False
    needs_truth: bool = False
    needs_feats: bool = False
    joint: bool = False  # True: label all attributes at once (unnamed clusters: kmeans)


# ---------------------------------------------------------------- per-class labelers


def _zeroshot(part: ClassPart) -> np.ndarray:
    return np.argmax(part.scores, axis=1)


def _gt(part: ClassPart) -> np.ndarray:
    return part.truth


def _kmeans(part: ClassPart) -> np.ndarray:
    m = len(part.feats)
    if m < part.k:  # too few images to cluster: each image is its own cluster
        return np.arange(m)
    return _fit_kmeans(part.feats, part.k, "k-means++", KMEANS_N_INIT, part.seed)


def _zeroshot_centroids(x: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mean of the images zero-shot assigns to each value; for a value that gets none, the
    image scoring highest for it (so every cluster starts somewhere sensible)."""
    assigned = np.argmax(scores, axis=1)
    centroids = np.empty((scores.shape[1], x.shape[1]))
    for v in range(scores.shape[1]):
        members = assigned == v
        centroids[v] = x[members].mean(axis=0) if members.any() else x[np.argmax(scores[:, v])]
    return centroids


def _fit_kmeans(x: np.ndarray, k: int, init, n_init: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # duplicate points / empty clusters are not errors here
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=k, init=init, n_init=n_init, random_state=seed)
        return model.fit_predict(x)


def _pseudo_kmeans(x: np.ndarray, scores: np.ndarray, seed: int) -> np.ndarray:
    """K-means started at the zero-shot centroids: cluster v keeps value v's name."""
    return _fit_kmeans(x, scores.shape[1], _zeroshot_centroids(x, scores), 1, seed)


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


PSEUDO_VARIANTS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "selftrain": _pseudo_selftrain,
    "selftrain_balanced": _pseudo_selftrain_balanced,
    "calibrated": _pseudo_calibrated,
    "recall": _pseudo_recall,
    "kmeans": _pseudo_kmeans,
    "gmm": _pseudo_gmm,
    "blend": _pseudo_blend,
    "adaptive": _pseudo_recall,  # per class as `recall`; then `_relabel_unseen` (whole split)
}


def _pseudo(part: ClassPart) -> np.ndarray:
    if len(part.feats) < part.size:  # too few images to cluster: keep the zero-shot names
        return _zeroshot(part)
    return PSEUDO_VARIANTS[part.variant](part.feats, part.scores, part.seed)


LABELERS: dict[str, Labeler] = {  # the group sources: --groups takes these names
    "gt": Labeler("gt", _gt, needs_truth=True),
    "zeroshot": Labeler("zeroshot", _zeroshot, needs_scores=True),
    "kmeans": Labeler("kmeans", _kmeans, needs_feats=True, joint=True),
    "pseudo": Labeler("pseudo", _pseudo, needs_scores=True, needs_feats=True),
}
GROUP_SOURCES: tuple[str, ...] = tuple(LABELERS)
DEFAULT_PSEUDO_VARIANT = "adaptive"  # chosen on the dev suite (docs/defaults.md)
WHOLE_SPLIT_VARIANTS = ("adaptive",)  # variants that also look across classes (`assign_attributes`)


class GroupingOptions(Frozen):
    """Where training groups come from (a labeler of `LABELERS`), and the labelers' knobs.

    `source` None means "gt when the training split has bias labels, else pseudo" and is
    resolved once, when the dataset is known (`groups.resolve_grouping`). `bias_prompts: auto`
    takes the labeler's attributes from bias discovery (discovery.py): at most `discover_top`
    candidates of `vocabulary` (default: the shipped one for the dataset) ranked by
    `discover_score`; with it, `source` None means pseudo.
    """

    source: Literal[GROUP_SOURCES] | None = None
    bias_prompts: Literal[AUTO] | PhraseLists | None = None  # value phrases per attribute, for zeroshot/pseudo
    clusters: Annotated[Int, Field(ge=2, le=1000)] | None = None  # kmeans clusters per attribute
    variant: Literal[tuple(PSEUDO_VARIANTS)] = DEFAULT_PSEUDO_VARIANT  # the pseudo labeler's variant
    discover_top: Annotated[Int, Field(ge=1, le=8)] = DISCOVER_TOP  # bias_prompts auto: attributes kept at most
    discover_score: DiscoveryScore = DISCOVERY_SCORE  # bias_prompts auto: how candidates are ranked
    vocabulary: Text | None = None  # bias_prompts auto: a vocabulary YAML file (default: the shipped one)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"source": value} if isinstance(value, str) else value

    @property
    def discovers(self) -> bool:
        """Whether the labeler's attributes come from bias discovery (`bias_prompts: auto`)."""
        return self.bias_prompts == AUTO

    def resolved(self, train_labelled: bool) -> "GroupingOptions":
        if self.source is not None:
            return self
        return self.model_copy(update={"source": "gt" if train_labelled and not self.discovers else "pseudo"})


# ---------------------------------------------------------------- the one interface


def _per_attribute(value, k: int, what: str) -> list:
    """An int/None for all attributes, or one entry per attribute."""
    if value is None or np.isscalar(value):
        return [value] * k
    value = list(value)
    if len(value) != k:
        raise UserError(f"{what} has {len(value)} entries but there are {k} bias attributes")
    return value


def group_sizes(method: str, attr_sizes: Sequence[int], clusters=None) -> list[int]:
    """The radix of each attribute in the group index: the attribute sizes, except for
    `kmeans` with `clusters` set, where each attribute has that many clusters."""
    if method != "kmeans":
        return [int(s) for s in attr_sizes]
    return [int(c or s) for c, s in zip(_per_attribute(clusters, len(attr_sizes), "clusters"), attr_sizes)]


def assign_attributes(
    method: str,
    feats: np.ndarray | None,
    y: np.ndarray,
    attr_sizes: Sequence[int],
    attr_scores: Sequence[np.ndarray] | None = None,
    clusters: int | Sequence[int | None] | None = None,
    seed: int = 0,
    *,
    attrs: np.ndarray | None = None,
    variant: str | None = None,
    reference: Reference | None = None,
) -> np.ndarray:
    """Value index per image and attribute, (n, k) int64, labelled class by class.

    `attr_scores[j]` (n, attr_sizes[j]) are zero-shot scores (zeroshot, pseudo); `attrs`
    (n, k) true labels (gt); `clusters` overrides the cluster count of `kmeans` (int or one
    per attribute); `variant` picks the `pseudo` variant (ignored by other methods);
    `reference`, for a whole-split variant labelling val or test, is the training split it
    learns from (its bias is the one to find; a balanced val split shows none).
    """
    if method not in LABELERS:
        raise UserError(
            f"unknown group labeler '{method}'{close_matches(method, LABELERS)}; "
            f"choose one of: {', '.join(LABELERS)}"
        )
    labeler = LABELERS[method]
    variant = variant or DEFAULT_PSEUDO_VARIANT
    if method == "pseudo" and variant not in PSEUDO_VARIANTS:
        raise UserError(
            f"unknown pseudo-group variant '{variant}'{close_matches(variant, PSEUDO_VARIANTS)}; "
            f"choose one of: {', '.join(PSEUDO_VARIANTS)}"
        )
    y = np.asarray(y, dtype=np.int64)
    n, n_attrs = len(y), len(attr_sizes)

    if labeler.needs_scores:
        if attr_scores is None or len(attr_scores) == 0:
            raise UserError(_MISSING_SCORES.format(method=method))
        attr_scores = [np.asarray(s, dtype=np.float64) for s in attr_scores]
        if len(attr_scores) != n_attrs:
            raise UserError(f"got zero-shot scores for {len(attr_scores)} bias attributes but the dataset has {n_attrs}")
        for j, (s, size) in enumerate(zip(attr_scores, attr_sizes)):
            if s.shape != (n, size):
                raise UserError(f"zero-shot scores for bias attribute {j} have shape {s.shape}; expected ({n}, {size}): one prompt per value")
    if labeler.needs_truth:
        if attrs is None:
            raise UserError("--groups gt needs the dataset's bias labels; this dataset has none, use --groups pseudo")
        attrs = np.asarray(attrs, dtype=np.int64).reshape(n, n_attrs)
        if (attrs < 0).any():
            raise UserError("--groups gt needs a bias label on every image, but some are missing; use --groups pseudo")
    if labeler.needs_feats:
        if feats is None:
            raise ValueError(f"the '{method}' group labeler needs image features")
        feats = np.asarray(feats, dtype=np.float64)
        if len(feats) != n:
            raise ValueError(f"feats has {len(feats)} rows but y has {n}")

    ks = group_sizes(method, attr_sizes, clusters)
    out = np.zeros((n, n_attrs), dtype=np.int64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if labeler.joint:  # one clustering into prod(ks) ids, split into per-attribute digits
            part = ClassPart(feats[rows], None, None, 0, int(np.prod(ks)), seed, variant)
            ids = labeler.label(part)
            for j, k in enumerate(ks):
                ids, out[rows, j] = np.divmod(ids, k)
            continue
        for j in range(n_attrs):
            part = ClassPart(
                feats=feats[rows] if labeler.needs_feats else None,
                scores=attr_scores[j][rows] if labeler.needs_scores else None,
                truth=attrs[rows, j] if labeler.needs_truth else None,
                size=int(attr_sizes[j]),
                k=ks[j],
                seed=seed,
                variant=variant,
            )
            out[rows, j] = labeler.label(part)
    if method == "pseudo" and variant in WHOLE_SPLIT_VARIANTS:
        out = _relabel_unseen(out, feats, y, attr_sizes, attr_scores, seed, reference)
    return out


# ---------------------------------------------------------------- adaptive: where zero-shot cannot see


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


def _relabel_unseen(out: np.ndarray, feats, y, sizes, scores, seed: int, reference: Reference | None) -> np.ndarray:
    """`adaptive`: relabel the attributes whose zero-shot values hardly track the class by the
    ERM margin, within each class x cell of the attributes zero-shot does see. Which attributes
    those are, and the ERM, come from the training split (`reference`, or this split itself)."""
    ref = reference or Reference(feats, y, scores)
    unseen = [j for j, s in enumerate(sizes)
              if zeroshot_association(np.argmax(ref.scores[j], axis=1), ref.y, int(s)) < WEAK_ASSOCIATION]
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


def assign_groups(
    method: str,
    feats: np.ndarray | None,
    y: np.ndarray,
    attr_sizes: Sequence[int],
    attr_scores: Sequence[np.ndarray] | None = None,
    clusters: int | Sequence[int | None] | None = None,
    seed: int = 0,
    *,
    attrs: np.ndarray | None = None,
    variant: str | None = None,
    reference: Reference | None = None,
) -> np.ndarray:
    """Group index per image: class x product of the attributes from `assign_attributes`
    (radices from `group_sizes`, so kmeans with extra clusters never collides)."""
    a = assign_attributes(
        method, feats, y, attr_sizes, attr_scores, clusters, seed, attrs=attrs, variant=variant, reference=reference
    )
    return group_index(y, a, group_sizes(method, attr_sizes, clusters))


# ---------------------------------------------------------------- quality report


def quality(
    true_groups: np.ndarray,
    pred_groups: np.ndarray,
    names: Sequence[str] | Mapping[int, str] | None = None,
) -> dict:
    """How well predicted groups agree with true ones (rows with a true group < 0 are skipped).

    `accuracy` counts agreement under the best one-to-one matching of predicted to true
    groups (Hungarian), so unnamed cluster ids are judged fairly; `named_accuracy` is plain
    equality (meaningful when ids share the true naming: gt, zeroshot, pseudo). Per true
    group: its matched predicted group `pred` (None if unmatched), sizes, precision, recall.
    `min_recall` is the smallest of those recalls (the worst-served true group);
    `confusion` holds the counts: `matrix[i][j]` images of true group `true[i]` that got
    predicted group `pred[j]` (ids in increasing order, only ids that occur).
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
        "confusion": {"true": t_ids.tolist(), "pred": p_ids.tolist(), "matrix": table.tolist()},
    }


def _name(names, g: int) -> str:
    if names is None:
        return str(g)
    if isinstance(names, Mapping):
        return str(names.get(g, g))
    return str(names[g]) if 0 <= g < len(names) else str(g)
