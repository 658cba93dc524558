"""Group labelers (gt | zeroshot | kmeans | pseudo) behind one interface.

A labeler gives each image a value index for every bias attribute; groups are then the
class x the product of all attributes, numbered with `group_index` (a1 least significant).
Every labeler except `gt` works PER CLASS: each class's images are labelled on their own,
because a bias value ("on water") looks different for each class and groups never cross
classes.

- `gt`: the dataset's own bias labels.
- `zeroshot`: argmax of the caller's zero-shot scores `attr_scores[j]` (n, n_values_j),
  cosine similarities to "a photo of a {class} {value phrase}".
- `kmeans`: K-means on the class's image features. Cluster ids carry no names (`unnamed`), so
  they are returned raw (NOT aligned with value names); judge them with `quality.quality`, which
  matches predicted to true groups one-to-one before counting. With several attributes it
  clusters once into prod(sizes) clusters (`joint`) and writes each id as mixed-radix digits
  (one per attribute): clustering the same features once per attribute would give every
  attribute the same split and leave most product groups empty.
- `pseudo` (the default when labels are missing): the zero-shot assignments seed a model of
  the class's image features (pseudo.py's variants, chosen by `variant=`).

A class with fewer images than clusters cannot be clustered: `pseudo` falls back to
zero-shot there and `kmeans` gives each image its own cluster. Everything is deterministic
for a given seed (estimators get `random_state=seed`; no global RNG is touched).

The names of the group sources (`LABELERS`) are said here and nowhere else; `GroupingOptions`
validates with them. Importing this module imports no scikit-learn: the labelers import it
when they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from ..data.base import group_index
from ..errors import UserError, close_matches
from .adaptive import Reference
from .pseudo import DEFAULT_PSEUDO_VARIANT, PSEUDO_VARIANTS, Variant, fit_kmeans

KMEANS_N_INIT = 10  # restarts for plain `kmeans` (fixed so results do not depend on sklearn's default)

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
    k: int  # number of clusters to make (== size except for an unnamed labeler with `clusters`)
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
    # Its groups have no value names ("cluster k"): the dataset's value names are not theirs and
    # no phrase goes into prompts; `clusters` sets how many it makes per attribute.
    unnamed: bool = False
    joint: bool = False  # it partitions a class's features once for all attributes (ids -> per-attribute digits)
    variants: Mapping[str, Variant] | None = None  # what `variant=` picks among (pseudo)

    def whole_split(self, variant: str) -> Callable | None:
        """The step the variant runs over the whole split after labelling class by class, if any."""
        return self.variants[variant].whole_split if self.variants else None


# ---------------------------------------------------------------- per-class labelers


def _zeroshot(part: ClassPart) -> np.ndarray:
    return np.argmax(part.scores, axis=1)


def _gt(part: ClassPart) -> np.ndarray:
    return part.truth


def _kmeans(part: ClassPart) -> np.ndarray:
    m = len(part.feats)
    if m < part.k:  # too few images to cluster: each image is its own cluster
        return np.arange(m)
    return fit_kmeans(part.feats, part.k, "k-means++", KMEANS_N_INIT, part.seed)


def _pseudo(part: ClassPart) -> np.ndarray:
    if len(part.feats) < part.size:  # too few images to cluster: keep the zero-shot names
        return _zeroshot(part)
    return PSEUDO_VARIANTS[part.variant].label(part.feats, part.scores, part.seed)


LABELERS: dict[str, Labeler] = {  # the group sources: --groups takes these names
    "gt": Labeler("gt", _gt, needs_truth=True),
    "zeroshot": Labeler("zeroshot", _zeroshot, needs_scores=True),
    "kmeans": Labeler("kmeans", _kmeans, needs_feats=True, unnamed=True, joint=True),
    "pseudo": Labeler("pseudo", _pseudo, needs_scores=True, needs_feats=True, variants=PSEUDO_VARIANTS),
}
GROUP_SOURCES: tuple[str, ...] = tuple(LABELERS)
# groups read from a file (`--groups file:PATH`, from_file.py): a group source that is no labeler
FILE_SOURCE = "file"


def why_no_phrases(source: str, dataset_name: str) -> str:
    """Why a run's groups have no value phrases, for an error line."""
    if source == FILE_SOURCE:
        return "groups read from a file have none"
    return f"{source} clusters have no names" if get_labeler(source).unnamed else f"{dataset_name} has none"


# ---------------------------------------------------------------- the one interface


def get_labeler(method: str) -> Labeler:
    """The labeler of that name; an unknown name is a UserError naming the choices."""
    if method not in LABELERS:
        raise UserError(
            f"unknown group labeler '{method}'{close_matches(method, LABELERS)}; "
            f"choose one of: {', '.join(LABELERS)}"
        )
    return LABELERS[method]


def _per_attribute(value, k: int, what: str) -> list:
    """An int/None for all attributes, or one entry per attribute."""
    if value is None or np.isscalar(value):
        return [value] * k
    value = list(value)
    if len(value) != k:
        raise UserError(f"{what} has {len(value)} entries but there are {k} bias attributes")
    return value


def group_sizes(method: str, attr_sizes: Sequence[int], clusters=None) -> list[int]:
    """The radix of each attribute in the group index: the attribute sizes, except for an
    unnamed labeler (kmeans) with `clusters` set, where each attribute has that many clusters."""
    if not get_labeler(method).unnamed:
        return [int(s) for s in attr_sizes]
    return [int(c or s) for c, s in zip(_per_attribute(clusters, len(attr_sizes), "clusters"), attr_sizes)]


def _checked_inputs(labeler: Labeler, feats, n: int, attr_sizes: Sequence[int], attr_scores, attrs) -> tuple:
    """(feats, attr_scores, attrs) as the labeler reads them, refusing what it cannot label with."""
    n_attrs = len(attr_sizes)
    if labeler.needs_scores:
        if attr_scores is None or len(attr_scores) == 0:
            raise UserError(_MISSING_SCORES.format(method=labeler.name))
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
            raise ValueError(f"the '{labeler.name}' group labeler needs image features")
        feats = np.asarray(feats, dtype=np.float64)
        if len(feats) != n:
            raise ValueError(f"feats has {len(feats)} rows but y has {n}")
    return feats, attr_scores, attrs


def _label_class(labeler: Labeler, out: np.ndarray, rows: np.ndarray, inputs: tuple, attr_sizes: Sequence[int],
                 ks: list[int], seed: int, variant: str) -> None:
    """Write one class's value indices (its `rows` of `out`)."""
    feats, attr_scores, attrs = inputs
    if labeler.joint:  # one clustering into prod(ks) ids, split into per-attribute digits
        ids = labeler.label(ClassPart(feats[rows], None, None, 0, int(np.prod(ks)), seed, variant))
        for j, k in enumerate(ks):
            ids, out[rows, j] = np.divmod(ids, k)
        return
    for j in range(len(attr_sizes)):
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
    (n, k) true labels (gt); `clusters` overrides the cluster count of an unnamed labeler
    (kmeans; int or one per attribute); `variant` picks the `pseudo` variant (ignored by other
    methods); `reference`, for a whole-split variant labelling val or test, is the training
    split it learns from (its bias is the one to find; a balanced val split shows none).
    """
    labeler = get_labeler(method)
    variant = variant or DEFAULT_PSEUDO_VARIANT
    if labeler.variants is not None and variant not in labeler.variants:
        raise UserError(
            f"unknown {method}-group variant '{variant}'{close_matches(variant, labeler.variants)}; "
            f"choose one of: {', '.join(labeler.variants)}"
        )
    y = np.asarray(y, dtype=np.int64)
    inputs = _checked_inputs(labeler, feats, len(y), attr_sizes, attr_scores, attrs)
    ks = group_sizes(method, attr_sizes, clusters)
    out = np.zeros((len(y), len(attr_sizes)), dtype=np.int64)
    for c in np.unique(y):
        _label_class(labeler, out, np.flatnonzero(y == c), inputs, attr_sizes, ks, seed, variant)
    step = labeler.whole_split(variant)
    if step is not None:
        feats, attr_scores, _ = inputs
        out = step(out, feats, y, attr_sizes, attr_scores, seed, reference)
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
    (radices from `group_sizes`, so an unnamed labeler with extra clusters never collides)."""
    a = assign_attributes(
        method, feats, y, attr_sizes, attr_scores, clusters, seed, attrs=attrs, variant=variant, reference=reference
    )
    return group_index(y, a, group_sizes(method, attr_sizes, clusters))
