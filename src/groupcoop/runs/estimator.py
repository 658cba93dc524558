"""A scikit-learn estimator over CLIP image features you already have (docs/estimator.md).

`GroupCoOpEstimator.fit(X, y, groups)` builds a GroupDataset over the feature rows, with no
images (`FeatureRows`: anything that needs pixels is one UserError), carves a stratified, seeded
validation split from X and runs the same pipeline as `groupcoop.fit` (`check_run`, `Prepared`
with the feature tensor, `run_method`). Bad input raises `InputError`: a UserError (one line)
that is also the ValueError scikit-learn's conventions expect.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..backbones.families import load_backbone
from ..backbones.protocol import Backbone
from ..data.base import GroupDataset
from ..errors import UserError, quoted
from ..schema import MAX_BIAS_ATTRIBUTES, MAX_VALUES
from .predict import Classifier

NAME = "GroupCoOpEstimator"
DATASET = "features"  # the dataset name its runs carry (config.yaml, metrics.json)


class InputError(UserError, ValueError):
    """Bad X, y, groups or parameter: one line (UserError), and a ValueError for scikit-learn."""


class NotFitted(UserError, NotFittedError):
    """predict before fit: one line (UserError), and scikit-learn's NotFittedError."""


def _line(err) -> str:
    """An exception's message on one line, cut to a readable length."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + "..."


class FeatureRows:
    """The ImageSource of a dataset made of image features: it has no pixels, so anything that
    needs them (image grids, extraction) is refused with one line."""

    has_pixels = False  # pipeline.discovered_grid skips its image grid

    def __init__(self, count: int, digest: str):
        self.count, self.digest = count, digest

    def __len__(self) -> int:
        return self.count

    def load(self, i: int):
        raise UserError(f"{NAME} was given image features, not images: this step needs the images themselves; "
                        "use groupcoop.fit on a dataset of images for it")

    def identity(self) -> str:
        return f"features:{self.digest}"

    def stamp(self, start: int, stop: int, verify: bool = False) -> str:
        return self.digest


@lru_cache(maxsize=1)
def _named_backbone(name: str, pretrained: str | None, device: str) -> Backbone:
    """The last backbone loaded by name, kept so refits (cross-validation, grid search) load it once."""
    return load_backbone(name, pretrained, device=device)


def _encode_groups(groups, n: int) -> tuple[np.ndarray, list[list[str]]]:
    """Per-sample bias values (n,) or (n, k) -> (n, k) value ids and the value names per attribute."""
    if groups is None:
        return np.zeros((n, 0), dtype=np.int64), []
    try:
        table = np.asarray(groups, dtype=object)
    except (TypeError, ValueError) as err:
        raise InputError(f"fit(): groups is not an array of bias values: {_line(err)}") from None
    table = table.reshape(-1, 1) if table.ndim == 1 else table
    if table.ndim != 2 or len(table) != n or not 1 <= table.shape[1] <= MAX_BIAS_ATTRIBUTES:
        raise InputError(f"fit(): groups has shape {np.shape(groups)}; give one bias value per sample ({n},) or "
                         f"one per sample and attribute ({n}, k), k <= {MAX_BIAS_ATTRIBUTES}")
    ids, names = np.zeros(table.shape, dtype=np.int64), []
    for j in range(table.shape[1]):
        column = table[:, j]
        if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in column):
            raise InputError("fit(): groups holds a missing value (None or NaN); give a bias value for every "
                             "sample, or groups=None for groups from a labeler")
        try:
            values, ids[:, j] = np.unique(column, return_inverse=True)
        except TypeError:  # mixed types: compare as text
            values, ids[:, j] = np.unique(column.astype(str), return_inverse=True)
        shown = [str(v) for v in values]
        if len(values) > MAX_VALUES or len(set(shown)) != len(shown) or not all(s.strip() for s in shown):
            raise InputError(f"fit(): groups column {j} has {len(values)} values; give at most {MAX_VALUES} "
                             "distinct, non-empty bias values per attribute")
        names.append(shown)
    return ids, names


class GroupCoOpEstimator(ClassifierMixin, BaseEstimator):
    """Group-robust prompt tuning of a frozen CLIP on image features you already have.

    X are image features from the image encoder of `backbone` (n, D), D its embedding width;
    the text encoder, which the prompts need, comes from `backbone`: a name as `groupcoop.fit`
    takes it (with `pretrained`), or a backbone object (`groupcoop.load_backbone`).
    `class_names` are the class words in prompts: a list in the order of `classes_` (the sorted
    labels of y) or a dict label -> name; None: the labels as text.
    `method` is any of `groupcoop.list_methods()`, `hyperparameters` a dict of its settings
    (`{"epochs": 1}`), `groups` the group source as in `groupcoop.fit` ('gt', 'pseudo',
    'zeroshot', 'kmeans', or a dict of grouping options) and `bias_prompts` the value phrases of
    the labelers (`["on land", "on water"]`, or a list of such lists; "auto" discovers them from
    a vocabulary's text, on the features). `fit(X, y, groups)`: `groups` the bias value of each
    sample ((n,) or (n, k) for k attributes); without it a labeler makes the groups: pseudo (or
    zeroshot) with `bias_prompts`, else kmeans (`labelfree.AUTO_FALLBACK_LABELER`). What needs
    pixels is refused with one line (the image grid of an unnamed discovered attribute is left
    out). A stratified, seeded `val_fraction` of X is the validation split (model selection,
    last layers). Bad input raises `InputError` (a UserError and a ValueError), predict before
    fit `NotFitted` (a UserError and scikit-learn's NotFittedError).

    After fit: `classes_`, `n_features_in_`, `classifier_` (a `groupcoop.Classifier`), `run_`
    (the `Run`: `.metrics`, `.save(folder)`). `from_pretrained(folder)` loads a saved run or an
    export as a fitted estimator.

    scikit-learn's `check_estimator` (tests/test_estimator.py): the checks that fit on random X
    of 1 to 10 columns cannot pass, because X must be D wide (128 for groupcoop-tiny) to meet the
    text features: check_classifier_data_not_an_array, check_classifiers_classes,
    check_classifiers_train, check_dict_unchanged, check_dont_overwrite_parameters,
    check_dtype_object, check_estimators_dtypes, check_estimators_fit_returns_self,
    check_estimators_nan_inf, check_estimators_overwrite_params, check_estimators_pickle,
    check_f_contiguous_array_estimator, check_fit2d_predict1d, check_fit_check_is_fitted,
    check_fit_idempotent, check_fit_score_takes_y, check_methods_sample_order_invariance,
    check_methods_subset_invariance, check_n_features_in, check_n_features_in_after_fitting,
    check_pipeline_consistency, check_positive_only_tag_during_fit, check_readonly_memmap_input,
    check_supervised_y_2d. Each stops at the one-line width error. On X zero-padded to D they
    pass (method zeroshot, or groupcoop with last_layer none: its default DFR last layer wants
    more validation samples per class than the toy data has), all but check_classifiers_train,
    whose accuracy bar the prompts do not reach on 2-column toy blobs.
    """

    def __init__(self, backbone="groupcoop-tiny", class_names=None, method="groupcoop", groups=None,
                 bias_prompts=None, hyperparameters=None, val_fraction=0.2, selection=None, seed=0,
                 pretrained=None, device="cpu"):
        self.backbone = backbone
        self.class_names = class_names
        self.method = method
        self.groups = groups
        self.bias_prompts = bias_prompts
        self.hyperparameters = hyperparameters
        self.val_fraction = val_fraction
        self.selection = selection
        self.seed = seed
        self.pretrained = pretrained
        self.device = device

    # -- fit -----------------------------------------------------------------------------------

    def fit(self, X, y, groups=None):
        """Train on image features X (n, D), labels y (n,) and, optionally, each sample's bias values."""
        from .pipeline import Prepared, check_run, run_method

        X, y = self._validate(X, y, reset=True)
        try:
            check_classification_targets(y)
        except ValueError as err:
            raise InputError(f"fit(): {_line(err)}") from None
        classes, y_ids = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise InputError(f"fit(): y holds one class ({quoted(classes[0])}); give samples of at least two")
        names = self._names(classes)  # the cheap checks first, then the backbone
        attrs, values = _encode_groups(groups, len(y))
        split = self._split(y_ids, attrs)
        bb = self._load_backbone()
        self._check_width(X, bb)
        ds = GroupDataset(DATASET, FeatureRows(len(X), hashlib.sha256(X.tobytes()).hexdigest()[:16]), y_ids, attrs,
                          split, names, [f"group {j}" for j in range(len(values))], values, values or None)
        try:  # the pipeline's own refusals (grouping, method checks, too few samples) are bad input too
            ds, settings, bb = check_run(self._settings(bb, labelled=groups is not None), dataset=ds, backbone=bb)
            run = run_method(Prepared(ds, bb, torch.as_tensor(X, dtype=torch.float32)), settings, log=lambda s: None)
        except UserError as err:
            raise err if isinstance(err, InputError) else InputError(str(err)) from None
        self.classes_, self.run_, self.classifier_ = classes, run, Classifier(run.head, bb)
        return self

    def _validate(self, X, y="no_validation", reset: bool = False):
        try:  # y None in fit: scikit-learn's own "requires y" line
            return validate_data(self, X, y, reset=reset, dtype=np.float32)
        except ValueError as err:
            raise InputError(f"{'fit' if reset else 'predict'}(): {_line(err)}") from None

    def _load_backbone(self) -> Backbone:
        if isinstance(self.backbone, Backbone):
            return self.backbone
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise InputError(f"{NAME}: backbone={quoted(self.backbone)} is not valid; give a backbone name "
                             "(groupcoop backbones) or a backbone from groupcoop.load_backbone")
        if not isinstance(self.device, str) or (self.pretrained is not None and not isinstance(self.pretrained, str)):
            raise InputError(f"{NAME}: device and pretrained are text (device='cpu', pretrained=None or a tag)")
        return _named_backbone(self.backbone, self.pretrained, self.device)

    def _check_width(self, X: np.ndarray, bb: Backbone) -> None:
        if X.shape[1] != bb.embed_dim:
            raise InputError(f"X has n_features={X.shape[1]} per sample, but the image features of {bb.name} have "
                             f"{bb.embed_dim}; give the features of this backbone's image encoder")

    def _names(self, classes: np.ndarray) -> list[str]:
        """The class words of the sorted labels `classes`, from `class_names`."""
        names = self.class_names
        if names is None:
            names = [str(c) for c in classes]
        elif isinstance(names, dict):
            missing = [c for c in classes.tolist() if c not in names]
            if missing:
                raise InputError(f"{NAME}: class_names names no class for label {quoted(missing[0])}")
            names = [names[c] for c in classes.tolist()]
        elif isinstance(names, (list, tuple)):
            if len(names) != len(classes):
                raise InputError(f"{NAME}: class_names has {len(names)} names, y has {len(classes)} classes "
                                 f"({quoted(classes.tolist())}); give one name per class, in that order")
        else:
            raise InputError(f"{NAME}: class_names={quoted(names)} is not valid; give a list of names in the "
                             "order of the sorted labels, a dict label -> name, or None")
        names = list(names)
        if not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
            raise InputError(f"{NAME}: class_names must be distinct, non-empty strings, not {quoted(names)}")
        return names

    def _split(self, y: np.ndarray, attrs: np.ndarray) -> np.ndarray:
        """0 (train) or 1 (val) per row: `val_fraction` of the rows, stratified by group where every
        (class, bias values) cell has two rows, else by class; seeded by `seed`."""
        frac = self.val_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise InputError(f"{NAME}: val_fraction={quoted(frac)} is not valid; give a number between 0 and 1 "
                             "(the share of X held out for validation)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise InputError(f"{NAME}: seed={quoted(self.seed)} is not valid; give a whole number >= 0")
        cells = np.unique(np.column_stack([y, attrs]), axis=0, return_inverse=True)[1].reshape(-1)
        strata = cells if np.bincount(cells).min() >= 2 else y
        try:
            _, val = next(StratifiedShuffleSplit(1, test_size=frac, random_state=int(self.seed)).split(y, strata))
        except ValueError as err:
            raise InputError(f"fit(): cannot hold out a stratified val_fraction={frac} of {len(y)} samples: "
                             f"{_line(err)}; give more samples per class, or change val_fraction") from None
        split = np.zeros(len(y), dtype=np.int64)
        split[val] = 1
        return split

    def _settings(self, bb: Backbone, labelled: bool):
        from ..grouping.labelfree import AUTO_FALLBACK_LABELER
        from .settings import make_settings

        grouping = self.groups
        if grouping is None and self.bias_prompts is None and not labelled:
            grouping = AUTO_FALLBACK_LABELER  # nothing names the groups: a labeler that needs no phrases
        if self.bias_prompts is not None:
            if grouping is not None and not isinstance(grouping, (str, dict)):
                raise InputError(f"{NAME}: groups={quoted(grouping)} is not valid; give a group source name or a "
                                 "dict of grouping options")
            grouping = {**({"source": grouping} if isinstance(grouping, str) else dict(grouping or {})),
                        "bias_prompts": self.bias_prompts}
        values = {"dataset": DATASET, "backbone": bb.name, "pretrained": bb.pretrained, "method": self.method,
                  "groups": grouping, "selection": self.selection, "seed": self.seed, "device": str(bb.device),
                  "hyperparameters": self.hyperparameters}
        return make_settings({k: v for k, v in values.items() if v is not None}, NAME)

    # -- use -----------------------------------------------------------------------------------

    def _fitted(self) -> Classifier:
        try:
            check_is_fitted(self, "classifier_")
        except NotFittedError as err:
            raise NotFitted(_line(err)) from None
        return self.classifier_

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in the order of `classes_`."""
        clf = self._fitted()
        X = self._validate(X)
        self._check_width(X, clf.backbone)
        return clf.predict_features(X).probabilities

    def predict(self, X) -> np.ndarray:
        """The most probable label of `classes_` per row of X."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the trained run's folder (as `Run.save`): `groupcoop predict`, `export` and
        `from_pretrained` read it."""
        self._fitted()
        if getattr(self, "run_", None) is None:
            raise UserError(f"this {NAME} was loaded from a folder, which holds it already; copy that folder")
        return self.run_.save(Path(folder), overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", pretrained: str | None = None):
        """A fitted estimator from a run folder or a `groupcoop export` folder (files checked by their
        sha256): `classes_` are the class names; predict_proba takes that backbone's image features."""
        clf = Classifier.from_pretrained(folder, device=device, pretrained=pretrained)
        head, bb = clf.head, clf.backbone
        est = cls(backbone=bb.name, class_names=list(head.class_names), method=head.info.get("method", "groupcoop"),
                  pretrained=bb.pretrained, device=device)
        est.classes_ = np.array(head.class_names, dtype=object)
        est.n_features_in_ = int(bb.embed_dim)
        est.classifier_, est.run_ = clf, None
        return est
