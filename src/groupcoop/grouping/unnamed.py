"""Image-side bias discovery: an attribute the ERM classifier leans on that no caption names.

A spurious attribute the image encoder sees but no caption names (a tag in a corner) is a crisp
partition of the image features that goes with the class on train. It is searched for on the
training split, reading no bias label:

1. The attributes already seen (the kept caption candidates, by their zero-shot values) are
   projected out of the features (per value, the mean difference of the images with it and the
   rest, within each class), so the search cannot find them again.
2. Starts: for each share of `START_SHARES`, that share of each class with the lowest
   out-of-fold probability of its own class under an ERM (a logistic regression) is given the
   other class's value, among the images no kept caption explains; the rest keep their class's.
3. Self-training: a logistic regression on the projected features is fitted to the values and
   its predictions become the values, until they stop changing (at most `MAX_ROUNDS`). An
   attribute the features hold crisply is a fixed point, and a start near it converges to it.
4. A partition counts when it goes with the class (Cramér's V above the caption candidates'
   threshold), is not read off a kept caption candidate (`discovery.read_off` below
   `DISCOVERY_MAX_PROXY`) and sets apart at least `MIN_CONFLICTING` images (and
   `MIN_CONFLICTING_SHARE` of the split) from their class's usual value. Of those, the crispest
   (the fewest images within one logit of its classifier's boundary) is the partition.
5. It is an unnamed attribute when zero-shot CLIP, which reads no caption of it, classifies the
   set-apart images at least `ZEROSHOT_RATIO` as well as the rest: hard shapes mislead zero-shot
   too; a tag does not.

It is `unnamed 1` with values `a` (class c's usual images get value c mod 2) and `b`, its prompts
carry the class name alone, and its classifier labels every split (the `adaptive` pseudo
labeler calls `Partition.labels`). The constants were set on the dev suite (docs/defaults.md).
Imports scikit-learn only when it runs.
"""

from __future__ import annotations

import numpy as np

ERM_C = 10.0  # inverse L2 strength of the ERM whose least sure images start the search (dev)
ERM_FOLDS = 2  # out-of-fold probabilities, so an image's is not from a model that saw it
START_SHARES = (0.02, 0.05, 0.1, 0.2)  # starts: this share of each class, least sure first (dev)
MAX_ROUNDS = 10  # self-training rounds at most
PARTITION_C = 1.0  # inverse L2 strength of the self-training classifier (dev)
MIN_CONFLICTING = 10  # set-apart images needed to speak of an attribute at all
MIN_CONFLICTING_SHARE = 0.002  # ... and this share of the training images
ZEROSHOT_RATIO = 0.8  # zero-shot accuracy on the set-apart images / on the rest, at least (dev)
SAME_PARTITION = 0.5  # within-class Cramér's V at which two splits are one attribute (a caption's twin; the scripts' judge)
NAME = "unnamed {}"
VALUES = ("a", "b")
PHRASES = ("{}", "{}")  # an unnamed value's prompt is the class name alone


class Partition:
    """The image features' own partition: the seen attributes' directions projected out, then a
    linear classifier; `labels` gives any split's values (0: class 0's usual value, 1: class 1's)."""

    def __init__(self, basis: np.ndarray | None, model, values: np.ndarray, near_boundary: float):
        self.basis, self.model, self.values, self.near_boundary = basis, model, values, near_boundary

    def labels(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(project_out(x, self.basis)).astype(np.int64)


def seen_basis(x: np.ndarray, y: np.ndarray, seen: list[np.ndarray]) -> np.ndarray | None:
    """Orthonormal columns spanning the seen attributes' directions: per attribute value, the mean
    feature difference of the images with it and the rest, within each class, averaged over classes."""
    directions = []
    for values in seen:
        for v in np.unique(values):
            diffs = [x[(y == k) & (values == v)].mean(0) - x[(y == k) & (values != v)].mean(0)
                     for k in np.unique(y) if min(((y == k) & (values == v)).sum(), ((y == k) & (values != v)).sum()) > 1]
            if diffs:
                directions.append(np.mean(diffs, axis=0))
    return np.linalg.qr(np.stack(directions, axis=1))[0] if directions else None


def project_out(x: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    return x if basis is None else x - (x @ basis) @ basis.T


def _least_sure(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Each image's out-of-fold ERM probability of its own class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    model = LogisticRegression(C=ERM_C, max_iter=3000, random_state=seed)
    prob = cross_val_predict(model, x, y, method="predict_proba",
                             cv=StratifiedKFold(ERM_FOLDS, shuffle=True, random_state=seed))
    return prob[np.arange(len(y)), y]


def self_trained(z: np.ndarray, values: np.ndarray, seed: int):
    """(classifier, values) at the self-training's fixed point (or after MAX_ROUNDS)."""
    from sklearn.linear_model import LogisticRegression

    model = None
    for _ in range(MAX_ROUNDS):
        if len(np.unique(values)) < 2:
            break
        model = LogisticRegression(C=PARTITION_C, max_iter=2000, random_state=seed).fit(z, values)
        predicted = model.predict(z)
        if np.array_equal(predicted, values):
            break
        values = predicted
    return model, values


def _near_boundary(model, z: np.ndarray) -> float:
    """Share of the images within one logit of the classifier's boundary: few for an attribute the
    features hold crisply, whatever the classifier was fitted to (its own fitted labels are always
    linearly separable, so agreement with them says little)."""
    return float(np.mean(np.abs(model.decision_function(z)) < 1.0))


def find_partition(x: np.ndarray, y: np.ndarray, seen: list[np.ndarray], seed: int = 0,
                   proxy: float | None = None) -> Partition | None:
    """The crispest partition of the training features that goes with the class, is no seen attribute
    and sets enough images apart (steps 1-4 of the module's docstring); None where none does, or
    without two classes of `ERM_FOLDS` images each. `proxy` replaces `DISCOVERY_MAX_PROXY` (to try others)."""
    from .association import cramers_v, read_off
    from .labelfree import DISCOVERY_MAX_PROXY, DISCOVERY_THRESHOLDS

    classes, counts = np.unique(y, return_counts=True)
    if len(classes) != 2 or counts.min() < max(ERM_FOLDS, 2):
        return None
    y = np.searchsorted(classes, y)
    proxy = DISCOVERY_MAX_PROXY if proxy is None else proxy
    basis = seen_basis(x, y, seen)
    z = project_out(x, basis)
    own = _least_sure(x, y, seed)
    free = ~explained(y, [{"assigned": v} for v in seen])
    best = None
    for share in START_SHARES:
        start = y.copy()
        for k in (0, 1):
            rows = np.flatnonzero((y == k) & free)
            start[rows[np.argsort(own[rows], kind="stable")[:max(1, int(share * counts[k]))]]] = 1 - k
        model, values = self_trained(z, start, seed)
        apart = values != y
        if (model is None or apart.sum() < max(MIN_CONFLICTING, MIN_CONFLICTING_SHARE * len(y))
                or cramers_v(y, values) <= DISCOVERY_THRESHOLDS["cramers_v"]
                or read_off(y, values, [{"assigned": v} for v in seen]) >= proxy):
            continue
        near = _near_boundary(model, z)
        if best is None or near < best.near_boundary:
            best = Partition(basis, model, values, near)
    return best


def image_candidate(x: np.ndarray, y: np.ndarray, kept: list[dict], zeroshot_pred: np.ndarray | None,
                    seed: int = 0, proxy: float | None = None) -> dict | None:
    """The unnamed candidate in the caption candidates' form (`assigned`: each training image's
    value), or None without a partition (`find_partition`) or zero-shot predictions. It is `found`
    where zero-shot classifies its set-apart images at least `ZEROSHOT_RATIO` as well as the rest."""
    if zeroshot_pred is None:
        return None
    part = find_partition(x, y, [c["assigned"] for c in kept], seed, proxy)
    if part is None:
        return None
    apart = part.values != np.searchsorted(np.unique(y), y)
    right = zeroshot_pred == y
    base = float(right[~apart].mean())
    ratio = float(right[apart].mean()) / base if base > 0 else 0.0
    shares = np.bincount(part.values, minlength=2) / len(y)
    return {"attribute": NAME.format(1), "values": list(PHRASES), "value_names": list(VALUES), "unnamed": True,
            "shares": [round(float(s), 4) for s in shares], "dropped": [], "assigned": part.values,
            "found": ratio >= ZEROSHOT_RATIO, "set_apart": int(apart.sum()), "zeroshot_ratio": round(ratio, 3),
            "near_boundary": round(part.near_boundary, 4)}


def caption_twin(found: dict, y: np.ndarray, captions: list[dict]) -> str | None:
    """The caption candidate, left out by discovery's tests, whose zero-shot values split each class as
    the unnamed attribute does (within-class Cramér's V at least `SAME_PARTITION`, the best if several):
    a name to try for it. None where no caption does."""
    from .association import read_off

    match = {c["attribute"]: read_off(y, found["assigned"], [c]) for c in captions if not c.get("spurious")}
    best = max(match, key=match.get, default=None)
    return best if best is not None and match[best] >= SAME_PARTITION else None


def parse_name(text: str) -> tuple[str, tuple[str, str]]:
    """`--name-attribute "mark=plain,marked"`: the unnamed attribute's name and its values' names, in
    the order of its values a and b (as the example grid shows them)."""
    from ..errors import UserError, quoted

    name, _, values = text.partition("=")
    names = tuple(v.strip() for v in values.split(","))
    if not name.strip() or len(names) != len(VALUES) or not all(names) or len(set(names)) != len(names):
        raise UserError(f"--name-attribute {quoted(text)}: write NAME=VALUE_A,VALUE_B, the names of the unnamed "
                        "attribute and of its values a and b as its example grid shows them, e.g. mark=plain,marked")
    if "{}" in text:
        raise UserError(f"--name-attribute {quoted(text)}: names, not phrases: the unnamed attribute's groups are "
                        "labelled from the image features; to prompt with phrases, add the attribute to a "
                        "vocabulary (--vocabulary)")
    return name.strip(), names


def named(candidate: dict, text: str) -> dict:
    """The unnamed candidate under the user's names (`parse_name`); its values are still labelled from
    the image features and prompted with the class name alone."""
    name, names = parse_name(text)
    return {**candidate, "attribute": name, "value_names": list(names), "named_from": candidate["attribute"]}


def explained(y: np.ndarray, kept: list[dict]) -> np.ndarray:
    """Images whose zero-shot value of some kept caption candidate is not their class's usual one."""
    out = np.zeros(len(y), dtype=bool)
    for c in kept:
        values = c["assigned"]
        for k in np.unique(y):
            rows = y == k
            out[rows] |= values[rows] != np.bincount(values[rows]).argmax()
    return out
