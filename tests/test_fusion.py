"""Fused training (fusion.py): runs of one dataset and backbone that share one text-encoder call per
step give what each gives alone, for every learned-prompt method; the sweep and the Python API
use it by default and without it on request."""

from __future__ import annotations

import json
import re

import pytest
import torch

import groupcoop
from groupcoop.errors import UserError
from groupcoop.runs.fusion import drive_together, encode_together, fit_runs, fusable
from groupcoop.methods import METHODS
from groupcoop.runs.pipeline import check_run, run_method
from groupcoop.methods.prompts import PromptLearner
from groupcoop.runs.settings import make_settings

SHORT = {"epochs": 2, "batch_size": 1024}  # 5 steps per epoch on synth-waterbirds
PROMPT_METHODS = ["coop", "groupcoop", "coop_balanced", "coop_groupdro", "jtt"]
RUNS = [  # (method, hyper-parameters, seed): every learned-prompt method, prompts of several lengths
    ("coop", SHORT, 0),
    ("groupcoop", SHORT, 0),
    ("coop_balanced", SHORT, 1),
    ("coop_groupdro", {**SHORT, "batch_size": 512}, 0),  # epochs of another length
    ("jtt", {**SHORT, "first_epochs": 1, "epochs": 2, "upweight": 5}, 0),  # both stages
    ("groupcoop", {**SHORT, "n_ctx": 6}, 2),
]


def resolved(prep, method: str, hp: dict, seed: int = 0):
    settings = make_settings({"dataset": prep.dataset.name, "backbone": "groupcoop-tiny", "method": method,
                              "hyperparameters": hp, "seed": seed})
    return check_run(settings, prep.dataset, prep.backbone)[1]


def assert_same_run(alone, fused, what: str) -> None:
    """The same classifier, history and metrics, up to float rounding."""
    torch.testing.assert_close(fused.head.weight, alone.head.weight, atol=1e-5, rtol=0, msg=what)
    a, f = alone.metrics, fused.metrics
    assert f["best_epoch"] == a["best_epoch"] and f["epochs_run"] == a["epochs_run"], what
    for ha, hf in zip(a["history"], f["history"], strict=True):
        assert (hf["val_worst_group_acc"], hf["val_avg_acc"]) == (ha["val_worst_group_acc"], ha["val_avg_acc"]), what
        assert hf["loss"] == pytest.approx(ha["loss"], abs=1e-5), what
    for split in ("val", "test"):
        for key in ("worst_group_acc", "avg_acc"):
            assert f["splits"][split][key] == pytest.approx(a["splits"][split][key], abs=1e-6), (what, split, key)


def test_the_fusable_methods_are_exactly_the_learned_prompt_ones():
    assert all(fusable(recipe) == (recipe.kind == "prompt" and recipe.start is not None) for recipe in METHODS.values())
    assert all(fusable(METHODS[name]) for name in PROMPT_METHODS)
    assert not fusable(METHODS["group_linear"]) and not fusable(METHODS["linear_probe"])  # linear: unaffected


@pytest.fixture(scope="module")
def alone_and_fused(waterbirds_prep):
    settings = [resolved(waterbirds_prep, m, hp, seed) for m, hp, seed in RUNS]
    alone = [run_method(waterbirds_prep, s, log=lambda _: None) for s in settings]
    fused = fit_runs(waterbirds_prep, settings, log=lambda _: None)
    return alone, fused


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_fused_runs_equal_each_run_alone(alone_and_fused, method):
    alone, fused = alone_and_fused
    for (name, hp, seed), a, f in zip(RUNS, alone, fused):
        if name == method:
            assert_same_run(a, f, f"{name} seed {seed}")
            torch.testing.assert_close(f.learner.ctx, a.learner.ctx, atol=1e-5, rtol=0)
            if name == "jtt":  # the first run's errors, hence the second run's data, are the same
                assert f.metrics["jtt"]["errors"] == a.metrics["jtt"]["errors"] > 0
                assert [h["val_worst_group_acc"] for h in f.metrics["jtt"]["first_run_history"]] == \
                    [h["val_worst_group_acc"] for h in a.metrics["jtt"]["first_run_history"]]


class CallLog:
    """Rows of every text-encoder call that trains (gradients on); validation's calls are left out."""

    def __init__(self, monkeypatch, backbone):
        self.rows: list[int] = []
        original = backbone.encode_text_embeddings

        def spy(x, pool_at, cut=True):
            if torch.is_grad_enabled():
                self.rows.append(x.shape[0])
            return original(x, pool_at, cut)

        monkeypatch.setattr(backbone, "encode_text_embeddings", spy)


def test_one_call_per_step_and_runs_that_stop_early_leave(monkeypatch, waterbirds_prep):
    runs = [("groupcoop", {**SHORT, "epochs": 3}, 0),  # 4 prompts, 15 steps
            ("groupcoop", {**SHORT, "epochs": 6, "lr": 1e-9, "patience": 1}, 1),  # nothing improves: stops after 2
            ("coop", {**SHORT, "epochs": 2}, 0)]  # 2 prompts, 10 steps
    settings = [resolved(waterbirds_prep, m, hp, seed) for m, hp, seed in runs]
    alone = [run_method(waterbirds_prep, s, log=lambda _: None) for s in settings]
    calls = CallLog(monkeypatch, waterbirds_prep.backbone)
    order = []
    fused = fit_runs(waterbirds_prep, settings, log=lambda _: None, done=lambda i, run, s: order.append(i))
    assert alone[1].metrics["epochs_run"] == 2 < 6  # it did stop early
    for a, f, (m, _, seed) in zip(alone, fused, runs):
        assert_same_run(a, f, f"{m} seed {seed}")
    # one call per step for every run still training: 10 steps of all three, then 5 of the first alone
    assert calls.rows == [4 + 4 + 2] * 10 + [4] * 5
    assert order == [1, 2, 0]  # each run's result as soon as it ends


def test_the_cap_bounds_the_prompts_of_a_pass(monkeypatch, waterbirds_prep):
    runs = [("groupcoop", {**SHORT, "epochs": 1}, s) for s in range(3)] + [("coop", {**SHORT, "epochs": 1}, 0)]
    settings = [resolved(waterbirds_prep, m, hp, seed) for m, hp, seed in runs]
    calls = CallLog(monkeypatch, waterbirds_prep.backbone)
    capped = fit_runs(waterbirds_prep, settings, log=lambda _: None, max_prompts=6)
    # 4 + 4 > 6: one groupcoop run at a time, the coop run's 2 prompts beside the last one
    assert max(calls.rows) <= 6 and calls.rows == [4] * 5 + [4] * 5 + [4 + 2] * 5
    calls.rows.clear()
    fit_runs(waterbirds_prep, settings[:1], log=lambda _: None, max_prompts=1)  # a run larger than the cap: alone
    assert calls.rows == [4] * 5
    for s, run in zip(settings, capped):
        assert_same_run(run_method(waterbirds_prep, s, log=lambda _: None), run, s.method)


def test_prompts_of_other_lengths_share_a_call_only_where_padding_is_exact(monkeypatch, tiny_backbone):
    short = PromptLearner(tiny_backbone, ["round shape"], n_ctx=4, generator=torch.Generator().manual_seed(0))
    long = PromptLearner(tiny_backbone, ["angular shape on water", "x"], n_ctx=8,
                         generator=torch.Generator().manual_seed(1))
    assert short.length != long.length and tiny_backbone.pads_freely  # open_clip's causal CLIP text tower
    rows = [type("Rows", (), {"learner": learner})() for learner in (short, long)]
    with torch.no_grad():
        together = encode_together(rows)
        torch.testing.assert_close(together[0], short(), atol=1e-5, rtol=0)
        torch.testing.assert_close(together[1], long(), atol=1e-5, rtol=0)
    monkeypatch.setattr(type(tiny_backbone), "pads_freely", property(lambda self: False))
    with pytest.raises(ValueError, match="does not pad freely"):
        encode_together(rows)


def test_a_backbone_that_does_not_pad_freely_fuses_by_length(monkeypatch, waterbirds_prep):
    """Runs whose prompts differ in length then take one call each per step, with the same results."""
    bb = waterbirds_prep.backbone
    monkeypatch.setattr(type(bb), "pads_freely", property(lambda self: False))
    monkeypatch.setattr(type(bb), "text_length", lambda self, pool_at, length: int(pool_at.max()) + 1)  # still cut
    runs = [("groupcoop", {**SHORT, "epochs": 1}, 0), ("groupcoop", {**SHORT, "epochs": 1}, 1),
            ("coop", {**SHORT, "epochs": 1}, 0)]  # coop's 16 context vectors make longer prompts
    settings = [resolved(waterbirds_prep, m, hp, seed) for m, hp, seed in runs]
    calls = CallLog(monkeypatch, bb)
    fused = fit_runs(waterbirds_prep, settings, log=lambda _: None)
    assert sorted(calls.rows[:2]) == [2, 8] and len(calls.rows) == 2 * 5  # two calls per step
    for s, run in zip(settings, fused):
        assert_same_run(run_method(waterbirds_prep, s, log=lambda _: None), run, s.method)


def test_siglip_runs_fuse_exactly(tmp_path):
    """SigLIP (transformers adapter) attends both ways: its prompts all take the full context, so
    they share a call unpadded, and each run equals its run alone."""
    pytest.importorskip("transformers")
    import replicas
    from test_backbone_transformers import save_tiny_model

    from groupcoop.backbones.families import load_backbone
    from groupcoop.data.registry import load_dataset
    from groupcoop.runs.pipeline import prepare

    bb = load_backbone(f"transformers:{save_tiny_model(tmp_path / 'siglip', 'siglip')}")
    assert not bb.pads_freely
    root, options = str(replicas.csv_replica(tmp_path)), {"csv_path": "labels.csv", "path_col": "image",
                                                          "label_col": "animal", "attr_cols": "background",
                                                          "split_col": "fold"}
    ds = load_dataset("csv", root, **options)
    prep = prepare(ds, bb, cache_dir=tmp_path / "cache", workers=0, progress=False)
    hp = {"epochs": 2, "batch_size": 4, "n_ctx": 4}
    settings = [check_run(make_settings({"dataset": "csv", "root": root, "dataset_options": options,
                                         "backbone": bb.name, "method": m, "seed": seed, "hyperparameters": hp}),
                          ds, bb)[1]
                for m, seed in (("groupcoop", 0), ("coop", 0), ("coop_balanced", 1), ("jtt", 0))]
    fused = fit_runs(prep, settings, log=lambda _: None)
    for s, run in zip(settings, fused):
        assert_same_run(run_method(prep, s, log=lambda _: None), run, s.method)


def test_drive_together_refuses_a_cap_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        drive_together([], lambda *a: None, max_prompts=0)


# --- the Python API ---------------------------------------------------------------------------------

def test_fit_many_equals_fit_for_each_run(waterbirds_prep):
    fast = {"epochs": 1, "batch_size": 1024}
    runs = [{"method": "groupcoop", "seed": s, "hyperparameters": fast} for s in (0, 1)] + ["zeroshot"]
    many = groupcoop.fit_many("synth-waterbirds", runs)
    assert [r.metrics["method"] for r in many] == ["groupcoop", "groupcoop", "zeroshot"]
    assert [r.metrics["seed"] for r in many] == [0, 1, 0]
    for entry, run in zip(runs, many):
        values = {"method": entry} if isinstance(entry, str) else entry
        one = groupcoop.fit("synth-waterbirds", method=values["method"], seed=values.get("seed", 0),
                            config={"hyperparameters": values.get("hyperparameters", {})})
        torch.testing.assert_close(run.head.weight, one.head.weight, atol=1e-5, rtol=0)
        assert run.metrics["splits"]["test"]["worst_group_acc"] == \
            pytest.approx(one.metrics["splits"]["test"]["worst_group_acc"], abs=1e-6)


def test_readme_fit_many_block_runs_as_written(waterbirds_prep):
    from test_predict import readme_block

    scope: dict = {}
    exec(compile(readme_block("api-many"), "README fit_many snippet", "exec"), scope)
    runs = scope["runs"]
    assert [(r.metrics["method"], r.metrics["seed"]) for r in runs] == [
        ("groupcoop", 0), ("groupcoop", 1), ("groupcoop", 2), ("coop", 0), ("zeroshot", 0)]
    assert all(r.metrics["epochs_run"] <= 5 for r in runs[:4])


def test_fit_many_refuses_runs_of_another_dataset_or_backbone():
    with pytest.raises(UserError, match="run 1 has backbone 'ViT-B-16', run 0 'groupcoop-tiny'"):
        groupcoop.fit_many("synth-waterbirds", ["coop", {"method": "coop", "backbone": "ViT-B-16"}])
    with pytest.raises(UserError, match="non-empty list"):
        groupcoop.fit_many("synth-waterbirds", "coop")
    with pytest.raises(UserError, match="unknown method"):
        groupcoop.fit_many("synth-waterbirds", ["coop", "nope"])


# --- the sweep ----------------------------------------------------------------------------------------

def sweep_metrics(out) -> dict:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in out.glob("runs/*/*/*/*/seed-*/metrics.json")}


@pytest.mark.slow
def test_sweep_fuses_by_default_and_no_fuse_gives_the_same_runs(tmp_path, cli, waterbirds_prep):
    import yaml

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "fuse", "datasets": ["synth-waterbirds"],
                                    "methods": ["zeroshot", "coop", "groupcoop", "jtt"], "groups": ["gt"],
                                    "seeds": [0],
                                    "hyperparameters": {"epochs": 1, "first_epochs": 1, "batch_size": 2048}}))
    results = {}
    for name, flags in (("fused", []), ("alone", ["--no-fuse"]), ("jobs", ["--jobs", "2"])):
        result = cli("sweep", grid, "--out", tmp_path / name, *flags)
        assert result.code == 0, result.err
        assert ("learned-prompt runs fused" in result.err) == (name != "alone")
        results[name] = sweep_metrics(tmp_path / name)
    assert len(results["alone"]) == 4
    for name in ("fused", "jobs"):
        assert results[name].keys() == results["alone"].keys()
        for folder, metrics in results[name].items():
            for split in ("val", "test"):
                assert abs(metrics["splits"][split]["worst_group_acc"]
                           - results["alone"][folder]["splits"][split]["worst_group_acc"]) <= 1e-3, (name, folder)


def test_dry_run_estimates_the_fused_cost(cli, monkeypatch):
    monkeypatch.delenv("WATERBIRDS_ROOT", raising=False)
    from groupcoop.presets import resolve

    grid = resolve("waterbirds")  # the paper preset, shipped in the package (configs/ moved there)
    seconds = {}
    for flags in ([], ["--no-fuse"]):
        result = cli("sweep", grid, "--dry-run", *flags)
        assert result.code == 0, result.err
        seconds[bool(flags)] = training_seconds(result.out)
    assert "fused" in cli("sweep", grid, "--dry-run").out
    assert seconds[False] < seconds[True] / 2  # 24 learned-prompt runs per backbone share their text steps
    capped = cli("sweep", grid, "--dry-run", "--max-fused-prompts", "4").out
    assert seconds[False] < training_seconds(capped) <= seconds[True]


def training_seconds(text: str) -> float:
    """The dry run's "training at most N h|min|s", in seconds."""
    value, unit = re.search(r"training at most ([\d.]+) (h|min|s)\b", text).groups()
    return float(value) * {"h": 3600, "min": 60, "s": 1}[unit]
