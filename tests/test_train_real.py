"""`groupcoop train` end to end on miniature replicas of every real dataset layout, with groupcoop-tiny."""

import json

import pytest

import replicas
from groupcoop.cli.main import main
from groupcoop.data import multiceleba
from groupcoop.methods import GroupCoOpParams


def _train(capsys, tmp_path, dataset, root, *extra, method="groupcoop"):
    out = tmp_path / f"run-{dataset}"
    code = main(["train", "--dataset", dataset, "--root", str(root), "--backbone", "groupcoop-tiny",
                 "--method", method, "--out", str(out), "--set", "epochs=2", "--quiet", "--workers", "0",
                 "--cache-dir", str(tmp_path / "cache"), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads((out / "metrics.json").read_text())


def _test_counts(metrics):
    return [g["n"] for g in metrics["splits"]["test"]["groups"]]


def test_waterbirds_group_dro_and_wilds(tmp_path, capsys):
    for wilds in (False, True):
        root = replicas.waterbirds_replica(tmp_path / str(wilds), wilds=wilds)
        metrics = _train(capsys, tmp_path / str(wilds), "waterbirds", root)
        assert _test_counts(metrics) == replicas.WATERBIRDS_COUNTS["test"]
        counts = replicas.WATERBIRDS_COUNTS["train"]
        accs = [g["acc"] for g in metrics["splits"]["test"]["groups"]]
        expected = sum(a * n for a, n in zip(accs, counts)) / sum(counts)
        assert metrics["splits"]["test"]["train_weighted_acc"] == pytest.approx(expected)
        assert metrics["groups_source"] == "gt" and metrics["trainable_params"] == 4 * GroupCoOpParams().n_ctx * 128


@pytest.mark.parametrize("form", ["official", "kaggle"])
def test_celeba_both_forms(tmp_path, capsys, form):
    root = replicas.celeba_replica(tmp_path, replicas.celeba_rows(), form=form)
    metrics = _train(capsys, tmp_path, "celeba", root, "--option", "target=Blond_Hair", "--option", "biases=Male")
    assert _test_counts(metrics) == replicas.CELEBA_COUNTS["test"]
    assert metrics["splits"]["test"]["groups"][3]["name"].endswith("male")


def test_multiceleba_metrics(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(multiceleba, "TRAIN_CELL_SIZES", replicas.MULTICELEBA_SMALL_N)
    root = replicas.celeba_replica(tmp_path, replicas.multiceleba_rows())
    metrics = _train(capsys, tmp_path, "multiceleba", root)
    test = metrics["splits"]["test"]
    assert {"WORST", "UNBIASED", "InDist", "GG", "GC", "CG", "CC"} <= set(test)
    accs = [g["acc"] for g in test["groups"]]
    assert test["WORST"] == min(accs) and test["CC"] == pytest.approx((accs[1] + accs[6]) / 2)


def test_subpopbench_metashift(tmp_path, capsys):
    metrics = _train(capsys, tmp_path, "metashift", replicas.metashift_replica(tmp_path), method="coop")
    assert _test_counts(metrics) == replicas.METASHIFT_COUNTS["test"]


def test_custom_csv_with_pseudo_groups(tmp_path, capsys):
    root = replicas.csv_replica(tmp_path)
    metrics = _train(capsys, tmp_path, "csv", root, "--option", "csv_path=labels.csv", "--option", "path_col=image",
                     "--option", "label_col=animal", "--option", "attr_cols=[background]", "--option", "split_col=fold",
                     "--groups", "pseudo")
    assert metrics["groups_source"] == "pseudo" and "group_quality" in metrics
    assert metrics["selection_groups"] == "true val groups"


def test_missing_folder_is_one_line(tmp_path, capsys):
    code = main(["train", "--dataset", "waterbirds", "--root", str(tmp_path / "nowhere"), "--backbone",
                 "groupcoop-tiny", "--method", "groupcoop", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    assert not (tmp_path / "out").exists()
