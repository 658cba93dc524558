"""AFR (methods/afr.py): a base ERM head's poorly fit examples are upweighted and its last layer
retrained; checked on a planted spurious feature (small numpy tasks) and on synth-waterbirds."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from groupcoop.errors import UserError
from groupcoop.methods import METHODS, afr
from groupcoop.methods.base import SplitData, balanced_weights
from groupcoop.methods.linear import Scaler, head_from_logreg
from groupcoop.metrics import group_accuracies, worst_group_accuracy
from groupcoop.runs.pipeline import Prepared, check_run, run_method
from groupcoop.runs.settings import make_settings


def planted(counts, rng, dim=16):
    """Features of groups (y, s) = (0,0), (0,1), (1,0), (1,1) with `counts` examples each: a weak,
    noisy core direction (y) and a strong, clean spurious one (s), L2-normalised rows."""
    y = np.concatenate([np.full(n, g // 2) for g, n in enumerate(counts)])
    s = np.concatenate([np.full(n, g % 2) for g, n in enumerate(counts)])
    x = rng.normal(0, 0.6, (len(y), dim))
    x[:, 0] += 0.6 * (2 * y - 1)  # core: about 84% accurate on its own
    x[:, 1] = (2 * s - 1) * 2.0 + rng.normal(0, 0.3, len(y))  # spurious: separable
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.as_tensor(x, dtype=torch.float32), y, 2 * y + s


def planted_task(seed=0):
    rng = np.random.default_rng(seed)
    split = {name: SplitData(*planted(counts, rng)) for name, counts in
             (("train", [1900, 100, 100, 1900]), ("val", [150, 150, 150, 150]), ("test", [500, 500, 500, 500]))}
    task = SimpleNamespace(train=split["train"], val=split["val"], n_classes=2, seed=seed, log=lambda _: None,
                           selection_key="val_worst_group_acc")
    return task, split["test"]


def worst_group(head, data: SplitData) -> float:
    pred = head.predict_classes(data.feats)
    return worst_group_accuracy(group_accuracies(pred, data.y, data.groups, 4)[0])


FAST = {"gammas": [2.0, 8.0, 20.0], "lambdas": [0.0, 0.1], "steps": 300}


def test_afr_upweights_the_minority_and_beats_its_erm_base(monkeypatch):
    task, test = planted_task()
    hp = afr.AFRParams(**FAST)
    seen = {}
    split, weights = afr.split_train, afr.afr_weights
    monkeypatch.setattr(afr, "split_train", lambda *a: seen.setdefault("rows", split(*a)))
    monkeypatch.setattr(afr, "afr_weights", lambda *a: seen.setdefault("w", weights(*a)))
    fitted = afr.fit_afr(task, hp)
    base_rows, rw_rows = seen["rows"]
    assert len(base_rows) == 3200 and len(rw_rows) == 800 and not set(base_rows) & set(rw_rows)

    # the base model's low-confidence examples are the minority groups: they get the larger weights
    minority = np.isin(task.train.groups[rw_rows], [1, 2])
    ratios = [w[minority].mean() / w[~minority].mean() for w in seen["w"]]  # per gamma of the grid
    assert np.allclose(seen["w"].sum(axis=1), 1.0)
    assert ratios[0] > 1.5 and ratios[-1] > 5 and np.all(np.diff(ratios) > 0), ratios  # larger gamma, sharper

    # the base (ERM) head leans on the spurious feature; AFR's does not
    scaler = Scaler.fit(task.train.feats.numpy(), True)
    xs = scaler(task.train.feats.numpy())
    base = head_from_logreg(*afr.fit_base(xs[base_rows], task.train.y[base_rows], 2, hp, task.seed), scaler, 2)
    base_wg, afr_wg = worst_group(base, test), worst_group(fitted.head, test)
    assert base_wg < 0.5 and afr_wg > base_wg + 0.15, (base_wg, afr_wg)
    info = fitted.extra["afr"]
    assert info["selection"]["gamma"] in FAST["gammas"] and len(info["selection"]["scores"]) == 6
    assert info["split"] == {"base": 3200, "reweight": 800, "base_fraction": 0.8}
    assert fitted.trainable == 16 + 1


def reference_gd(x, y, w, lam, w0, b0, steps, lr, clip):
    """Their train_embeddings.py step, one layer at a time: nn.Linear from the base, SGD without
    momentum, summed weighted cross-entropy + lam * squared distance to the base, clip_grad_norm_."""
    layer = torch.nn.Linear(x.shape[1], len(b0))
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w0)), layer.bias.copy_(torch.as_tensor(b0))
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.0)
    x, y, w = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y), torch.as_tensor(w, dtype=torch.float32)
    W0, B0 = torch.as_tensor(w0, dtype=torch.float32), torch.as_tensor(b0, dtype=torch.float32)
    for _ in range(steps):
        opt.zero_grad()
        loss = (w * torch.nn.functional.cross_entropy(layer(x), y, reduction="none")).sum()
        loss = loss + lam * ((layer.weight - W0).pow(2).sum() + (layer.bias - B0).pow(2).sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(layer.parameters(), clip)
        opt.step()
    return layer.weight.detach().numpy(), layer.bias.detach().numpy()


def test_gamma_and_lambda_zero_is_plain_class_balanced_retraining():
    rng = np.random.default_rng(3)
    x, y, _ = planted([300, 20, 60, 120], rng, dim=8)
    x = x.numpy()
    p_true = rng.uniform(0, 1, len(y))
    w = afr.afr_weights(p_true, y, [0.0, 5.0], True)
    # gamma 0: every example of a class weighs the same and both classes weigh the same (1/2)
    np.testing.assert_allclose(w[0], balanced_weights(y)[y] / len(y))
    assert np.bincount(y, weights=w[0]) == pytest.approx([0.5, 0.5])
    assert not np.allclose(w[1], w[0])  # gamma 5: the low-p examples rise
    for c in (0, 1):  # within a class, the lower the base's p_true, the larger the weight
        order = np.argsort(p_true[y == c])
        assert np.all(np.diff(w[1][y == c][order]) < 0)

    w0, b0 = rng.normal(0, 1, (2, 8)), np.array([0.3, -0.3])
    hp = afr.AFRParams(steps=60, lr=0.05, grad_clip=0.3, early_stop=False)  # clipping active
    with afr.one_thread():  # tiny products: a busy machine's threads only slow them down
        W, B, steps = afr.retrain(x, y, np.stack([w[0], w[1]]), [0.0, 0.2], w0, b0, hp, None)
        refs = [reference_gd(x, y, w[m], lam, w0, b0, 60, 0.05, 0.3) for m, lam in enumerate([0.0, 0.2])]
    assert steps == [60, 60]
    for m, (ref_w, ref_b) in enumerate(refs):  # the vectorised grid is their per-layer loop, layer by layer
        np.testing.assert_allclose(W[m], ref_w, atol=2e-5)
        np.testing.assert_allclose(B[m], ref_b, atol=2e-5)
    assert not np.allclose(W[0], w0)  # it trained


def test_early_stopping_keeps_each_layers_best_validation_step():
    task, _ = planted_task(seed=1)
    rows = np.random.default_rng(0).choice(len(task.train.y), 600, replace=False)
    x, y = task.train.feats.numpy()[rows], task.train.y[rows]
    w = np.full((1, 600), 1 / 600)
    w0, b0 = afr.fit_base(x, y, 2, afr.AFRParams(), 0)
    keys = afr.ValKeys(task.val.feats.numpy(), task.val.y, task.val.groups)
    hp = afr.AFRParams(steps=40, lr=0.05)
    with afr.one_thread():
        W, B, steps = afr.retrain(x, y, w, [0.0], w0, b0, hp, keys)
        worst, _ = keys(torch.as_tensor(W).transpose(0, 1), torch.as_tensor(B).T)
        best = 0.0
        for k in range(1, 41):  # the kept step's score is the best of all steps
            Wk, Bk, _ = afr.retrain(x, y, w, [0.0], w0, b0, hp.model_copy(update={"steps": k, "early_stop": False}),
                                    None)
            best = max(best, float(keys(torch.as_tensor(Wk).transpose(0, 1), torch.as_tensor(Bk).T)[0][0]))
    assert 1 <= steps[0] <= 40 and float(worst[0]) == pytest.approx(best)


def test_bad_hyperparameters_are_refused():
    recipe = METHODS["afr"]
    assert recipe.kind == "linear" and recipe.needs_groups == "none" and recipe.rows == "class"
    assert recipe.params({"gammas": "0,4"}).gammas == [0.0, 4.0]
    for bad in ({"base_fraction": 1.0}, {"gammas": [-1]}, {"lambdas": []}, {"steps": 0}):
        with pytest.raises(UserError) as err:
            recipe.params(bad)
        assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)
    with pytest.raises(UserError, match="base_fraction"):
        afr.split_train(3, 0.2, 0)


def test_afr_never_reads_the_training_split_bias_labels(waterbirds_prep):
    settings = make_settings({"dataset": "synth-waterbirds", "backbone": "groupcoop-tiny", "method": "afr",
                              "hyperparameters": {"gammas": [4.0, 12.0], "lambdas": [0.0, 0.1], "steps": 100}})
    ds = waterbirds_prep.dataset
    s = check_run(settings, ds, waterbirds_prep.backbone)[1]
    result = run_method(waterbirds_prep, s, log=lambda _: None)
    tr = ds.split_indices("train")
    attrs = ds.attrs.copy()
    attrs[tr] = ds.attrs[np.random.default_rng(0).permutation(tr)]  # the training rows' bias labels shuffled
    assert (attrs[tr] != ds.attrs[tr]).any()
    shuffled = run_method(Prepared(dataclasses.replace(ds, attrs=attrs), waterbirds_prep.backbone,
                                   waterbirds_prep.feats), s, log=lambda _: None)
    assert torch.equal(shuffled.head.weight, result.head.weight) and torch.equal(shuffled.head.bias, result.head.bias)
    assert shuffled.metrics["afr"] == result.metrics["afr"]
    for split in ("val", "test"):  # all but the training groups' weighting of the accuracies
        a, b = result.metrics["splits"][split], shuffled.metrics["splits"][split]
        assert {k: v for k, v in a.items() if k != "train_weighted_acc"} == \
            {k: v for k, v in b.items() if k != "train_weighted_acc"}
    assert result.metrics["afr"]["split"]["reweight"] == len(tr) - int(len(tr) * 0.8)
    info = result.metrics["afr"]  # the ERM base leans on the background; every reweighted fit less so
    assert all(e["val_worst_group_acc"] > info["base"]["val_worst_group_acc"] + 0.2 for e in info["selection"]["scores"])
    assert result.metrics["splits"]["test"]["worst_group_acc"] > 0.3
