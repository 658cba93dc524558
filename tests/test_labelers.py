"""Group labelers and their quality report, on synthetic Gaussian blobs (no CLIP needed).

Each class's images sit around a class centre; each bias value adds its own direction, so
the true attribute is a cluster in feature space. Zero-shot scores are a noisy version of
the truth: the right value wins for about 75% of the images.
"""

import json

import numpy as np
import pytest

from groupcoop.data.base import group_index
from groupcoop.errors import UserError
from groupcoop.grouping.adaptive import Reference, zeroshot_association
from groupcoop.grouping.labelers import LABELERS, Labeler, assign_attributes, assign_groups, group_sizes
from groupcoop.grouping.options import GroupingOptions
from groupcoop.grouping.pseudo import DEFAULT_PSEUDO_VARIANT, PSEUDO_VARIANTS, Variant
from groupcoop.grouping.quality import quality


def blobs(n=300, d=32, sizes=(2,), n_classes=2, sep=1.0, correct=0.75, seed=0):
    """Features (n, d) L2-normalised, y, true attrs (n, k) and noisy zero-shot scores."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    attrs = np.stack([rng.integers(0, s, n) for s in sizes], axis=1)
    feats = rng.normal(size=(n, d)) + sep * rng.normal(size=(n_classes, d))[y]
    scores = []
    for j, s in enumerate(sizes):
        feats += sep * rng.normal(size=(n_classes, s, d))[y, attrs[:, j]]
        wrong = rng.random(n) > correct
        said = np.where(wrong, (attrs[:, j] + rng.integers(1, s, n)) % s, attrs[:, j])
        scores.append(0.25 + 0.05 * np.eye(s)[said] + 0.01 * rng.normal(size=(n, s)))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float32), y, attrs, scores


def true_groups(y, attrs, sizes):
    return group_index(y, attrs, list(sizes))


def test_the_settings_take_every_name_of_the_tables():
    for name in LABELERS:
        assert GroupingOptions(source=name).source == name
    for variant in PSEUDO_VARIANTS:
        assert GroupingOptions(variant=variant).variant == variant
    assert GroupingOptions().variant == DEFAULT_PSEUDO_VARIANT


def test_zeroshot_is_argmax():
    feats, y, _, scores = blobs()
    out = assign_attributes("zeroshot", feats, y, [2], scores)
    assert out.shape == (len(y), 1)
    np.testing.assert_array_equal(out[:, 0], scores[0].argmax(axis=1))


def test_gt_returns_labels():
    feats, y, attrs, _ = blobs(sizes=(2, 3))
    np.testing.assert_array_equal(assign_attributes("gt", feats, y, [2, 3], attrs=attrs), attrs)
    with pytest.raises(UserError):
        assign_attributes("gt", feats, y, [2, 3])


def test_kmeans_recovers_separated_clusters():
    feats, y, attrs, _ = blobs(sep=3.0)
    pred = assign_groups("kmeans", feats, y, [2])
    assert quality(true_groups(y, attrs, [2]), pred)["accuracy"] > 0.95


def test_kmeans_several_attributes_fills_the_product():
    """One clustering per class into prod(sizes) clusters, not the same split twice."""
    feats, y, attrs, _ = blobs(n=400, sizes=(2, 2), sep=3.0)
    pred = assign_groups("kmeans", feats, y, [2, 2])
    assert len(np.unique(pred)) == 8
    assert quality(true_groups(y, attrs, [2, 2]), pred)["accuracy"] > 0.95


def test_kmeans_extra_clusters_do_not_collide():
    feats, y, _, _ = blobs()
    assert group_sizes("kmeans", [2], clusters=5) == [5]
    pred = assign_groups("kmeans", feats, y, [2], clusters=5)
    assert pred.max() < 2 * 5 and len(np.unique(pred)) == 10
    assert np.all(pred // 5 == y)  # groups never cross classes


GEOMETRY_VARIANTS = ["blend", "gmm", "kmeans", "selftrain", "selftrain_balanced"]  # refit on the features


@pytest.mark.parametrize("variant", GEOMETRY_VARIANTS)
def test_pseudo_beats_noisy_zeroshot(variant):
    feats, y, attrs, scores = blobs(sep=1.0)
    truth = true_groups(y, attrs, [2])
    zs = quality(truth, assign_groups("zeroshot", feats, y, [2], scores))
    ps = quality(truth, assign_groups("pseudo", feats, y, [2], scores, variant=variant))
    assert zs["named_accuracy"] < 0.85
    # pseudo keeps the prompts' names: agreement without any matching improves
    assert ps["named_accuracy"] > zs["named_accuracy"] + 0.1
    assert ps["named_accuracy"] > 0.95


@pytest.mark.parametrize("variant", sorted(PSEUDO_VARIANTS))
def test_every_variant_labels_every_image_within_its_class(variant):
    feats, y, _, scores = blobs(sizes=(2, 3))
    a = assign_attributes("pseudo", feats, y, [2, 3], scores, variant=variant)
    assert a.shape == (len(y), 2) and a.min() >= 0 and a[:, 0].max() < 2 and a[:, 1].max() < 3
    assert np.all(assign_groups("pseudo", feats, y, [2, 3], scores, variant=variant) // 6 == y)


def test_a_variant_entry_says_whether_it_looks_across_classes(monkeypatch):
    """The whole-split step is the variant entry's: a new entry with one gets it run, once, after every class."""
    calls = []

    def step(out, feats, y, sizes, scores, seed, reference):
        calls.append(len(out))
        return out

    monkeypatch.setitem(PSEUDO_VARIANTS, "recall_then_step", Variant(PSEUDO_VARIANTS["recall"].label, step))
    feats, y, _, scores = blobs()
    stepped = assign_attributes("pseudo", feats, y, [2], scores, variant="recall_then_step")
    assert calls == [len(y)]
    np.testing.assert_array_equal(stepped, assign_attributes("pseudo", feats, y, [2], scores, variant="recall"))
    for labeler in LABELERS.values():
        for variant in labeler.variants or [DEFAULT_PSEUDO_VARIANT]:
            entry = (labeler.variants or {}).get(variant)
            assert labeler.whole_split(variant) is (entry.whole_split if entry else None)


def _spurious(n=1200, aligned=0.95, seed=0, scores_see_it=False):
    """Two classes and a binary bias that agrees with the class on `aligned` of the images; the
    features show the class faintly and the bias strongly. Zero-shot scores are noise about the
    bias (a feature captions never named) unless `scores_see_it`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    bias = np.where(rng.random(n) < aligned, y, 1 - y)
    directions = np.random.default_rng(99).normal(size=(2, 32))  # the same world for every split
    feats = rng.normal(size=(n, 32)) + 0.8 * directions[0] * (2 * y - 1)[:, None] \
        + 3.0 * directions[1] * (2 * bias - 1)[:, None]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)  # unit length, as CLIP's image features
    said = bias if scores_see_it else rng.integers(0, 2, n)
    scores = [0.25 + 0.05 * np.eye(2)[said] + 0.01 * rng.normal(size=(n, 2))]
    return feats, y, bias[:, None], scores


def test_adaptive_finds_a_bias_zero_shot_cannot_see():
    feats, y, attrs, scores = _spurious()
    truth = true_groups(y, attrs, [2])
    recall = quality(truth, assign_groups("pseudo", feats, y, [2], scores, variant="recall"))
    adaptive = quality(truth, assign_groups("pseudo", feats, y, [2], scores, variant="adaptive"))
    assert recall["min_recall"] < 0.6  # zero-shot's guesses, refined, are still guesses
    assert adaptive["min_recall"] > 0.9 and adaptive["accuracy"] > 0.95
    assert np.all(assign_groups("pseudo", feats, y, [2], scores, variant="adaptive") // 2 == y)


def test_adaptive_labels_a_balanced_split_by_what_the_training_split_taught():
    """A group-balanced val split shows no class-bias association of its own: which attributes
    zero-shot cannot see, and the ERM, come from the training split."""
    train_x, train_y, _, train_scores = _spurious()
    feats, y, attrs, scores = _spurious(n=600, aligned=0.5, seed=1)
    truth = true_groups(y, attrs, [2])
    alone = quality(truth, assign_groups("pseudo", feats, y, [2], scores, variant="adaptive"))
    taught = quality(truth, assign_groups("pseudo", feats, y, [2], scores, variant="adaptive",
                                          reference=Reference(train_x, train_y, train_scores)))
    assert alone["min_recall"] < 0.7 and taught["min_recall"] > 0.9


def test_adaptive_keeps_zero_shot_where_it_sees_the_bias():
    feats, y, attrs, scores = _spurious(scores_see_it=True)
    assert zeroshot_association(scores[0].argmax(axis=1), y, 2) > 0.8
    np.testing.assert_array_equal(assign_attributes("pseudo", feats, y, [2], scores, variant="adaptive"),
                                  assign_attributes("pseudo", feats, y, [2], scores, variant="recall"))


def test_zeroshot_association_is_zero_for_independent_labels_and_one_for_the_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    assert zeroshot_association(rng.integers(0, 2, 3000), y, 2) < 0.1
    assert zeroshot_association(y, y, 3) > 0.99
    assert zeroshot_association(np.zeros(3000, dtype=int), y, 2) < 0.1  # one value only: no association


def test_adaptive_with_one_class_keeps_recall():
    """No second class, no ERM margin: the zero-shot-based labels stand."""
    feats, _, _, scores = _spurious(n=200)
    y = np.zeros(200, dtype=int)
    np.testing.assert_array_equal(assign_attributes("pseudo", feats, y, [2], scores, variant="adaptive"),
                                  assign_attributes("pseudo", feats, y, [2], scores, variant="recall"))


def _imbalanced(seed=0):
    """One class, 95% majority value: zero-shot finds most minority images, with a prompt that favours the majority."""
    rng = np.random.default_rng(seed)
    n = 400
    attrs = (rng.random(n) < 0.05).astype(int)[:, None]
    y = np.zeros(n, dtype=int)
    feats = rng.normal(size=(n, 16)) + 0.6 * rng.normal(size=(2, 16))[attrs[:, 0]]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    scores = [0.3 + 0.04 * np.eye(2)[attrs[:, 0]] + 0.015 * rng.normal(size=(n, 2)) + np.array([0.01, 0.0])]
    return feats, y, attrs, scores


def test_recall_keeps_every_minority_image_that_zeroshot_finds():
    feats, y, attrs, scores = _imbalanced()
    zs = assign_attributes("zeroshot", feats, y, [2], scores)[:, 0]
    rec = assign_attributes("pseudo", feats, y, [2], scores, variant="recall")[:, 0]
    selftrain = assign_attributes("pseudo", feats, y, [2], scores, variant="selftrain")[:, 0]
    minority = 1  # the rarer value in this class
    assert np.all(rec[zs == minority] == minority) and np.all(rec[selftrain == minority] == minority)


def test_calibrated_removes_a_prompt_that_scores_everything_higher():
    feats, y, attrs, scores = _imbalanced()
    shifted = [scores[0] + np.array([0.2, 0.0])]  # value 0's prompt wins everywhere
    assert (assign_attributes("zeroshot", feats, y, [2], shifted)[:, 0] == 0).all()
    cal = assign_attributes("pseudo", feats, y, [2], shifted, variant="calibrated")[:, 0]
    np.testing.assert_array_equal(cal, assign_attributes("pseudo", feats, y, [2], scores, variant="calibrated")[:, 0])


def test_two_attributes_combine_into_product_index():
    feats, y, attrs, scores = blobs(sizes=(2, 3))
    a = assign_attributes("zeroshot", feats, y, [2, 3], scores)
    g = assign_groups("zeroshot", feats, y, [2, 3], scores)
    np.testing.assert_array_equal(g, y * 6 + a[:, 0] + 2 * a[:, 1])
    pseudo = assign_groups("pseudo", feats, y, [2, 3], scores, variant="selftrain")  # geometry fixes zero-shot's slips
    assert pseudo.min() >= 0 and pseudo.max() < 2 * 6
    assert quality(true_groups(y, attrs, [2, 3]), pseudo)["named_accuracy"] > 0.9


def test_few_images_per_class_degrade_gracefully():
    """A 10-valued attribute with classes of 3 images: no crash, zero-shot names kept."""
    feats, y, _, _ = blobs(n=6, sizes=(2,), n_classes=2)
    rng = np.random.default_rng(1)
    scores = [rng.normal(size=(6, 10))]
    pseudo = assign_attributes("pseudo", feats, y, [10], scores)
    np.testing.assert_array_equal(pseudo[:, 0], scores[0].argmax(axis=1))
    kmeans = assign_attributes("kmeans", feats, y, [10])
    assert kmeans.shape == (6, 1) and kmeans.max() < 10
    gmm = assign_attributes("pseudo", feats, y, [3], [s[:, :3] for s in scores], variant="gmm")
    assert gmm.shape == (6, 1) and gmm.max() < 3


def test_empty_zeroshot_value_still_gets_a_cluster():
    """A value no image scores highest for starts at its best-scoring image instead."""
    feats, y, attrs, scores = blobs(sep=3.0)
    s = scores[0].copy()
    s[:, 1] -= 1.0  # zero-shot never picks value 1 ...
    s[:, 1] += 0.5 * (attrs[:, 0] == 1)  # ... but ranks true value-1 images highest for it
    pred = assign_groups("pseudo", feats, y, [2], [s], variant="selftrain")
    assert quality(true_groups(y, attrs, [2]), pred)["named_accuracy"] > 0.95


def test_quality_permuted_labelling_is_perfect():
    feats, y, attrs, _ = blobs(sizes=(2, 2))
    truth = true_groups(y, attrs, [2, 2])
    perm = np.random.default_rng(0).permutation(8) + 100
    q = quality(truth, perm[truth])
    assert q["accuracy"] == 1.0 and q["nmi"] == pytest.approx(1.0) and q["ari"] == pytest.approx(1.0)
    assert all(g["precision"] == 1.0 and g["recall"] == 1.0 for g in q["groups"])


def test_quality_json_shape():
    truth = np.array([0, 0, 1, 1, 1, 2, -1])
    pred = np.array([5, 5, 5, 7, 7, 9, 3])
    q = quality(truth, pred, names=["a", "b", "c"])
    json.dumps(q)  # plain Python values only
    assert {"accuracy", "nmi", "ari", "groups"} <= set(q)
    assert all(type(q[k]) is float for k in ("accuracy", "nmi", "ari"))
    assert q["accuracy"] == pytest.approx(5 / 6)  # the -1 row is skipped
    g = q["groups"]
    assert [x["group"] for x in g] == [0, 1, 2] and [x["name"] for x in g] == ["a", "b", "c"]
    assert {"group", "name", "n_true", "n_pred", "precision", "recall"} <= set(g[0])
    assert g[1]["n_true"] == 3 and g[1]["n_pred"] == 2 and g[1]["precision"] == 1.0
    assert g[1]["recall"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("method", ["zeroshot", "pseudo"])
def test_missing_scores_is_a_user_error(method):
    feats, y, _, _ = blobs()
    with pytest.raises(UserError, match="--bias-prompts"):
        assign_attributes(method, feats, y, [2])


def test_bad_names_and_shapes_are_user_errors():
    feats, y, _, scores = blobs()
    with pytest.raises(UserError, match="pseudo"):
        assign_groups("psuedo", feats, y, [2], scores)
    with pytest.raises(UserError, match="variant"):
        assign_groups("pseudo", feats, y, [2], scores, variant="nope")
    with pytest.raises(UserError, match="expected"):
        assign_groups("zeroshot", feats, y, [3], scores)


@pytest.mark.parametrize("method,variant", [(name, v) for name, labeler in LABELERS.items()
                                            for v in (sorted(labeler.variants) if labeler.variants else [None])])
def test_same_seed_same_output(method, variant):
    feats, y, attrs, scores = blobs(sizes=(2, 2), sep=0.5)
    run = lambda seed: assign_groups(method, feats, y, [2, 2], scores, seed=seed, attrs=attrs, variant=variant)
    np.testing.assert_array_equal(run(3), run(3))


# ---------------------------------------------------------------- a newcomer's unnamed labeler


def _first_feature_bins(part):
    """A new unnamed labeler: one class's images binned by their first feature into `k` equal bins."""
    ranks = np.argsort(np.argsort(part.feats[:, 0]))
    return ranks * part.k // len(ranks)


def _constructed_prep(n=120):
    """A dataset with named bias values ("land", "water") and blob features: train, val, test."""
    import torch

    from groupcoop.data.base import GroupDataset
    from groupcoop.features.store import Features
    from groupcoop.runs.pipeline import Prepared

    class NoImages:
        def __len__(self):
            return n

        def identity(self):
            return "none"

    feats, y, attrs, _ = blobs(n=n, sep=3.0)
    split = np.arange(n) % 3  # train, val, test
    ds = GroupDataset("constructed", NoImages(), y=y, attrs=attrs, split=split, class_names=["a", "b"],
                      attribute_names=["place"], attribute_values=[["land", "water"]])
    return Prepared(ds, None, Features.from_tensor(torch.as_tensor(feats)))


@pytest.mark.parametrize("clusters", [None, 3])
def test_a_new_unnamed_labeler_gets_unnamed_groups(monkeypatch, clusters):
    """As a newcomer adds one: a function and one table entry, nothing else. Its groups are
    "cluster k" (never the dataset's value names, no phrases for prompts), `clusters` sets how
    many, and zeroshot_groups refuses them."""
    from groupcoop.grouping.plan import labeler_spec, plan_groups
    from groupcoop.methods import RunPlan, get_method
    from groupcoop.methods.zeroshot import ZeroShotGroupsParams

    monkeypatch.setitem(LABELERS, "bins", Labeler("bins", _first_feature_bins, needs_feats=True, unnamed=True))
    # the schema's choices are read from the table once, at import (a newcomer's entry is in the
    # source then): step past validation to the options such an entry would give
    options = GroupingOptions(source="kmeans", clusters=clusters).model_copy(update={"source": "bins"})
    prep = _constructed_prep()
    k = clusters or 2
    plan = plan_groups(prep, options, seed=0)
    assert plan.source == "bins" and plan.spec.phrases is None
    assert plan.spec.names() == [f"{c}, cluster {i}" for c in ("a", "b") for i in range(k)]
    assert plan.train.max() < 2 * k and np.all(plan.train // k == prep.dataset.y[prep.dataset.split_indices("train")])
    assert group_sizes("bins", [2], clusters) == [k]
    spec = labeler_spec(prep.dataset, options)
    with pytest.raises(UserError, match="bins clusters have no names"):
        get_method("zeroshot_groups").check(RunPlan(prep.dataset, options, spec, None), ZeroShotGroupsParams())
