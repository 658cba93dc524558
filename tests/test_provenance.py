"""Provenance and epoch logs: metrics.json and runs.csv say which versions, commit and host made a
run, when and how long; every run writes epochs.csv; `--log` sends the same rows to a tracker
when it is installed and is one line when it is not."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

import groupcoop
from groupcoop.runs import provenance
from groupcoop.runs.tracking import EPOCH_COLUMNS

TRAIN = ["train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "coop",
         "--set", "epochs=3", "--set", "batch_size=2048", "--set", "patience=10", "--quiet"]


def one_line(result) -> str:
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("groupcoop: error: "), result.err
    return lines[0]


def test_metrics_json_records_versions_host_and_times(tmp_path, cli, waterbirds_prep):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    assert cli(*TRAIN, "--out", tmp_path / "run").code == 0
    made = json.loads((tmp_path / "run" / "metrics.json").read_text())["provenance"]
    assert made["groupcoop_version"] == groupcoop.__version__
    assert torch.__version__.startswith(made["torch_version"])
    assert made["python_version"] == ".".join(map(str, sys.version_info[:3])) and made["host"]
    assert made["open_clip_version"]
    started = datetime.fromisoformat(made["started_at"])
    assert started.tzinfo is not None and before <= started <= datetime.now(timezone.utc)
    assert 0 < made["wall_s"] < 600
    here = Path(groupcoop.__file__).resolve().parents[2]
    if shutil.which("git") and (here / ".git").exists():  # this checkout: its commit is named
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", made["git_commit"])


def test_no_git_is_no_commit_and_no_failure(monkeypatch):
    provenance.git_commit.cache_clear()
    monkeypatch.setenv("PATH", "")
    try:
        assert provenance.git_commit() is None
    finally:
        provenance.git_commit.cache_clear()


def test_every_run_writes_its_epochs_as_csv(tmp_path, cli, waterbirds_prep):
    assert cli(*TRAIN, "--out", tmp_path / "run").code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    with open(tmp_path / "run" / "epochs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == EPOCH_COLUMNS and len(rows) == metrics["epochs_run"] == 3
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [r["selected"] for r in rows].count("1") == 1 and rows[metrics["best_epoch"] - 1]["selected"] == "1"
    for row, h in zip(rows, metrics["history"]):
        assert float(row["train_loss"]) == pytest.approx(h["loss"])
        assert float(row["val_worst_group_acc"]) == pytest.approx(h["val_worst_group_acc"])
    manifest = json.loads((tmp_path / "run" / ".groupcoop.json").read_text())
    assert "epochs.csv" in manifest["files"]


def test_a_method_without_epochs_writes_the_header_only(tmp_path, cli, waterbirds_prep):
    result = cli("train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "zeroshot",
                 "--out", tmp_path / "run", "--quiet")
    assert result.code == 0, result.err
    assert (tmp_path / "run" / "epochs.csv").read_text().strip() == ",".join(f'"{c}"' for c in EPOCH_COLUMNS)


@pytest.mark.parametrize("tracker,package", [("wandb", "wandb"), ("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_tracker_is_one_line_before_training(tracker, package, tmp_path, cli, monkeypatch):
    module = "torch.utils.tensorboard" if tracker == "tensorboard" else tracker
    monkeypatch.setitem(sys.modules, module, None)  # import fails, as when the package is not installed
    for command in ([*TRAIN, "--out", tmp_path / "run"],
                    ["sweep", "--datasets", "synth-waterbirds", "--methods", "zeroshot", "--out", tmp_path / "s"]):
        line = one_line(cli(*command, "--log", tracker))
        assert line.endswith(f"--log {tracker} needs `pip install {package}`")
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()


class FakeWriter:
    calls: list = []

    def __init__(self, log_dir):
        FakeWriter.calls.append(("open", log_dir))

    def add_scalar(self, tag, value, step):
        FakeWriter.calls.append((tag, value, step))

    def close(self):
        FakeWriter.calls.append(("close",))


def test_log_tensorboard_streams_the_epoch_rows(tmp_path, cli, waterbirds_prep, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeWriter.calls = []
    assert cli(*TRAIN, "--out", tmp_path / "run", "--log", "tensorboard").code == 0
    with open(tmp_path / "run" / "epochs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    opened = FakeWriter.calls[0]
    assert opened[0] == "open" and Path(opened[1]).name == "tensorboard"
    losses = [(value, step) for tag, *rest in FakeWriter.calls[1:] if tag == "train_loss" for value, step in [rest]]
    assert losses == [(pytest.approx(float(r["train_loss"])), int(r["epoch"])) for r in rows]
    assert any(c[0] == "test/worst_group_acc" for c in FakeWriter.calls) and FakeWriter.calls[-1] == ("close",)


def test_log_wandb_and_mlflow_get_the_same_rows(tmp_path, cli, waterbirds_prep, monkeypatch):
    logged = {"wandb": [], "mlflow": []}

    class WandbRun:
        summary = {}

        def log(self, row, step):
            logged["wandb"].append((step, row["train_loss"]))

        def finish(self):
            pass

    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kwargs: WandbRun()
    mlflow = types.ModuleType("mlflow")

    class Active:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    mlflow.start_run = lambda run_name: Active()
    mlflow.log_params = lambda params: None
    mlflow.log_metrics = lambda row, step=None: step is not None and logged["mlflow"].append((step, row["train_loss"]))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    assert cli(*TRAIN, "--out", tmp_path / "run", "--log", "wandb", "--log", "mlflow").code == 0
    with open(tmp_path / "run" / "epochs.csv", newline="") as fh:
        expected = [(int(r["epoch"]), pytest.approx(float(r["train_loss"]))) for r in csv.DictReader(fh)]
    assert logged["wandb"] == expected and logged["mlflow"] == expected


def test_runs_csv_names_each_run_folder_and_its_provenance(tmp_path, cli, waterbirds_prep):
    out = tmp_path / "sweep"
    result = cli("sweep", "--datasets", "synth-waterbirds", "--methods", "zeroshot", "--seeds", "0,1", "--out", out,
                 "--quiet")
    assert result.code == 0, result.err
    with open(out / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:
        metrics = json.loads((out / row["run_folder"] / "metrics.json").read_text())
        assert row["seed"] == str(metrics["seed"])
        for key in provenance.CSV_COLUMNS:
            if key in metrics["provenance"]:
                assert row[key] == str(metrics["provenance"][key]), key
        assert row["groupcoop_version"] == groupcoop.__version__ and row["host"] and row["started_at"]
