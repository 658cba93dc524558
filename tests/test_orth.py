"""Orth-Proj and Orth-Cali (methods/orth.py): the class prompts projected away from the bias
prompts' text directions, on a constructed text space with a planted bias and on
synth-waterbirds with the tiny CLIP (features from the session cache)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from groupcoop.data.base import GroupSpec
from groupcoop.grouping.options import GroupingOptions
from groupcoop.methods import METHODS
from groupcoop.methods.base import FitTask, RunPlan
from groupcoop.methods.orth import calibrated, complement, pair_matrix, positive_pairs

# --- a constructed text space: words are vectors, a text is the sum of its words' vectors -------------

D = 8
E = np.eye(D)
WORDS = {  # e0 the class axis, e1 the bias axis (water +, land -); the class words lean on the bias
    "round": E[0] + 0.6 * E[1] + E[4], "angular": -E[0] - 0.6 * E[1] + E[4],
    "water": E[1] + 0.3 * E[5], "land": -E[1] + 0.3 * E[5], "object": E[3], "shape": E[6],
}
COMMON = 0.5 * E[2]  # what every prompt shares ("a photo of a")


class WordBackbone:
    """A backbone whose text features are normalised sums of word vectors (templates ignored)."""

    logit_scale = 100.0

    def text_features(self, texts, templates=None) -> torch.Tensor:
        rows = [COMMON + sum((WORDS[w] for w in t.split() if w in WORDS), np.zeros(D)) for t in texts]
        return F.normalize(torch.tensor(np.stack(rows)), dim=-1).float()

    def row_bias(self, n):
        return None


SPEC = GroupSpec(("angular shape", "round shape"), (("on land", "on water"),), (("{} on land", "{} on water"),))


def word_task(spec: GroupSpec = SPEC, logs: list | None = None) -> FitTask:
    dataset = SimpleNamespace(class_names=list(spec.class_names), n_classes=len(spec.class_names))
    return FitTask(dataset, WordBackbone(), None, SimpleNamespace(spec=spec), 0,
                   (logs if logs is not None else []).append)


def fit(name: str, task: FitTask, **hp):
    recipe = METHODS[name]
    return recipe.fit(task, recipe.params(hp))


def pair_images() -> torch.Tensor:
    """Per class, an image on land and the same image on water: they differ only along the bias axis."""
    rows = [s * 0.3 * E[0] + b * E[1] + E[7] for s in (-1, 1) for b in (-1, 1)]  # class -1 = angular
    return F.normalize(torch.tensor(np.stack(rows)), dim=-1).float()


@pytest.mark.parametrize("spurious", ["phrase", "filler", "classes"])
def test_orth_proj_removes_a_planted_bias_direction(spurious):
    task = word_task()
    zeroshot = fit("zeroshot", task).head
    proj = fit("orth_proj", task, spurious=spurious)
    assert proj.trainable == 0 and proj.extra["orth"]["directions"] == 2
    # the class rows are orthogonal to every spurious prompt's embedding...
    texts = proj.extra["orth"]["spurious_prompts"]
    if spurious == "classes":
        a = F.normalize(sum(task.backbone.text_features([f"{c} on land", f"{c} on water"])
                            for c in SPEC.class_names), dim=-1)
    else:
        assert texts == (["on land", "on water"] if spurious == "phrase" else ["object on land", "object on water"])
        a = task.backbone.text_features(texts)
    assert torch.allclose(proj.head.weight @ a.T, torch.zeros(2, 2), atol=1e-5)
    # ...and with them the bias axis: an image's class no longer flips with its background
    images, truth = pair_images(), np.array([0, 0, 1, 1])
    before, after = zeroshot.predict_classes(images), proj.head.predict_classes(images)
    assert before.tolist() == [0, 1, 0, 1]  # zero-shot reads the background, not the object
    assert after.tolist() == truth.tolist()
    if spurious != "classes":  # class-free prompts span the bias axis itself: nothing is left on it
        assert torch.allclose(proj.head.weight[:, 1], torch.zeros(2), atol=1e-6)


def test_orth_cali_pulls_positive_pairs_together():
    task = word_task()
    hp = METHODS["orth_cali"].params({"spurious": "filler"})
    pairs = positive_pairs(task, hp)
    assert len(pairs) == 2  # one per class: (on land, on water)
    # a bias direction the class-free prompts miss: P0 alone keeps the pairs apart, calibration closes them
    p0, rank = complement(np.stack([E[1]]))
    assert rank == 1
    shifted = [(zi + 0.5 * E[5], zj) for zi, zj in pairs]
    m = pair_matrix(shifted, D)
    gaps = [np.mean([np.linalg.norm(calibrated(p0, m, lam) @ (zi - zj)) for zi, zj in shifted])
            for lam in (0.0, 10.0, 1000.0)]
    assert gaps[0] > 0.3 and gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.01 * gaps[0]
    assert np.allclose(calibrated(p0, m, 0.0), p0)


def test_orth_cali_with_lambda_zero_is_orth_proj(waterbirds_prep):
    task = prep_task(waterbirds_prep, waterbirds_prep.dataset.group_spec)
    proj = fit("orth_proj", task)
    zero, cali = fit("orth_cali", task, lam=0.0), fit("orth_cali", task)
    assert torch.allclose(zero.head.weight, proj.head.weight, atol=1e-6)
    assert not torch.allclose(cali.head.weight, proj.head.weight, atol=1e-4)  # lam > 0 does change it
    assert cali.extra["orth"]["lambda"] == METHODS["orth_cali"].defaults()["lam"] and cali.extra["orth"]["pairs"] == 2
    assert proj.extra["orth"]["attributes"] == [["grass", "water"]] and proj.extra["orth"]["directions"] == 2


def prep_task(prep, spec: GroupSpec, logs: list | None = None) -> FitTask:
    return FitTask(prep.dataset, prep.backbone, prep.feats, SimpleNamespace(spec=spec), 0,
                   (logs if logs is not None else []).append)


@pytest.mark.parametrize("name", ["orth_proj", "orth_cali"])
def test_without_phrases_it_is_zero_shot(waterbirds_prep, name):
    classes = tuple(waterbirds_prep.dataset.class_names)
    logs: list[str] = []
    task = prep_task(waterbirds_prep, GroupSpec(classes, (("cluster 0", "cluster 1"),), None), logs)
    fitted, zeroshot = fit(name, task), fit("zeroshot", task)
    assert torch.allclose(fitted.head.weight, zeroshot.head.weight, atol=1e-6)
    assert fitted.extra["orth"]["directions"] == 0 and len(logs) == 1 and "plain zero-shot" in logs[0]
    # discovery that found nothing is not refused before the run: the fallback is zero-shot
    grouping = GroupingOptions(source="pseudo", bias_prompts="auto")
    METHODS[name].check(RunPlan(waterbirds_prep.dataset, grouping, task.spec, waterbirds_prep.backbone),
                        METHODS[name].params())


def test_refused_in_one_line_when_no_phrases_can_come(cli, tmp_path):
    from test_baselines import BASE, one_line_error

    cache = tmp_path / "cache"
    line = one_line_error(cli(*BASE, "--cache-dir", cache, "--method", "orth_proj", "--groups", "kmeans",
                              "--out", tmp_path / "a"), "--method orth_proj", "kmeans clusters have no names")
    assert "--bias-prompts" in line
    assert not any(cache.rglob("*.safetensors")) and not (tmp_path / "a").exists()
