"""GroupCoOp's DFR last layer (`last_layer`, methods/groupcoop.py): a group-balanced regression on
val's groups over the group prompts' logits (and the image features), folded into one linear row per
class; checked on a planted task and end to end on synth-waterbirds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from groupcoop.methods import dfr, groupcoop
from groupcoop.methods.base import Fitted, SplitData
from groupcoop.methods.head import Head
from groupcoop.metrics import group_accuracies, worst_group_accuracy
from groupcoop.runs.pipeline import check_run, run_method
from groupcoop.runs.settings import make_settings


def planted(counts, rng, dim=12):
    """Groups (y, s) = (0,0), (0,1), (1,0), (1,1): a weak core direction (y) and a strong spurious one (s)."""
    y = np.concatenate([np.full(n, g // 2) for g, n in enumerate(counts)])
    s = np.concatenate([np.full(n, g % 2) for g, n in enumerate(counts)])
    x = rng.normal(0, 0.5, (len(y), dim))
    x[:, 0] += 0.8 * (2 * y - 1)
    x[:, 1] = (2 * s - 1) * 2.0 + rng.normal(0, 0.3, len(y))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return SplitData(torch.as_tensor(x, dtype=torch.float32), y, 2 * y + s)


def spurious_prompts(dim=12) -> Head:
    """Group rows (class-major) that read the spurious direction far more than the core one: with max
    aggregation, class y wins wherever s = y, so the two minority groups are mostly wrong. The rows
    weigh the core direction differently per group, so their logits still carry it."""
    rows = torch.zeros(4, dim)
    for g in range(4):
        y, s = divmod(g, 2)
        rows[g, 0] = (0.1 if s == 0 else 0.3) * (2 * y - 1)
        rows[g, 1] = 2 * y - 1
    return Head(rows, 10.0, 2, "max")


def worst_group(head: Head, data: SplitData) -> float:
    return worst_group_accuracy(group_accuracies(head.predict_classes(data.feats), data.y, data.groups, 4)[0])


def task_on(val: SplitData):
    return SimpleNamespace(val_groups=val, n_classes=2, seed=0, log=lambda _: None)


@pytest.mark.parametrize("kind", ["dfr_prompts", "dfr"])
def test_last_layer_is_the_regression_folded_into_one_row_per_class(monkeypatch, kind):
    rng = np.random.default_rng(0)
    val = planted([150, 150, 150, 150], rng)
    seen = {}
    regression = dfr.dfr_regression
    monkeypatch.setattr(dfr, "dfr_regression", lambda x, *a: seen.setdefault("fit", (x, regression(x, *a)))[1])
    hp = groupcoop.GroupCoOpParams(last_layer=kind)
    out = groupcoop.reweighted_last_layer(task_on(val), hp, Fitted(spurious_prompts(), 7, {"best_epoch": 3}))
    inputs, (coef, intercept, scaler, _) = seen["fit"]
    assert inputs.shape[1] == (4 if kind == "dfr_prompts" else 12 + 4)
    expected = scaler(inputs) @ coef.T + intercept  # the regression's own scores on its inputs
    scores = out.head.class_scores(val.feats).double().numpy()
    assert out.head.weight.shape == (2, 12) and out.head.rows_per_class == 1
    np.testing.assert_allclose(scores[:, 1] - scores[:, 0], expected[:, 0], rtol=1e-4, atol=1e-4)
    assert out.extra["best_epoch"] == 3 and out.extra["last_layer"]["kind"] == kind
    assert out.trainable == 7 + inputs.shape[1] + 1


def test_last_layer_repairs_prompts_that_lean_on_the_spurious_attribute():
    rng = np.random.default_rng(1)
    val, test = planted([150, 150, 150, 150], rng), planted([500, 500, 500, 500], rng)
    prompts = spurious_prompts()
    before = worst_group(prompts, test)
    hp = groupcoop.GroupCoOpParams(last_layer="dfr_prompts")
    after = worst_group(groupcoop.reweighted_last_layer(task_on(val), hp, Fitted(prompts, 0)).head, test)
    assert before < 0.5 and after > before + 0.25, (before, after)


def test_groupcoop_with_a_last_layer_runs_end_to_end(waterbirds_prep):
    ds = waterbirds_prep.dataset
    s = make_settings({"dataset": "synth-waterbirds", "backbone": "groupcoop-tiny", "method": "groupcoop",
                       "hyperparameters": {"epochs": 1, "batch_size": 512, "last_layer": "dfr_prompts"}})
    result = run_method(waterbirds_prep, check_run(s, ds, waterbirds_prep.backbone)[1], log=lambda _: None)
    m = result.metrics
    assert m["val_used_for_training"] is True and "val was used for training" in m["note"]
    assert m["last_layer"]["kind"] == "dfr_prompts" and m["splits"]["test"]["worst_group_acc"] > 0
    assert result.head.row_names == list(ds.class_names)  # one row per class now
    assert len(result.learner.info["groups"]) == 4  # the learned prompts keep their group names


def test_a_val_split_too_small_to_regress_on_keeps_the_prompts():
    rng = np.random.default_rng(2)
    val = planted([40, 40, 1, 0], rng)  # class 1 has one image: some half-split lacks it
    prompts = spurious_prompts()
    out = groupcoop.reweighted_last_layer(task_on(val), groupcoop.GroupCoOpParams(last_layer="dfr"), Fitted(prompts, 5))
    assert out.head is prompts and out.trainable == 5
    assert out.extra["last_layer"]["kind"] == "none" and "no examples" in out.extra["last_layer"]["why"]
