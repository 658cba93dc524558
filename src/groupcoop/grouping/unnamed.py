"""Image-side bias discovery: an attribute the ERM classifier leans on that no caption names.

A spurious attribute the image encoder sees is one an ERM classifier on the features leans on:
the images it finds hard concentrate in the attribute's minority. Two hard sets are read, both
out-of-fold: the ERM's errors, and the `HARD_SHARE` of each class it gives the lowest probability
of their own class (enough images where it errs little). Where a kept caption candidate explains
a hard image (its zero-shot value of that attribute is not its class's usual one), the image is
that attribute's; the rest are the residual. Zero-shot CLIP, which reads no caption of the
attribute, classifies the residual about as well as the easy images when an attribute it cannot
see made them hard (their shape is as clear as anyone's), and much worse when they are merely
hard images. So an unnamed attribute is found when, for either hard set, there are at least
`MIN_RESIDUAL` residual images (and `MIN_RESIDUAL_SHARE` of the training split) and zero-shot's
accuracy on them is at least `ZEROSHOT_RATIO` of its accuracy on the easy images.

It is `unnamed 1` with values `a` (class c's usual images get value c mod 2) and `b`, its prompts
carry the class name alone, and the `adaptive` pseudo labeler takes its values from the ERM's
class margins within each cell of the named attributes, for every split (adaptive.py). The
constants were set on the dev suite (docs/defaults.md). Reads no bias label; imports
scikit-learn only when it runs.
"""

from __future__ import annotations

import numpy as np

ERM_C = 10.0  # inverse L2 strength of the ERM logistic regression whose errors are read (dev)
ERM_FOLDS = 2  # out-of-fold errors, so an image's prediction is not from a model that saw it
HARD_SHARE = 0.05  # the second hard set: this share of each class, lowest own-class probability first (dev)
MIN_RESIDUAL = 10  # residual errors needed to speak of an attribute at all
MIN_RESIDUAL_SHARE = 0.002  # ... and this share of the training images
ZEROSHOT_RATIO = 0.8  # zero-shot accuracy on residual errors / on correct images, at least (dev)
NAME = "unnamed {}"
VALUES = ("a", "b")
PHRASES = ("{}", "{}")  # an unnamed value's prompt is the class name alone


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


def hard_sets(x: np.ndarray, y: np.ndarray, seed: int = 0) -> list[np.ndarray] | None:
    """The images the ERM finds hard, two ways: its out-of-fold errors, and the `HARD_SHARE` of each
    class with the lowest out-of-fold probability of their own class (more images where it errs
    little). None when a class has fewer than `ERM_FOLDS` images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < ERM_FOLDS:
        return None
    model = LogisticRegression(C=ERM_C, max_iter=3000, random_state=seed)
    prob = cross_val_predict(model, x, np.searchsorted(classes, y), method="predict_proba",
                             cv=StratifiedKFold(ERM_FOLDS, shuffle=True, random_state=seed))
    own = prob[np.arange(len(y)), np.searchsorted(classes, y)]
    lowest = np.zeros(len(y), dtype=bool)
    for c in classes:
        rows = np.flatnonzero(y == c)
        lowest[rows[np.argsort(own[rows], kind="stable")[:max(1, int(HARD_SHARE * len(rows)))]]] = True
    return [prob.argmax(axis=1) != np.searchsorted(classes, y), lowest]


def residual_test(hard: np.ndarray, explained_: np.ndarray, right: np.ndarray) -> dict:
    """The unnamed-attribute test on one hard set: its residual images (not explained by a kept
    caption candidate) and zero-shot's accuracy on them relative to the easy images."""
    residual = hard & ~explained_
    base = float(right[~hard].mean()) if (~hard).any() else 0.0
    ratio = float(right[residual].mean()) / base if residual.any() and base > 0 else 0.0
    enough = int(residual.sum()) >= max(MIN_RESIDUAL, MIN_RESIDUAL_SHARE * len(hard))
    return {"residual": residual, "ratio": ratio, "enough": enough, "found": bool(enough and ratio >= ZEROSHOT_RATIO)}


def image_candidate(x: np.ndarray, y: np.ndarray, kept: list[dict], zeroshot_pred: np.ndarray | None,
                    seed: int = 0) -> dict | None:
    """The unnamed candidate in the caption candidates' form (its `assigned` values: the residual
    hard images take the other value), or None without two classes or zero-shot predictions. It is
    `found` where either hard set passes `residual_test`; the first that passes (else the errors) gives
    its values."""
    sets = hard_sets(x, y, seed)
    if sets is None or zeroshot_pred is None:
        return None
    tests = [residual_test(hard, explained(y, kept), zeroshot_pred == y) for hard in sets]
    best = next((t for t in tests if t["found"]), tests[0])
    usual = y % 2
    values = np.where(best["residual"], 1 - usual, usual)
    shares = np.bincount(values, minlength=2) / len(y)
    return {"attribute": NAME.format(1), "values": list(PHRASES), "value_names": list(VALUES), "unnamed": True,
            "shares": [round(float(s), 4) for s in shares], "dropped": [], "assigned": values, "found": best["found"],
            "residual_errors": int(best["residual"].sum()), "zeroshot_ratio": round(best["ratio"], 3)}
