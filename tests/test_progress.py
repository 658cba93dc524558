"""Progress you can see: one line per phase (load, extract, discover, label, train, evaluate) on stderr,
what discovery kept before the first epoch, a line before a download and an immediate refusal offline,
--threads, and fit(progress=True) against a quiet fit()."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import groupcoop
import replicas

PHASES = ("load:", "extract:", "discover:", "label:", "train:", "evaluate:")


@pytest.fixture(scope="module")
def plain_csv(tmp_path_factory) -> Path:
    """16 tiny images of cats and dogs in a CSV with no bias column (the label-free case), and a
    one-attribute vocabulary, so that discovery scores two phrases, not the shipped hundreds."""
    root = replicas.csv_replica(tmp_path_factory.mktemp("plain"))
    pd.read_csv(root / "labels.csv").drop(columns=["background"]).to_csv(root / "plain.csv", index=False)
    (root / "vocabulary.yaml").write_text('attributes:\n  place: ["{} indoors", "{} outdoors"]\n')
    return root


def csv_flags(root: Path) -> list:
    return ["--dataset", "csv", "--root", root, "--option", "csv_path=plain.csv", "--option", "path_col=image",
            "--option", "label_col=animal", "--option", "split_col=fold"]


FAST = ["--backbone", "groupcoop-tiny", "--workers", "0", "--set", "last_layer=none"]


def progress_lines(err: str) -> list[str]:
    """stderr's lines without the extraction bar's redraws."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "img/s" not in line
            and not line.startswith("features ")]


def test_a_label_free_run_says_each_phase_and_what_discovery_kept_before_training(cli, tmp_path, plain_csv):
    auto = ["--bias-prompts", "auto", "--vocabulary", plain_csv / "vocabulary.yaml"]
    result = cli("train", *csv_flags(plain_csv), *FAST, "--method", "groupcoop", *auto, "--set", "epochs=2",
                 "--out", tmp_path / "run")
    assert result.code == 0, result.err
    lines = progress_lines(result.err)
    phases = [line.split()[0] for line in lines if line.startswith(PHASES)]
    assert phases == list(PHASES), lines
    at = {phase: next(i for i, line in enumerate(lines) if line.startswith(phase)) for phase in PHASES}
    first_epoch = next(i for i, line in enumerate(lines) if line.strip().startswith("epoch"))
    assert at["discover:"] < at["train:"] < first_epoch < at["evaluate:"]
    assert "16 images (train 7, val 4, test 5), 2 classes, no bias labels" in lines[at["load:"]]
    assert lines[at["discover:"]].startswith("discover: kept nothing;") and "groups by kmeans" in lines[at["discover:"]]
    assert "4 (2 classes x cluster 0/cluster 1)" in lines[at["label:"]]
    assert "up to 2 epochs" in lines[at["train:"]] and "ETA" in lines[first_epoch]
    assert not any(line.startswith(PHASES) for line in result.out.splitlines())  # stdout keeps the report alone
    quiet = cli("train", *csv_flags(plain_csv), *FAST, "--method", "groupcoop", "--groups", "kmeans", "--set",
                "epochs=1", "--quiet", "--out", tmp_path / "quiet")
    assert quiet.code == 0 and quiet.err == "", quiet.err  # no phase, epoch or bar


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path, tiny_backbone):
    """No model in the Hugging Face cache, no download setting in the environment; open_clip imported
    already (tiny_backbone), so that a timing measures groupcoop's refusal, not the import."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("backbone", [["--backbone", "ViT-B-16", "--pretrained", "openai"],
                                      ["--backbone", "transformers:openai/clip-vit-base-patch16"]])
@pytest.mark.parametrize("how", ["--offline", "HF_HUB_OFFLINE"])
def test_offline_a_backbone_not_on_this_machine_fails_at_once(cli, monkeypatch, empty_hub_cache, plain_csv,
                                                               backbone, how):
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flags = ["--offline"] if how == "--offline" else []
    start = time.perf_counter()
    result = cli("extract", *csv_flags(plain_csv), *backbone, *flags)
    seconds = time.perf_counter() - start
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "must be downloaded" in result.err and "downloads are off" in result.err
    assert seconds < 3, f"{seconds:.1f} s"
    assert os.environ.get("HF_HUB_OFFLINE") == ("1" if how == "HF_HUB_OFFLINE" else None)  # --offline is undone


def test_a_line_says_which_weights_are_fetched_before_the_download(cli, monkeypatch, empty_hub_cache, plain_csv):
    import open_clip

    def unreachable(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': cannot find the requested files")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", unreachable)
    result = cli("extract", *csv_flags(plain_csv), "--backbone", "ViT-B-32", "--pretrained", "openai")
    lines = result.err.splitlines()
    assert result.code == 2 and lines[0] == "fetching ViT-B-32 openai weights (not in the local cache)", lines
    assert lines[1].startswith("groupcoop: error: could not fetch the weights of ViT-B-32 openai")


def test_threads_limits_torch_and_blas_while_the_command_runs(monkeypatch):
    from threadpoolctl import threadpool_info

    cli_main = importlib.import_module("groupcoop.cli.main")

    seen = {}

    def spy(args):
        seen.update(torch=torch.get_num_threads(), omp=os.environ.get("OMP_NUM_THREADS"),
                    pools=[pool["num_threads"] for pool in threadpool_info()])

    monkeypatch.setattr(cli_main, "COMMANDS", tuple(c._replace(run=spy) for c in cli_main.COMMANDS))
    before = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    for command in (["train", "--out", "x"], ["sweep"], ["extract", "--dataset", "d", "--backbone", "b"],
                    ["predict", "run", "--out", "x.csv"], ["discover", "--dataset", "d", "--backbone", "b"]):
        seen.clear()
        assert cli_main.main([*command, "--threads", "1"]) == 0
        assert seen["torch"] == 1 and seen["omp"] == "1" and set(seen["pools"]) <= {1}, (command, seen)
        assert (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")) == before  # restored after


def test_fit_prints_its_phases_only_when_asked(capfd, plain_csv):
    options = {"csv_path": "plain.csv", "path_col": "image", "label_col": "animal", "split_col": "fold"}
    groups = {"source": "pseudo", "bias_prompts": "auto", "vocabulary": str(plain_csv / "vocabulary.yaml")}
    config = {"dataset_options": options, "hyperparameters": {"epochs": 1, "last_layer": "none"}}
    capfd.readouterr()
    groupcoop.fit("csv", root=str(plain_csv), groups=groups, config=config, workers=0)
    assert capfd.readouterr() == ("", "")  # not a line, not a bar, whether the features were cached or not
    groupcoop.fit("csv", root=str(plain_csv), groups=groups, config=config, workers=0, progress=True)
    out, err = capfd.readouterr()
    phases = [line.split()[0] for line in progress_lines(err) if line.startswith(PHASES)]
    assert out == "" and phases == list(PHASES), err
    assert "  epoch   1/1" in err
