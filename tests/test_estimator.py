"""GroupCoOpEstimator: scikit-learn's estimator conventions on CLIP image features (fit, predict,
predict_proba, score, clone), the label-free paths, one-line errors, and loading an export with
`from_pretrained` (equal to the README's plain-library block). Small data, the bundled
groupcoop-tiny, one epoch."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks as checks
from sklearn.utils.estimator_checks import parametrize_with_checks

import groupcoop
from groupcoop.errors import UserError
from groupcoop.runs.estimator import FeatureRows, GroupCoOpEstimator, InputError, NotFitted

FAST = {"epochs": 1}
WIDTH = 128  # groupcoop-tiny's embedding width
README = Path(__file__).resolve().parents[1] / "README.md"

# The checks that fit on random X of 1 to 10 columns: X must be as wide as the backbone's image
# features (128 here) to meet the text features, so each stops at the one-line width error.
WHY = "fits on random X of a few columns; X must be the backbone's image features (128 wide for groupcoop-tiny)"
EXPECTED_FAILED_CHECKS = {name: WHY for name in (
    "check_classifier_data_not_an_array", "check_classifiers_classes", "check_classifiers_train",
    "check_dict_unchanged", "check_dont_overwrite_parameters", "check_dtype_object", "check_estimators_dtypes",
    "check_estimators_fit_returns_self", "check_estimators_nan_inf", "check_estimators_overwrite_params",
    "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit2d_predict1d",
    "check_fit_check_is_fitted", "check_fit_idempotent", "check_fit_score_takes_y",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_n_features_in",
    "check_n_features_in_after_fitting", "check_pipeline_consistency", "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input", "check_supervised_y_2d")}


@parametrize_with_checks([GroupCoOpEstimator(hyperparameters=FAST)],
                         expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS, xfail_strict=True)
def test_scikit_learn_checks(estimator, check):
    """Every check runs: those above are expected to fail (strictly: one that starts to pass fails here)."""
    check(estimator)


class Padded(GroupCoOpEstimator):
    """Test harness only: the checks' X of a few columns zero-padded to the backbone's width (plus a
    constant column, so no row is all zeros), so their logic runs past the width check."""

    def _validate(self, X, y="no_validation", reset=False):
        out = super()._validate(X, y, reset)
        X, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        pad = np.zeros((len(X), WIDTH - X.shape[1]), np.float32)
        pad[:, 0] = 1
        X = np.hstack([X, pad])
        return (X, *rest) if rest else X


# the width checks on padded X: what the estimator itself does with labels, dtypes, NaN, refits, pickling
PADDED_CHECKS = ("check_estimators_fit_returns_self", "check_classifiers_classes", "check_fit_idempotent",
                 "check_n_features_in_after_fitting", "check_dont_overwrite_parameters", "check_estimators_pickle",
                 "check_methods_sample_order_invariance", "check_fit2d_predict1d", "check_estimators_nan_inf",
                 "check_supervised_y_2d", "check_dtype_object", "check_dict_unchanged", "check_fit_check_is_fitted")


@pytest.mark.parametrize("name", PADDED_CHECKS)
def test_the_width_bound_checks_pass_on_padded_features(name):
    getattr(checks, name)("GroupCoOpEstimator", Padded(method="zeroshot"))


def test_groupcoop_training_is_idempotent_on_padded_features():
    checks.check_fit_idempotent("GroupCoOpEstimator", Padded(hyperparameters={**FAST, "last_layer": "none"}))


# --- real image features of the synthetic world ---------------------------------------------------

@pytest.fixture(scope="module")
def world(tiny_backbone):
    """groupcoop-tiny image features of synth-waterbirds rows: 400 to fit on (train and val rows),
    160 test rows, with class names and background values."""
    from groupcoop.data.world.datasets import make_task_dataset

    ds = make_task_dataset("synth-waterbirds")
    rows = {"fit": np.concatenate([ds.split_indices("train")[:300], ds.split_indices("val")[:100]]),
            "test": ds.split_indices("test")[:160]}
    out = {"dataset": ds}
    for part, index in rows.items():
        with torch.no_grad():
            x = tiny_backbone.encode_images(torch.stack([tiny_backbone.preprocess(ds.images.load(int(i)))
                                                         for i in index]))
        out[part] = SimpleNamespace(X=x.numpy(), y=np.array(ds.class_names, dtype=object)[ds.y[index]],
                                    g=np.array(ds.attribute_values[0], dtype=object)[ds.attrs[index, 0]], rows=index)
    return out


def test_fit_on_true_groups_predicts_class_names_and_probabilities(world):
    fit, test = world["fit"], world["test"]
    est = GroupCoOpEstimator(hyperparameters=FAST)
    assert est.fit(fit.X, fit.y, groups=fit.g) is est
    assert list(est.classes_) == ["angular shape", "round shape"] and est.n_features_in_ == WIDTH
    proba = est.predict_proba(test.X)
    assert proba.shape == (len(test.X), 2) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert set(est.predict(test.X)) <= set(est.classes_)
    assert est.score(test.X, test.y) > 0.55  # two classes; one epoch from zero-shot prompts
    metrics = est.run_.metrics
    assert metrics["groups_source"] == "gt" and metrics["dataset"] == "features"
    assert est.classifier_.group_names == ["angular shape, grass", "angular shape, water",
                                           "round shape, grass", "round shape, water"]
    assert sum(g["n"] for g in metrics["splits"]["val"]["groups"]) == 80  # val_fraction 0.2 of the 400


def test_integer_labels_take_their_names_from_class_names(world, tiny_backbone):
    fit = world["fit"]
    y = (fit.y == "round shape").astype(int)
    est = GroupCoOpEstimator(backbone=tiny_backbone, class_names=["angular shape", "round shape"], method="zeroshot")
    est.fit(fit.X, y)
    assert list(est.classes_) == [0, 1] and est.classifier_.class_names == ["angular shape", "round shape"]
    assert set(est.predict(fit.X)) <= {0, 1}
    named = GroupCoOpEstimator(class_names={1: "round shape", 0: "angular shape"}, method="zeroshot").fit(fit.X, y)
    assert np.array_equal(named.predict_proba(fit.X), est.predict_proba(fit.X))


@pytest.mark.parametrize("kwargs,source", [
    ({"bias_prompts": ["{} on grass", "{} on water"]}, "pseudo"),
    ({"groups": "zeroshot", "bias_prompts": ["{} on grass", "{} on water"]}, "zeroshot"),
    ({}, "kmeans"),  # nothing names the groups: a labeler that needs no phrases
])
def test_without_group_labels_a_labeler_makes_the_groups(world, kwargs, source):
    fit = world["fit"]
    est = GroupCoOpEstimator(hyperparameters=FAST, **kwargs).fit(fit.X, fit.y)
    assert est.run_.metrics["groups_source"] == source
    assert est.predict_proba(fit.X).shape == (len(fit.X), 2)


def test_bias_discovery_runs_on_features_alone(world, tmp_path):
    """bias_prompts auto scores a vocabulary's text against the features: no image is read."""
    vocabulary = tmp_path / "vocabulary.yaml"
    vocabulary.write_text('attributes:\n  background: ["{} on grass", "{} on water"]\n'
                          '  weather: ["{} on a sunny day", "{} on a rainy day"]\n')
    fit = world["fit"]
    est = GroupCoOpEstimator(hyperparameters=FAST, bias_prompts="auto", groups={"vocabulary": str(vocabulary)})
    est.fit(fit.X, fit.y)
    found = est.run_.metrics["discovery"]
    assert [c["attribute"] for c in found["candidates"]][:1] == ["background"]  # the planted bias ranks first
    assert est.run_.metrics["groups_source"] in ("pseudo", "kmeans") and not est.run_.figures


def test_the_validation_split_is_stratified_and_seeded():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    attrs = np.tile([0, 1], 50).reshape(-1, 1)
    split = GroupCoOpEstimator(val_fraction=0.2)._split(y, attrs)
    assert [int(split[y == c].sum()) for c in range(3)] == [10, 6, 4]  # 20% of every class
    assert np.array_equal(split, GroupCoOpEstimator(val_fraction=0.2)._split(y, attrs))
    assert not np.array_equal(split, GroupCoOpEstimator(val_fraction=0.2, seed=1)._split(y, attrs))


def test_clone_keeps_every_argument_unchanged():
    est = GroupCoOpEstimator(class_names={0: "cat", 1: "dog"}, method="coop", groups={"source": "pseudo"},
                             bias_prompts=["indoors", "outdoors"], hyperparameters={"epochs": 2}, val_fraction=0.3,
                             selection="worst_class", seed=4, pretrained="random", device="cpu")
    copy = clone(est)
    assert copy.get_params() == est.get_params() and copy is not est
    assert est.set_params(seed=5) is est and est.seed == 5
    assert set(GroupCoOpEstimator().get_params()) == {
        "backbone", "class_names", "method", "groups", "bias_prompts", "hyperparameters", "val_fraction",
        "selection", "seed", "pretrained", "device"}


def test_cross_validation_slices_the_groups_with_the_samples(world):
    from sklearn.model_selection import cross_validate

    fit = world["fit"]
    result = cross_validate(GroupCoOpEstimator(method="zeroshot"), fit.X, fit.y, cv=2, params={"groups": fit.g})
    assert len(result["test_score"]) == 2 and all(0 <= s <= 1 for s in result["test_score"])


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and text, text
    return text


BAD_FITS = {  # case: (arguments, X, y, groups) changes, words the line holds
    "narrow X": ({}, lambda X: X[:, :10], None, None, "n_features=10"),
    "NaN in X": ({}, lambda X: np.where(np.arange(X.shape[1]) == 3, np.nan, X), None, None, "NaN"),
    "one class": ({}, None, lambda y: np.full(len(y), "a"), None, "one class"),
    "class_names too short": ({"class_names": ["a"]}, None, None, None, "class_names has 1 names"),
    "class_names missing a label": ({"class_names": {"angular shape": "a"}}, None, None, None, "round shape"),
    "val_fraction out of range": ({"val_fraction": 1.5}, None, None, None, "val_fraction"),
    "groups of another length": ({}, None, None, lambda g: g[:5], "groups has shape"),
    "a missing group": ({}, None, None, lambda g: np.where(np.arange(len(g)) == 2, None, g), "missing value"),
    "unknown method": ({"method": "groupcop"}, None, None, None, "groupcop"),
    "unknown hyper-parameter": ({"hyperparameters": {"epochz": 1}}, None, None, None, "epochz"),
    "backbone of a wrong type": ({"backbone": 42}, None, None, None, "backbone"),
    "phrases for kmeans": ({"groups": "kmeans", "bias_prompts": "auto"}, None, None, None, "kmeans"),
}


@pytest.mark.parametrize("case", BAD_FITS)
def test_bad_input_is_one_user_error_line(world, case):
    kwargs, x_of, y_of, g_of, words = BAD_FITS[case]
    fit = world["fit"]
    X, y = (x_of or (lambda v: v))(fit.X), (y_of or (lambda v: v))(fit.y)
    groups = g_of(fit.g) if g_of else None
    with pytest.raises(UserError) as err:
        GroupCoOpEstimator(**{"hyperparameters": FAST, **kwargs}).fit(X, y, groups=groups)
    assert words in one_line(err), one_line(err)
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)  # scikit-learn's convention too


def test_predict_before_fit_or_on_other_features_is_one_line(world):
    fit = world["fit"]
    with pytest.raises(NotFitted) as err:
        GroupCoOpEstimator().predict(fit.X)
    assert isinstance(err.value, UserError) and isinstance(err.value, NotFittedError)
    one_line(err)
    est = GroupCoOpEstimator(method="zeroshot").fit(fit.X, fit.y)
    with pytest.raises(InputError) as err:
        est.predict(fit.X[:, :64])
    assert isinstance(err.value, ValueError) and "64 features" in one_line(err)


def test_what_needs_pixels_is_refused_and_the_unnamed_grid_left_out():
    from groupcoop.data.base import GroupDataset
    from groupcoop.runs.pipeline import discovered_grid

    images = FeatureRows(4, "abc")
    with pytest.raises(UserError) as err:
        images.load(0)
    assert "image features, not images" in one_line(err)
    ds = GroupDataset("features", images, [0, 0, 1, 1], np.zeros((4, 0)), [0, 0, 0, 0], ["a", "b"], [], [])
    plan = SimpleNamespace(discovery={"unnamed": ["image features"]}, train=np.array([0, 1, 2, 3]))
    assert discovered_grid(ds, plan) == {}  # the grid of example images would need pixels


# --- a saved, exported classifier ------------------------------------------------------------------

def readme_block(marker: str) -> str:
    """The ```python block after `<!-- test: marker -->` in the README or a docs page."""
    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    found = [m.group(1) for page in pages
             for m in re.finditer(rf"<!-- test: {marker} -->\s*```python\n(.*?)```", page.read_text(encoding="utf-8"),
                                  re.S)]
    assert found, f"no python block marked {marker}"
    return found[0]


def test_from_pretrained_is_the_readme_export_block_in_one_call(world, tmp_path, monkeypatch):
    from groupcoop.runs.predict import Classifier, export_head

    fit, test = world["fit"], world["test"]
    est = GroupCoOpEstimator(hyperparameters=FAST).fit(fit.X, fit.y, groups=fit.g)
    est.save(tmp_path / "run")
    export_head(tmp_path / "run", tmp_path / "classifier")
    world["dataset"].images.load(int(test.rows[0])).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_block("export"), "README export block", "exec"), scope)  # plain open_clip
    block = scope["probs"][0].numpy()

    clf = Classifier.from_pretrained(tmp_path / "classifier")
    assert np.abs(clf.predict(["photo.png"]).probabilities[0] - block).max() <= 1e-5
    assert clf.class_names == list(scope["meta"]["class_names"])
    loaded = GroupCoOpEstimator.from_pretrained(tmp_path / "classifier")
    with torch.no_grad():
        x = clf.backbone.encode_images(clf.backbone.preprocess(world["dataset"].images.load(int(test.rows[0])))[None])
    assert np.abs(loaded.predict_proba(x.numpy())[0] - block).max() <= 1e-5
    assert np.abs(est.predict_proba(x.numpy())[0] - block).max() <= 1e-5
    assert list(loaded.predict(test.X[:5])) == list(est.predict(test.X[:5]))
    run = Classifier.from_run(tmp_path / "run")  # the saved run folder itself, by its config.yaml
    assert np.abs(run.predict(["photo.png"]).probabilities[0] - block).max() <= 1e-5
    with pytest.raises(UserError):
        loaded.save(tmp_path / "again")  # loaded from a folder: nothing new to write

    weights = tmp_path / "classifier" / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit: the model still loads, the checksum says no
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError) as err:
        Classifier.from_pretrained(tmp_path / "classifier")
    assert "sha256" in one_line(err)


def test_the_docs_example_runs_as_it_stands(capsys):
    scope: dict = {}
    exec(compile(readme_block("estimator"), "docs/estimator.md block", "exec"), scope)
    assert list(scope["clf"].classes_) == ["angular shape", "round shape"]
    assert scope["clf"].run_.metrics["groups_source"] == "gt" and "angular shape" in capsys.readouterr().out


def test_the_package_exports_the_estimator_beside_the_classifier():
    assert groupcoop.GroupCoOpEstimator is GroupCoOpEstimator and "GroupCoOpEstimator" in groupcoop.__all__
    assert groupcoop.GroupCoOpClassifier is groupcoop.Classifier  # the older name stays the image classifier
