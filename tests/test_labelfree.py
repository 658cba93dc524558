"""The label-free regime (issue 16): the selection rule, hidden bias labels (CLI, sweep grids,
`groupcoop.fit`), `bias_prompts: auto` in runs, and bad values for them."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import groupcoop
import replicas
from groupcoop.grouping import discovery
from groupcoop.data.base import GroupDataset
from groupcoop.errors import UserError
from groupcoop.grouping.labelfree import AUTO_FALLBACK_LABELER, SELECTION_FALLBACK

AUTO = {"source": "pseudo", "bias_prompts": "auto"}


# --- the selection rule on a constructed history ---------------------------------------------------------

class _NoImages:
    def __len__(self):
        return 52

    def identity(self):
        return "none"


def _one_hot_task():
    """8 training rows, 40 val rows (10 per group of class x attribute), 4 test rows; feature i = e_i,
    so a linear row's weight on e_i decides row i's prediction alone."""
    from groupcoop.features.store import Features
    from groupcoop.runs.pipeline import Prepared

    split = np.array([0] * 8 + [1] * 40 + [2] * 4)
    groups = np.concatenate([np.repeat(np.arange(4), 2), np.repeat(np.arange(4), 10), np.arange(4)])
    ds = GroupDataset("constructed", _NoImages(), y=groups // 2, attrs=(groups % 2)[:, None], split=split,
                      class_names=["a", "b"], attribute_names=["bias"], attribute_values=[["x", "z"]])
    return Prepared(ds, None, Features.from_tensor(torch.eye(52)))


# correct val predictions per group (of 10) in three epochs: A is best by worst group, B by worst
# class, C by average accuracy
EPOCHS = {"A": (6, 6, 10, 10), "B": (10, 4, 9, 9), "C": (10, 3, 10, 10)}


def _weights(correct_per_group) -> torch.Tensor:
    w = torch.zeros(2, 52)
    for g, correct in enumerate(correct_per_group):
        for k in range(10):
            row, y = 8 + 10 * g + k, g // 2
            w[y if k < correct else 1 - y, row] = 1.0
    return w


@pytest.mark.parametrize("rule, kept, key", [("auto", "A", "val_worst_group_acc"),
                                             ("worst_class", "B", "val_worst_class_acc"),
                                             ("average", "C", None)])
def test_the_selection_rule_keeps_the_epoch_it_scores_best(rule, kept, key):
    from groupcoop.grouping.plan import plan_groups
    from groupcoop.grouping.options import GroupingOptions
    from groupcoop.methods import FitTask, LoopParams
    from groupcoop.methods.loop import LinearRows, Objective, loop_run

    prep = _one_hot_task()
    plan = plan_groups(prep, GroupingOptions(source="gt"), seed=0, selection=rule)
    run = loop_run(FitTask(prep.dataset, None, prep.feats, plan, 0, lambda s: None), LinearRows(2, 52, bias=False),
                   LoopParams(epochs=3, patience=10), Objective("class"))
    run.start()
    for name in EPOCHS:
        while run.next_batch():
            run.loss(run.rows.encode())  # no step: the epoch's classifier is the constructed one
        run.rows.weight.data = _weights(EPOCHS[name])
        run.end_epoch()
    fitted = run.fitted()
    assert fitted.extra["best_epoch"] == list(EPOCHS).index(kept) + 1
    assert torch.equal(fitted.head.weight, _weights(EPOCHS[kept]))
    history = fitted.extra["history"]
    assert all((key in h) == (key is not None) for h in history)
    if key == "val_worst_class_acc":
        assert [round(h[key], 2) for h in history] == [0.6, 0.7, 0.65]


# --- hidden bias labels ------------------------------------------------------------------------------

def _poisoned(ds: GroupDataset, seed: int) -> GroupDataset:
    """The dataset with random bias labels on train and val (test keeps its own)."""
    attrs = ds.attrs.copy()
    rows = np.flatnonzero(ds.split != 2)
    attrs[rows] = np.random.default_rng(seed).integers(0, 2, size=(len(rows), attrs.shape[1]))
    return dataclasses.replace(ds, attrs=attrs)


def test_hidden_bias_labels_are_never_read(waterbirds_prep):
    """A labeler (discovery, pseudo-groups) and the selection rule that read hidden labels would
    see different labels in these runs: the runs must come out the same."""
    def run(ds):
        return groupcoop.fit(ds, method="group_linear", groups=AUTO, selection="labeler",
                             hide_bias_labels=["train", "val"], config={"hyperparameters": {"epochs": 3}}).metrics

    truth = run(waterbirds_prep.dataset)
    assert run(_poisoned(waterbirds_prep.dataset, 1)) == truth == run(_poisoned(waterbirds_prep.dataset, 2))
    assert truth["hidden_bias_labels"] == ["train", "val"] and "group_quality" not in truth
    assert truth["report_groups"] == {"val": "pseudo groups", "test": "true groups"}
    assert truth["selection"] == "labeler" and truth["selection_groups"] == "pseudo val groups"
    assert "background" in truth["discovery"]["used"]
    assert [g["name"] for g in truth["splits"]["test"]["groups"]] == waterbirds_prep.dataset.group_names()


def test_hide_bias_labels_from_the_command_line(cli, tmp_path, waterbirds_prep):
    out = tmp_path / "run"
    result = cli("train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method",
                 "zeroshot_groups", "--hide-bias-labels", "val,train", "--out", out, "--quiet", "--workers", "0")
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hidden_bias_labels"] == ["train", "val"] and metrics["groups_source"] == "pseudo"
    assert metrics["report_groups"] == {"val": "pseudo groups", "test": "true groups"}
    assert metrics["selection"] == "auto"
    assert metrics["selection_groups"] == {"labeler": "pseudo val groups",
                                           "worst_class": "val classes (worst-class accuracy)"}[SELECTION_FALLBACK]
    assert yaml.safe_load((out / "config.yaml").read_text())["hide_bias_labels"] == ["train", "val"]
    assert "bias labels hidden on: train, val" in (out / "report.txt").read_text()
    gt = cli("train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "groupcoop",
             "--groups", "gt", "--hide-bias-labels", "train", "--out", tmp_path / "gt")
    assert gt.code == 2 and gt.err.count("\n") == 1 and "hidden by hide_bias_labels" in gt.err


def test_hide_bias_labels_and_selection_in_a_sweep_grid(cli, tmp_path, waterbirds_prep):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "hidden", "datasets": ["synth-waterbirds"], "seeds": [0], "hide_bias_labels": ["train", "val"],
        "selection": "worst_class",
        "methods": ["zeroshot", {"method": "zeroshot", "label": "zs-labelled", "hide_bias_labels": [], "selection": "auto"}],
    }))
    result = cli("sweep", grid, "--out", tmp_path / "sweep", "--quiet", "--workers", "0")
    assert result.code == 0, result.err
    runs = tmp_path / "sweep" / "runs" / "synth-waterbirds" / "groupcoop-tiny"
    hidden = json.loads((runs / "zeroshot" / "-" / "seed-0" / "metrics.json").read_text())
    labelled = json.loads((runs / "zs-labelled" / "-" / "seed-0" / "metrics.json").read_text())
    assert hidden["hidden_bias_labels"] == ["train", "val"] and hidden["selection"] == "worst_class"
    assert hidden["report_groups"]["val"] == "pseudo groups"
    assert "hidden_bias_labels" not in labelled and labelled["selection_groups"] == "true val groups"
    assert labelled["report_groups"] == {"val": "true groups", "test": "true groups"}  # the shared features kept them
    test = dict(labelled["splits"]["test"])
    assert test.pop("train_weighted_acc") and "train_weighted_acc" not in hidden["splits"]["test"]  # needs train's labels
    assert hidden["splits"]["test"] == test  # zero-shot trains nothing: the same test numbers


# --- bias_prompts: auto on a dataset with no bias labels at all ----------------------------------------------

def _no_attribute_csv(tmp_path):
    root = replicas.csv_replica(tmp_path)
    frame = pd.read_csv(root / "labels.csv").drop(columns=["background"])
    frame.to_csv(root / "plain.csv", index=False)
    return ["--dataset", "csv", "--root", root, "--option", "csv_path=plain.csv", "--option", "path_col=image",
            "--option", "label_col=animal", "--option", "split_col=fold"]


def test_auto_bias_prompts_with_worst_class_selection_on_data_without_bias_labels(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("train", *_no_attribute_csv(tmp_path), "--backbone", "groupcoop-tiny", "--method", "groupcoop",
                 "--groups", "pseudo", "--bias-prompts", "auto", "--selection", "worst_class", "--set", "epochs=2",
                 "--out", out, "--quiet", "--workers", "0")
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"] == "worst_class"
    assert metrics["selection_groups"] == "val classes (worst-class accuracy)"
    assert all("val_worst_class_acc" in h and "val_worst_group_acc" not in h for h in metrics["history"])
    found = metrics["discovery"]
    assert found["vocabulary"] == "clip (shipped)" and found["score"] == discovery.DISCOVERY_SCORE
    assert metrics["groups_source"] == ("pseudo" if found["used"] else AUTO_FALLBACK_LABELER)
    html = (out / "report.html").read_text()
    assert "Bias discovery" in html and "worst-class" in html


def test_nothing_discovered_falls_back_to_a_labeler_without_phrases_and_says_so(waterbirds_prep, monkeypatch):
    monkeypatch.setitem(discovery.DISCOVERY_THRESHOLDS, discovery.DISCOVERY_SCORE, 1.0)  # nothing scores above 1
    run = groupcoop.fit(waterbirds_prep.dataset, method="linear_probe_balanced", groups=AUTO,
                        hide_bias_labels=["train"], config={"hyperparameters": {"c_values": [1.0]}})
    metrics = run.metrics
    assert metrics["groups_source"] == AUTO_FALLBACK_LABELER
    assert metrics["discovery"]["used"] == [] and AUTO_FALLBACK_LABELER in metrics["discovery"]["fallback"]
    assert metrics["selection_groups"] == "true val groups"  # val keeps its labels: auto selects on them
    from groupcoop.reports.run import run_report_html
    from groupcoop.runs.folder import run_report

    assert "nothing kept" in run_report(metrics)
    assert "Nothing was kept" in run_report_html(metrics)


# --- bad values -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, expected", [
    (["--selection", "bogus"], "--selection"),
    (["--hide-bias-labels", "test"], "test split always keeps its bias labels"),
    (["--hide-bias-labels", "trian"], "hide_bias_labels"),
    (["--method", "dfr", "--selection", "worst_class"], "does not apply"),
    (["--method", "dfr", "--bias-prompts", "auto"], "does not apply"),
    (["--groups", "gt", "--hide-bias-labels", "val", "--selection", "labeler"], "cannot label"),
    (["--groups", "kmeans", "--bias-prompts", "auto"], "--bias-prompts auto"),
])
def test_bad_label_free_settings_are_one_line_and_exit_2(cli, tmp_path, flags, expected):
    method = [] if "--method" in flags else ["--method", "groupcoop"]
    result = cli("train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", *method, *flags,
                 "--out", tmp_path / "run")
    assert result.code == 2 and result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    assert expected in result.err
    assert not (tmp_path / "run").exists()


def test_bad_label_free_values_in_a_config_a_grid_and_the_api(cli, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("dataset: synth-waterbirds\nbackbone: groupcoop-tiny\nmethod: coop\nselection: best\n")
    result = cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.code == 2 and result.err.count("\n") == 1 and "selection='best'" in result.err
    grid = tmp_path / "grid.yaml"
    grid.write_text("datasets: [synth-waterbirds]\nmethods: [{method: coop, hide_bias_labels: [test]}]\n")
    result = cli("sweep", grid, "--dry-run")
    assert result.code == 2 and result.err.count("\n") == 1 and "hide_bias_labels" in result.err
    with pytest.raises(UserError, match="selection"):
        groupcoop.fit("synth-waterbirds", selection="worst_group")
    with pytest.raises(UserError, match="hide_bias_labels"):
        groupcoop.fit("synth-waterbirds", hide_bias_labels="everything")
