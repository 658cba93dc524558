"""The command line as users meet it: run folders, reproducibility, evaluation, and bad input
ending in one line on stderr with exit status 2 and nothing half-written left behind.

Most commands run in-process (`groupcoop.cli.main.main`); two run the installed console script.
Features for synth-waterbirds come from the session cache (see conftest.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from groupcoop.cli.main import build_parser, main
from groupcoop.methods import METHODS

TRAIN = ["train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "groupcoop",
         "--set", "epochs=2"]
CONSOLE_SCRIPT = Path(sys.executable).parent / "groupcoop"
WATERBIRDS_COUNTS = {
    "train": [3498, 184, 56, 1057],
    "val": [467, 466, 133, 133],
    "test": [2255, 2255, 642, 642],
}


def with_flags(argv: list, *changes: str) -> list:
    """argv with FLAG VALUE pairs replaced (or appended when absent; --set always appends)."""
    argv = list(argv)
    for flag, value in zip(changes[::2], changes[1::2]):
        if flag in argv and flag != "--set":
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit 2, exactly one stderr line `groupcoop: error: ...` naming the fragments, no traceback."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err + result.out
    lines = result.err.strip("\n").split("\n")
    assert len(lines) == 1, result.err
    assert lines[0].startswith("groupcoop: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, waterbirds_prep) -> Path:
    """`groupcoop train ... --method groupcoop --set epochs=2` once for the module."""
    out = tmp_path_factory.mktemp("train") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory) -> Path:
    """A CSV dataset with no attribute columns: 12 tiny PNGs, classes cat/dog, every split."""
    root = tmp_path_factory.mktemp("csv-data")
    (root / "img").mkdir()
    rows = ["path,label,split"]
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 100, 200 - 10 * i)).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{('cat', 'dog')[i % 2]},{('train', 'val', 'test')[(i // 2) % 3]}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return root


def csv_args(root: Path) -> list[str]:
    return ["--dataset", "csv", "--root", str(root), "--option", "csv_path=meta.csv", "--option", "path_col=path",
            "--option", "label_col=label", "--workers", "0"]


# --- train: the run folder ----------------------------------------------------------------------

def test_train_writes_a_complete_run_folder(trained_run, check_metrics, tiny_backbone):
    names = sorted(p.name for p in trained_run.iterdir())
    assert names == [".groupcoop.json", "config.yaml", "epochs.csv", "head.safetensors", "metrics.json",
                     "prompts.json", "prompts.safetensors", "report.html", "report.txt"]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    check_metrics(metrics, n_groups=4)
    assert metrics["method"] == "groupcoop"
    assert metrics["dataset"] == "synth-waterbirds"
    assert metrics["backbone"] == tiny_backbone.identity and metrics["backbone"].startswith("groupcoop-tiny")
    assert metrics["groups_source"] == "gt"
    width = tiny_backbone.token_width
    from groupcoop.methods import GroupCoOpParams

    assert metrics["trainable_params"] == 4 * GroupCoOpParams().n_ctx * width  # 2 classes x 2 groups x M vectors
    assert metrics["total_params"] == tiny_backbone.parameter_count() + metrics["trainable_params"]
    for split, counts in (("val", WATERBIRDS_COUNTS["val"]), ("test", WATERBIRDS_COUNTS["test"])):
        assert [g["n"] for g in metrics["splits"][split]["groups"]] == counts
    assert "train_weighted_acc" in metrics["splits"]["test"]  # Waterbirds' extra

    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["dataset"] == "synth-waterbirds" and config["method"] == "groupcoop"
    assert config["backbone"] == "groupcoop-tiny" and config["seed"] == 0
    assert config["hyperparameters"]["epochs"] == 2  # the resolved configuration: every default written out
    assert config["hyperparameters"] == {**METHODS["groupcoop"].defaults(), "epochs": 2}
    assert config["groups"]["source"] == "gt"
    prompts = json.loads((trained_run / "prompts.json").read_text())
    assert prompts["classes"] == ["angular shape", "round shape"] and len(prompts["names"]) == 4
    report = (trained_run / "report.txt").read_text()
    assert "worst-group" in report and "round shape, water" in report


def without_provenance(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics.pop("provenance")) >= {"groupcoop_version", "torch_version", "host", "started_at", "wall_s"}
    return metrics


def test_same_seed_same_metrics_json(trained_run, tmp_path):
    again = tmp_path / "again"
    assert main([*TRAIN, "--out", str(again), "--quiet"]) == 0
    assert without_provenance(again) == without_provenance(trained_run)  # only versions, host and times differ
    assert (again / "prompts.safetensors").read_bytes() == (trained_run / "prompts.safetensors").read_bytes()


def test_rerunning_the_identical_command_into_its_folder_is_allowed(trained_run, tmp_path, cli):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    result = cli(*TRAIN, "--out", out, "--quiet")
    assert result.code == 0, result.err


@pytest.mark.parametrize("change", [["--seed", "1"], ["--method", "coop"]], ids=["seed", "method"])
def test_folder_holding_a_different_run_is_refused(trained_run, tmp_path, cli, change):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = cli(*with_flags(TRAIN, *change), "--out", out)
    assert_one_line_error(result, str(out), "different groupcoop run", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp folder


def test_overwrite_replaces_a_different_run(trained_run, tmp_path, cli):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    result = cli("train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "zeroshot",
                 "--out", out, "--overwrite", "--quiet")
    assert result.code == 0, result.err
    assert json.loads((out / "metrics.json").read_text())["method"] == "zeroshot"
    # the old run's prompts do not linger next to the new run's metrics
    assert sorted(p.name for p in out.iterdir()) == [".groupcoop.json", "config.yaml", "epochs.csv",
                                                     "head.safetensors", "metrics.json", "report.html", "report.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


# --- evaluate --------------------------------------------------------------------------------

def test_evaluate_reproduces_the_run_metrics(trained_run, cli):
    result = cli("evaluate", "--prompts", trained_run, "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny",
                 "--json", "--quiet")
    assert result.code == 0, result.err
    got = json.loads(result.out)
    test = json.loads((trained_run / "metrics.json").read_text())["splits"]["test"]
    for key in ("avg_acc", "worst_group_acc", "unbiased_acc", "groups"):
        assert got[key] == test[key], key


def test_evaluate_uses_the_trained_aggregate(tmp_path, cli, waterbirds_prep):
    out = tmp_path / "run"
    argv = with_flags(TRAIN, "--set", "aggregate=mean", "--set", "epochs=1", "--set", "batch_size=1024")  # 5 steps
    trained = cli(*argv, "--out", out, "--quiet")
    assert trained.code == 0, trained.err
    result = cli("evaluate", "--prompts", out, "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny",
                 "--json", "--quiet")
    assert result.code == 0, result.err
    got = json.loads(result.out)
    test = json.loads((out / "metrics.json").read_text())["splits"]["test"]
    assert (got["avg_acc"], got["worst_group_acc"]) == (test["avg_acc"], test["worst_group_acc"])


def test_evaluate_with_another_backbone_names_the_mismatch(trained_run, csv_root, cli, tiny_backbone):
    # On the small CSV data so the ViT-B-32 features are cheap; the backbone is checked before classes.
    result = cli("evaluate", "--prompts", trained_run, *csv_args(csv_root), "--backbone", "ViT-B-32",
                 "--pretrained", "random", "--quiet")
    assert_one_line_error(result, "backbone", tiny_backbone.identity, "ViT-B-32@random")


def test_evaluate_on_other_classes_names_the_mismatch(trained_run, csv_root, cli):
    result = cli("evaluate", "--prompts", trained_run, *csv_args(csv_root), "--backbone", "groupcoop-tiny", "--quiet")
    assert_one_line_error(result, "classes", "angular shape", "cat")


def test_evaluate_checks_the_prompts_before_extracting_features(trained_run, cli, monkeypatch):
    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted before the prompts were checked")

    monkeypatch.setattr("groupcoop.runs.pipeline.extract_features", no_extraction)
    result = cli("evaluate", "--prompts", trained_run, "--dataset", "synth-waterbirds", "--backbone",
                 "groupcoop-tiny", "--pretrained", "random", "--quiet")
    assert_one_line_error(result, "backbone")


# --- bad input -------------------------------------------------------------------------------

BAD_TRAIN = {
    "unknown-method": (["--method", "coopp"], ["coopp", "zeroshot, coop, groupcoop"]),
    "unknown-backbone": (["--backbone", "ViT-B-61"], ["ViT-B-61", "ViT-B-16"]),
    "unknown-pretrained": (["--backbone", "ViT-B-32", "--pretrained", "opneai"], ["opneai", "openai"]),
    "missing-checkpoint": (["--backbone", "ViT-B-32", "--pretrained", "{tmp}/missing.safetensors"],
                           ["checkpoint file not found", "missing.safetensors"]),
    "unknown-set": (["--set", "epoch=3"], ["epoch", "epochs"]),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_bad_train_input_is_one_line_and_leaves_nothing(case, tmp_path, cli):
    changes, fragments = BAD_TRAIN[case]
    argv = with_flags(TRAIN, *(c.replace("{tmp}", str(tmp_path)) for c in changes))
    out = tmp_path / "run"
    result = cli(*argv, "--out", out, "--quiet")
    assert_one_line_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset(tmp_path, cli):
    result = cli("train", "--backbone", "groupcoop-tiny", "--method", "groupcoop", "--out", tmp_path / "run")
    assert_one_line_error(result, "--dataset")
    assert list(tmp_path.iterdir()) == []


def test_missing_required_flag_is_one_line_too(cli):
    result = cli("train", "--dataset", "synth-waterbirds")
    assert_one_line_error(result, "--out")


def test_gt_groups_on_data_without_bias_labels(csv_root, tmp_path, cli):
    result = cli("train", *csv_args(csv_root), "--backbone", "groupcoop-tiny", "--method", "groupcoop",
                 "--groups", "gt", "--set", "epochs=1", "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(result, "--groups gt", "pseudo")
    assert list(tmp_path.iterdir()) == []


# --- datasets --------------------------------------------------------------------------------

def test_datasets_lists_the_loaders(cli):
    result = cli("datasets")
    assert result.code == 0, result.err
    listed = {line.split()[0] for line in result.out.splitlines() if line.strip()}
    assert {"synth-waterbirds", "synth-multiceleba", "synth-threebias", "waterbirds", "celeba", "multiceleba",
            "csv"} <= listed


def test_datasets_check_synth_waterbirds_json(cli):
    result = cli("datasets", "check", "synth-waterbirds", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["dataset"] == "synth-waterbirds"
    assert {split: [g["n"] for g in body["groups"]] for split, body in report["splits"].items()} == WATERBIRDS_COUNTS
    assert [g["group"] for g in report["splits"]["train"]["groups"]] == [0, 1, 2, 3]


# --- help --------------------------------------------------------------------------------------

def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", list(_subcommands()))
def test_help_mentions_every_flag(command, cli):
    result = cli(command, "--help")
    assert result.code == 0, result.err
    assert result.err == ""
    for action in _subcommands()[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            for flag in action.option_strings:
                assert flag in result.out, (command, flag)
            assert action.help, (command, action.option_strings)  # every flag says what it does
        else:
            shown = [action.dest, action.metavar, "{" + ",".join(action.choices or []) + "}"]
            assert any(s and s in result.out for s in shown), (command, action.dest)
            assert action.help, (command, action.dest)


def test_top_level_help_lists_every_command(cli):
    result = cli("--help")
    assert result.code == 0
    for command in _subcommands():
        assert command in result.out


def test_settings_flags_follow_the_schemas():
    """train has a flag for every RunSettings field set by one value and every GroupingOptions knob
    (`groups` too), under the field's own name: run_settings_from_args reads them by those names."""
    from groupcoop.cli.args import grouping_flags
    from groupcoop.grouping.options import GroupingOptions
    from groupcoop.runs.settings import RunSettings

    commands = _subcommands()
    knobs = set(GroupingOptions.model_fields) - {"source", "file"}  # file comes with --groups file:PATH
    assert set(grouping_flags()) == knobs
    train = {a.dest for a in commands["train"]._actions}
    assert set(RunSettings.model_fields) - {"dataset_options", "hyperparameters"} <= train
    assert knobs <= {a.dest for a in commands["groups"]._actions}
    assert knobs <= train


# --- the installed console script -------------------------------------------------------------

def test_console_script_bad_input(tmp_path):
    proc = subprocess.run([str(CONSOLE_SCRIPT), *TRAIN, "--method", "coopp", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("groupcoop: error: unknown method 'coopp'")
    assert list(tmp_path.iterdir()) == []


def test_console_script_datasets_check():
    proc = subprocess.run([str(CONSOLE_SCRIPT), "datasets", "check", "synth-waterbirds"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "3498" in proc.stdout and "synth-waterbirds" in proc.stdout
