"""The baselines of the methods table, each checked for the behaviour that defines it, on
synth-waterbirds with the tiny CLIP (features from the session cache) or on small slices.

Runs are kept short (one epoch, large batches, one C) so the whole file stays well under a
minute once the session's features exist.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from groupcoop.grouping import plan as groups
from groupcoop.errors import UserError
from groupcoop.methods import METHODS, NEEDS, linear
from groupcoop.methods import loop
from groupcoop.methods.coop import GroupDRO
from groupcoop.methods.base import balanced_weights
from groupcoop.runs.pipeline import Prepared, check_run, run_method
from groupcoop.runs.settings import make_settings

BASE = ["train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--quiet"]
BASELINES = ["zeroshot_groups", "linear_probe", "linear_probe_balanced", "group_linear", "dfr", "coop_balanced",
             "coop_groupdro", "jtt"]
FAST = {  # the shortest settings that still exercise each method
    "linear_probe": ["c_values=[1.0]"], "linear_probe_balanced": ["c_values=[1.0]"],
    "group_linear": ["epochs=1", "batch_size=512"], "dfr": ["tune_repeats=1", "repeats=3"],
    "coop_balanced": ["epochs=1", "batch_size=512"], "coop_groupdro": ["epochs=1", "batch_size=256"],
    "jtt": ["epochs=1", "first_epochs=1", "batch_size=512", "upweight=5"], "zeroshot_groups": [],
}
TRAIN_COUNTS = [3498, 184, 56, 1057]


def settings(method: str, **hp):
    return make_settings({"dataset": "synth-waterbirds", "backbone": "groupcoop-tiny", "method": method,
                          "hyperparameters": hp})


def run(prep, method: str, **hp):
    """run_method on prepared features, with the settings check_run resolves for them."""
    return run_method(prep, check_run(settings(method, **hp), prep.dataset, prep.backbone)[1], log=lambda _: None)


def train_cli(cli, out: Path, method: str, *extra: str, sets: list[str] | None = None):
    argv = [*BASE, "--method", method, "--out", out, *extra]
    for kv in FAST[method] if sets is None else sets:
        argv += ["--set", kv]
    result = cli(*argv)
    assert result.code == 0, result.err
    return json.loads((out / "metrics.json").read_text())


def one_line_error(result, *fragments: str) -> str:
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("groupcoop: error: ") and "Traceback" not in result.err, result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- the table -----------------------------------------------------------------------------------

def test_every_recipe_declares_its_needs_schema_and_source():
    for name, recipe in METHODS.items():
        assert recipe.needs_groups in NEEDS and recipe.kind in ("text", "prompt", "linear"), name
        assert recipe.params({}).model_dump() == recipe.defaults()  # the defaults validate
        assert "[" in (recipe.schema.__doc__ or ""), f"{name}: cite the source in its schema's docstring"
        assert recipe.trainable and recipe.labels
    needs = {"dfr": "val", "groupcoop": "train", "linear_probe_balanced": "train", "group_linear": "train",
             "coop_balanced": "train", "coop_groupdro": "train", "zeroshot": "none", "zeroshot_groups": "none",
             "coop": "none", "linear_probe": "none", "jtt": "none"}  # what each paper's method needs
    assert {name: METHODS[name].needs_groups for name in needs} == needs


def test_methods_command_lists_every_method_with_its_needs(cli):
    result = cli("methods")
    assert result.code == 0
    lines = {line.split()[0]: line for line in result.out.splitlines() if line.strip()}
    for name, recipe in METHODS.items():
        assert recipe.labels in lines[name] and recipe.trainable in lines[name], lines[name]
    assert "class + val groups (true, else a labeler's)" in lines["dfr"] and "C*G*D" in lines["group_linear"]
    assert "C*G*M*W" in lines["groupcoop"] and "C*D + C" in lines["linear_probe"]
    verbose = cli("methods", "-v").out
    assert "dfr (needs_groups: val)" in verbose and "    eta = 0.01" in verbose and "    upweight = 20" in verbose
    assert "    c_values = [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01]" in verbose
    assert "Qiu, Potapczynski, Izmailov, Wilson" in verbose and "Chuang, Jampani" in verbose  # each method's source


def test_what_to_use_when_is_the_same_in_the_readme_and_in_methods_verbose(cli):
    from groupcoop.cli.listings import what_to_use

    table = what_to_use()
    assert table.startswith("| situation |") and table in cli("methods", "-v").out
    assert table in (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    for row in table.splitlines()[2:]:  # every best method named is a method of the table
        assert row.split("|")[2].split()[0].strip("`") in METHODS, row


def test_bad_hyperparameters_are_one_line(cli, tmp_path):
    one_line_error(cli(*BASE, "--method", "coop_groupdro", "--set", "eta=-1", "--out", tmp_path / "r"), "eta=-1")
    one_line_error(cli(*BASE, "--method", "dfr", "--set", "c_values=[0.1,-2]", "--out", tmp_path / "r"), "c_values")
    one_line_error(cli(*BASE, "--method", "jtt", "--set", "sampler=natural", "--out", tmp_path / "r"),
                   "there is no --set sampler")


# --- refusals, before any image is read ---------------------------------------------------------

@pytest.fixture
def plain_csv(tmp_path) -> list[str]:
    """A CSV dataset without bias attributes (12 tiny PNGs), as `groupcoop train` flags."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = ["path,label,split"]
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 100, 200 - 10 * i)).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{('cat', 'dog')[i % 2]},{('train', 'val', 'test')[(i // 2) % 3]}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return ["--dataset", "csv", "--root", str(root), "--option", "csv_path=meta.csv", "--option", "path_col=path",
            "--option", "label_col=label", "--workers", "0"]


def test_true_group_recipes_refused_without_them_before_extraction(cli, tmp_path, plain_csv):
    cache = tmp_path / "cache"
    common = ["train", "--backbone", "groupcoop-tiny", "--cache-dir", cache, "--quiet"]
    # no bias labels on val: DFR trains on pseudo-groups, which need phrases this CSV lacks
    line = one_line_error(cli(*common, *plain_csv, "--method", "dfr", "--out", tmp_path / "a"),
                          "needs attribute phrases", "csv")
    assert "--bias-prompts" in line  # says what to give instead
    # where val has true groups DFR trains on them: a labeler's groups are refused
    one_line_error(cli(*common, "--dataset", "synth-waterbirds", "--method", "dfr", "--groups", "pseudo",
                       "--out", tmp_path / "b"), "--groups pseudo does not apply")
    # zero-shot group prompts need named groups
    one_line_error(cli(*common, "--dataset", "synth-waterbirds", "--method", "zeroshot_groups", "--groups", "kmeans",
                       "--out", tmp_path / "c"), "kmeans clusters have no names")
    assert not any(cache.rglob("*.safetensors")), "features were extracted before the refusal"
    assert not any((tmp_path / d).exists() for d in "abc")


def test_train_group_recipes_fall_back_to_pseudo_groups(tmp_path):
    """Recipes that train on groups take --groups like GroupCoOp: data without labels gets pseudo-groups."""
    from groupcoop.data.world.datasets import make_task_dataset

    ds = make_task_dataset("synth-waterbirds")
    unlabelled = dataclasses.replace(ds, attrs=np.full_like(ds.attrs, -1))
    for name in ("linear_probe_balanced", "coop_groupdro", "dfr"):  # dfr: on the labeler's val groups
        options = groups.resolve_method_grouping(METHODS[name], unlabelled, settings(name).groups)
        assert options.source == "pseudo"
    gt = settings("dfr").groups.model_copy(update={"source": "gt"})
    with pytest.raises(UserError, match="--groups gt cannot label synth-waterbirds's validation split"):
        groups.resolve_method_grouping(METHODS["dfr"], unlabelled, gt)


# --- every baseline through `groupcoop train` ------------------------------------------------------

@pytest.mark.parametrize("method", ["zeroshot_groups", "linear_probe", "linear_probe_balanced", "group_linear", "dfr",
                                    "coop_balanced"])
def test_train_cli_writes_a_run_folder(cli, tmp_path, check_metrics, waterbirds_prep, method):
    recipe = METHODS[method]
    out = tmp_path / method
    metrics = train_cli(cli, out, method)
    check_metrics(metrics, n_groups=4)
    assert metrics["method"] == method and metrics["needs_groups"] == recipe.needs_groups
    assert metrics["val_used_for_training"] is (method == "dfr")
    overrides = {k: v for k, v in (kv.split("=", 1) for kv in FAST[method])}
    assert set(metrics["hyperparameters"]) == set(recipe.defaults())
    for key, value in metrics["hyperparameters"].items():
        if key not in overrides:
            assert value == recipe.defaults()[key], key
    files = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.json", "head.safetensors", "report.txt", "report.html"} <= files
    assert ("prompts.json" in files) is (recipe.kind == "prompt")
    dim = waterbirds_prep.feats.dim
    expected = {"zeroshot_groups": 0, "linear_probe": dim + 1, "linear_probe_balanced": dim + 1,
                "group_linear": 2 * 2 * dim, "dfr": dim + 1,
                "coop_balanced": 16 * waterbirds_prep.backbone.token_width}
    assert metrics["trainable_params"] == expected[method]
    if method == "dfr":
        assert "val was used for training" in metrics["note"]
        assert metrics["selection_groups"].startswith("true val groups")


# --- dfr -------------------------------------------------------------------------------------------

def test_dfr_never_reads_the_training_split_labels(waterbirds_prep):
    ds = waterbirds_prep.dataset
    s = check_run(settings("dfr", tune_repeats=2, repeats=4), ds, waterbirds_prep.backbone)[1]
    result = run_method(waterbirds_prep, s, log=lambda _: None)
    tr = ds.split_indices("train")
    rng = np.random.default_rng(1)

    # 1. the training rows' labels permuted (counts kept): the whole metrics.json is the same
    perm = rng.permutation(tr)
    y, attrs = ds.y.copy(), ds.attrs.copy()
    y[tr], attrs[tr] = ds.y[perm], ds.attrs[perm]
    shuffled = run_method(Prepared(dataclasses.replace(ds, y=y, attrs=attrs), waterbirds_prep.backbone,
                                   waterbirds_prep.feats), s, log=lambda _: None)
    assert shuffled.metrics == result.metrics
    # 2. random classes and no bias labels at all on the training rows: the same classifier
    y[tr] = rng.integers(0, 2, len(tr))
    attrs[tr] = -1
    poisoned = run_method(Prepared(dataclasses.replace(ds, y=y, attrs=attrs), waterbirds_prep.backbone,
                                   waterbirds_prep.feats), s, log=lambda _: None)
    assert torch.equal(poisoned.head.weight, result.head.weight) and torch.equal(poisoned.head.bias, result.head.bias)
    for split in ("val", "test"):
        a, b = result.metrics["splits"][split], poisoned.metrics["splits"][split]
        assert {k: v for k, v in a.items() if k != "train_weighted_acc"} == b
    assert result.metrics["dfr"] == poisoned.metrics["dfr"]
    assert result.metrics["val_used_for_training"] is True and result.metrics["needs_groups"] == "val"


def test_dfr_trains_on_a_labelers_val_groups_where_val_has_none(waterbirds_prep):
    """DFR with inferred groups: val's bias labels hidden, the pseudo-labeler's val groups take their place."""
    hidden = make_settings({"dataset": "synth-waterbirds", "backbone": "groupcoop-tiny", "method": "dfr",
                            "hide_bias_labels": ["val"], "hyperparameters": {"tune_repeats": 1, "repeats": 3}})
    inferred = run_method(waterbirds_prep, check_run(hidden, waterbirds_prep.dataset, waterbirds_prep.backbone)[1],
                          log=lambda _: None).metrics
    true = run(waterbirds_prep, "dfr", tune_repeats=1, repeats=3).metrics
    assert inferred["groups_source"] == "pseudo" and true["groups_source"] == "gt"
    assert inferred["selection_groups"] == "pseudo val groups (half-splits of val)"
    assert inferred["report_groups"] == {"val": "pseudo groups", "test": "true groups"}
    assert inferred["dfr"]["selection"]["scores"] != true["dfr"]["selection"]["scores"]  # other groups, other fits
    assert inferred["splits"]["test"]["worst_group_acc"] > 0.5  # a group-robust classifier all the same


def test_dfr_subsamples_are_group_balanced(monkeypatch, waterbirds_prep):
    seen = []
    fit = linear.fit_logreg

    def spy(x, y, n_classes, C, l1, *args, **kw):
        seen.append((len(y), l1, C))
        return fit(x, y, n_classes, C, l1, *args, **kw)

    monkeypatch.setattr(linear, "fit_logreg", spy)
    result = run(waterbirds_prep, "dfr", c_values=[0.3, 1.0], tune_repeats=2, repeats=3)
    val_counts = np.bincount(waterbirds_prep.dataset.groups[waterbirds_prep.dataset.split_indices("val")])
    assert all(l1 for _, l1, _ in seen)
    assert len(seen) == 2 * 2 + 3  # tune_repeats x c_values, then repeats
    assert all(n % 4 == 0 for n, _, _ in seen)  # 4 groups, equally many of each
    assert [n for n, _, _ in seen[-3:]] == [4 * val_counts.min()] * 3  # the final fits use all of val
    assert all(n < 4 * val_counts.min() for n, _, _ in seen[:-3])  # tuning fits use half of it
    assert result.metrics["dfr"]["selection"]["C"] in (0.3, 1.0)
    assert {c for _, _, c in seen[-3:]} == {result.metrics["dfr"]["selection"]["C"]}


# --- linear probes and group_linear ------------------------------------------------------------------

def test_group_balanced_weights_are_inverse_group_frequency():
    groups = np.array([0] * 6 + [1] * 3 + [3] * 1)  # group 2 absent
    per_group = balanced_weights(groups)
    assert np.allclose(per_group, [10 / (3 * 6), 10 / (3 * 3), 0.0, 10 / 3])
    w = per_group[groups]
    assert np.allclose(w, [10 / (3 * 6)] * 6 + [10 / (3 * 3)] * 3 + [10 / 3])
    assert np.allclose(np.bincount(groups, weights=w)[[0, 1, 3]], 10 / 3)  # every present group weighs the same


def test_linear_probe_balanced_weights_groups_inversely(monkeypatch, waterbirds_prep):
    seen = {}
    fit = linear.fit_logreg

    def spy(x, y, n_classes, C, l1, seed, max_iter, sample_weight=None):
        seen["w"], seen["n"] = sample_weight, len(y)
        return fit(x, y, n_classes, C, l1, seed, max_iter, sample_weight=sample_weight)

    monkeypatch.setattr(linear, "fit_logreg", spy)
    result = run(waterbirds_prep, "linear_probe_balanced", c_values=[1.0])
    groups = waterbirds_prep.dataset.groups[waterbirds_prep.dataset.split_indices("train")]
    assert seen["n"] == sum(TRAIN_COUNTS)
    per_group = np.bincount(groups, weights=seen["w"])
    assert np.allclose(per_group, sum(TRAIN_COUNTS) / 4)  # each group carries a quarter of the loss
    assert np.allclose(seen["w"], sum(TRAIN_COUNTS) / (4 * np.array(TRAIN_COUNTS)[groups]))
    assert np.allclose(result.metrics["linear_probe"]["group_weights"], sum(TRAIN_COUNTS) / (4 * np.array(TRAIN_COUNTS)))
    run(waterbirds_prep, "linear_probe", c_values=[1.0])
    assert seen["w"] is None  # the ERM probe weighs every example alike


def test_logreg_head_matches_sklearn(waterbirds_prep):
    """The head folded from a standardised fit scores raw features like sklearn does."""
    from sklearn.linear_model import LogisticRegression

    rows = waterbirds_prep.dataset.split_indices("val")
    x, y = waterbirds_prep.feats.numpy(rows), waterbirds_prep.dataset.y[rows]
    scaler = linear.Scaler.fit(x, True)
    coef, intercept = linear.fit_logreg(scaler(x), y, 2, 1.0, False, 0, 1000)
    head = linear.head_from_logreg(coef, intercept, scaler, 2)
    probs = head.predict(torch.as_tensor(x)).probabilities
    reference = LogisticRegression(C=1.0, solver="newton-cholesky", max_iter=1000).fit(scaler(x), y)
    assert np.allclose(probs, reference.predict_proba(scaler(x)), atol=1e-4)


def test_group_linear_rows_are_c_x_g_x_d():
    rows = loop.LinearRows(2 * 2, 128, bias=False)
    assert rows.trainable_parameters() == 2 * 2 * 128 and rows.parameters == [rows.weight]
    with_bias = loop.LinearRows(2 * 3, 64, bias=True)
    assert with_bias.trainable_parameters() == 2 * 3 * 64 + 2 * 3
    head = with_bias.head(2, "max")
    assert head.weight.shape == (6, 64) and head.bias.shape == (6,) and head.scale == 1.0


# --- zeroshot_groups ---------------------------------------------------------------------------------

def test_zeroshot_groups_trains_nothing_and_takes_the_max(monkeypatch, waterbirds_prep):
    def no_training(*args, **kwargs):
        raise AssertionError("zeroshot_groups must not train")

    monkeypatch.setattr(loop.LoopRun, "start", no_training)
    result = run(waterbirds_prep, "zeroshot_groups")
    bb, ds = waterbirds_prep.backbone, waterbirds_prep.dataset
    assert result.metrics["trainable_params"] == 0 and "history" not in result.metrics and result.learner is None
    spec = ds.group_spec
    assert spec.prompt_texts()[3] == "round shape on water"
    expected = bb.text_features(spec.prompt_texts(), ["a photo of a {}.", "a {}."])
    assert torch.allclose(result.head.weight, torch.nn.functional.normalize(expected, dim=-1))
    assert result.head.aggregate == "max" and result.head.row_names == spec.names()
    feats = waterbirds_prep.feats.rows(ds.split_indices("test")[:300])
    logits = result.head.logits(feats).view(len(feats), 2, 2)
    assert np.array_equal(result.head.predict_classes(feats), logits.max(dim=2).values.argmax(dim=1).numpy())


# --- coop_groupdro -----------------------------------------------------------------------------------

def test_groupdro_update_moves_weight_to_the_worst_group():
    dro = GroupDRO(np.array([0, 1, 2, 2, 3]), 5, eta=0.5)  # group 4 absent from training
    assert torch.allclose(dro.q, torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0]))
    losses = torch.tensor([0.1, 2.0, 0.5, 0.3, 0.2, 0.1])
    groups = torch.tensor([0, 1, 2, 2, 3, 3])
    for _ in range(20):
        dro.loss(losses, groups)
    assert int(dro.q.argmax()) == 1 and float(dro.q[4]) == 0.0
    assert dro.q[1] > dro.q[2] > dro.q[0] and float(dro.q.sum()) == pytest.approx(1.0)
    # one step by hand: q <- q * exp(eta * loss_g), normalised
    dro = GroupDRO(np.array([0, 1]), 2, eta=1.0)
    loss = dro.loss(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))
    q = torch.tensor([np.e, np.e ** 3]) / (np.e + np.e ** 3)
    assert torch.allclose(dro.q, q.float()) and float(loss) == pytest.approx(float(q[0] + 3 * q[1]), rel=1e-5)


def test_coop_groupdro_weights_move_toward_the_worst_group(cli, tmp_path, check_metrics, waterbirds_prep):
    metrics = train_cli(cli, tmp_path / "dro", "coop_groupdro", sets=["epochs=1", "batch_size=256", "eta=0.1"])
    check_metrics(metrics, n_groups=4)
    block = metrics["groupdro"]
    names = waterbirds_prep.dataset.group_names()
    q = np.array([block["final_q"][n] for n in names])
    loss = np.array([block["cumulative_group_loss"][n] for n in names])
    assert q.sum() == pytest.approx(1.0) and len(metrics["history"][0]["groupdro_q"]) == 4
    # the worst group (highest training loss over the run) gained the most weight: q ~ exp(eta * summed loss)
    worst = int(loss.argmax())
    assert int(q.argmax()) == worst and q[worst] > 0.25 and q[int(loss.argmin())] < 0.25
    assert np.allclose(np.log(q) - 0.1 * loss, np.log(q[0]) - 0.1 * loss[0], atol=1e-3)


# --- jtt -----------------------------------------------------------------------------------------------

def test_jtt_upweights_exactly_the_first_runs_errors(cli, tmp_path, check_metrics, monkeypatch, waterbirds_prep):
    calls, orders = [], []
    real_result, real_order = loop.LoopRun.result, loop.epoch_order

    def spy_result(run):  # each stage of JTT is one run of the loop
        result = real_result(run)
        calls.append({"epochs": run.hp.epochs, "keep": run.keep, "repeats": run.repeats, "train": run.train,
                      "pred": result.model.head(run.n_classes, "max").predict_classes(run.train.feats)})
        return result

    def spy_order(sampler, groups, generator, repeats=None):
        order = real_order(sampler, groups, generator, repeats)
        orders.append((sampler, repeats, order))
        return order

    monkeypatch.setattr(loop.LoopRun, "result", spy_result)
    monkeypatch.setattr(loop, "epoch_order", spy_order)
    metrics = train_cli(cli, tmp_path / "jtt", "jtt")
    check_metrics(metrics, n_groups=4)
    first, second = calls
    assert first["keep"] == "last" and first["repeats"] is None and first["epochs"] == 1  # first_epochs
    errors = first["pred"] != first["train"].y
    assert 0 < errors.sum() < len(errors)
    assert np.array_equal(second["repeats"], np.where(errors, 5, 1))  # upweight=5 on exactly the errors
    assert metrics["jtt"]["errors"] == int(errors.sum()) and metrics["jtt"]["upweight"] == 5
    sampler, repeats, order = orders[-1]  # the second run's epoch: each error 5 times, the rest once
    assert sampler == "natural" and np.array_equal(np.bincount(order.numpy(), minlength=len(errors)),
                                                   np.where(errors, 5, 1))
    # JTT's errors concentrate in the groups ERM gets wrong: the minority groups' error rate is higher
    per_group = metrics["jtt"]["errors_per_group"]
    names = waterbirds_prep.dataset.group_names()
    rates = [per_group[n] / c for n, c in zip(names, TRAIN_COUNTS)]
    assert max(rates[1], rates[2]) > max(rates[0], rates[3])


def test_epoch_order_with_repeats_balances_within_groups():
    groups = np.array([0, 0, 0, 1])
    order = loop.epoch_order("group_balanced", groups, torch.Generator().manual_seed(0), np.array([3, 1, 1, 1]))
    assert len(order) == 6
    order = loop.epoch_order("natural", groups, torch.Generator().manual_seed(0), np.array([3, 1, 1, 2]))
    assert sorted(order.tolist()) == [0, 0, 0, 1, 2, 3, 3]
