"""`groupcoop sweep`: a grid of ordinary runs, resumable, shardable, summarised in runs.csv and table.md."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from groupcoop.presets import resolve
from groupcoop.sweeps.grid import Grid, expand, load_grid, shard
from groupcoop.sweeps.summary import bootstrap_ci

FAST = {"epochs": 1, "batch_size": 2048}  # 3 steps on synth-waterbirds: the grid machinery is under test


def tiny_grid(tmp_path: Path, **changes) -> Path:
    grid = {"name": "tiny", "datasets": ["synth-waterbirds"], "methods": ["zeroshot", "groupcoop"],
            "groups": ["gt", "zeroshot"], "seeds": [0, 1], "hyperparameters": FAST, **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_grid_expands_every_combination_once():
    grid = Grid(datasets=["synth-random:0..2"], methods=["zeroshot", "coop", "groupcoop"], groups=["gt", "pseudo"],
                seeds=[0, 1])
    specs = expand(grid)
    # methods whose training ignores groups run once per seed; groupcoop once per group source and seed
    assert len(specs) == 3 * (2 + 2 + 2 * 2)
    assert len({s.folder for s in specs}) == len(specs)
    assert {s.dataset for s in specs} == {"synth-random:0", "synth-random:1", "synth-random:2"}


def test_a_method_entry_can_name_its_own_group_sources():
    grid = Grid(datasets=["synth-random:0"], groups=["gt"], seeds=[0],
                methods=[{"method": "groupcoop", "groups": ["gt", "pseudo", "zeroshot"]}, "group_linear", "coop"])
    runs = {(s.method, s.groups) for s in expand(grid)}
    assert runs == {("groupcoop", "gt"), ("groupcoop", "pseudo"), ("groupcoop", "zeroshot"), ("group_linear", "gt"),
                    ("coop", "-")}


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover_the_grid(count):
    grid = Grid(datasets=["synth-random:0..4", "synth-waterbirds"], methods=["zeroshot", "groupcoop"],
                groups=["gt", "pseudo"], seeds=[0, 1, 2])
    specs = expand(grid)
    parts = [shard(specs, i, count) for i in range(count)]
    folders = [s.folder for part in parts for s in part]
    assert sorted(folders) == sorted(s.folder for s in specs) and len(set(folders)) == len(folders)
    for part in parts:  # a dataset's runs stay on one machine, so it extracts only its own features
        for other in parts:
            if other is not part:
                assert not {s.data_key for s in part} & {s.data_key for s in other}


def test_sweep_writes_runs_csv_and_table(tmp_path, cli, waterbirds_prep):
    out = tmp_path / "sweep"
    result = cli("sweep", tiny_grid(tmp_path), "--out", out, "--quiet")
    assert result.code == 0, result.err
    with open(out / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    # zeroshot x 2 seeds (groups do not change it) + groupcoop x 2 group sources x 2 seeds
    assert len(rows) == 2 + 4
    assert {r["method"] for r in rows} == {"zeroshot", "groupcoop"}
    assert {(r["method"], r["groups"]) for r in rows} == {("zeroshot", "-"), ("groupcoop", "gt"),
                                                          ("groupcoop", "zeroshot")}
    for r in rows:
        run = out / "runs" / "synth-waterbirds" / "groupcoop-tiny" / r["method"] / r["groups"] / \
            f"seed-{r['seed']}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert float(r["test_worst_group_acc"]) == metrics["splits"]["test"]["worst_group_acc"]
    table = (out / "table.md").read_text()
    assert "| groupcoop [gt] |" in table and "| zeroshot |" in table and "synth-waterbirds" in table
    zs = [float(r["test_worst_group_acc"]) for r in rows if r["method"] == "zeroshot"]
    assert f"{100 * zs[0]:.1f} ± 0.0" in table  # mean ± std over the two seeds
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")


KILLABLE = """
import sys
from groupcoop.cli.main import main
sys.exit(main(["sweep", sys.argv[1], "--out", sys.argv[2], "--quiet", "--no-fuse"]))
"""  # one run after another, so that the kill lands between two (fused, the four would end together)


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path, waterbirds_prep, feature_cache, cli):
    grid = tiny_grid(tmp_path, methods=["groupcoop"], groups=["gt"], seeds=[0, 1, 2, 3])
    out = tmp_path / "sweep"
    env = {**os.environ, "GROUPCOOP_CACHE": str(feature_cache)}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(grid), str(out)], env=env)
    deadline = time.time() + 240
    done = lambda: sorted(out.glob("runs/*/*/*/*/seed-*/metrics.json"))  # noqa: E731
    while time.time() < deadline and len(done()) < 1 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = done()
    assert 1 <= len(finished) < 4, "the kill should land midway"
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    again = cli("sweep", grid, "--out", out)  # in this process, on the same feature cache
    assert again.code == 0, again.err
    assert f"{len(finished)} already finished" in again.err
    assert len(done()) == 4
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "finished runs are not redone"


def test_rerun_of_a_finished_sweep_runs_nothing(tmp_path, cli, waterbirds_prep):
    grid = tiny_grid(tmp_path, methods=["zeroshot"], seeds=[0], hyperparameters={})  # FAST has no zeroshot key
    out = tmp_path / "sweep"
    assert cli("sweep", grid, "--out", out, "--quiet").code == 0
    again = cli("sweep", grid, "--out", out)
    assert again.code == 0 and "1 already finished, 0 to run" in again.err


def test_dry_run_lists_runs_without_running(tmp_path, cli):
    result = cli("sweep", tiny_grid(tmp_path), "--out", tmp_path / "sweep", "--dry-run")
    assert result.code == 0, result.err
    assert result.out.count("todo  runs/") == 6 and "estimated" in result.out
    assert not (tmp_path / "sweep").exists()


BAD_GRIDS = {
    "unknown key": ({"datasets": ["synth-waterbirds"], "methods": ["zeroshot"], "method": "x"}, "method"),
    "unknown method": ({"datasets": ["synth-waterbirds"], "methods": ["zeroshott"]}, "zeroshott"),
    "unknown dataset": ({"datasets": ["synth-waterbird"], "methods": ["zeroshot"]}, "synth-waterbird"),
    "empty grid": ({"datasets": [], "methods": ["zeroshot"]}, "empty"),
    "bad seed": ({"datasets": ["synth-waterbirds"], "methods": ["zeroshot"], "seeds": [-1]}, "seeds"),
    "bad hyper-parameter": ({"datasets": ["synth-waterbirds"], "methods": [{"method": "coop", "hyperparameters":
                                                                            {"lr": "fast"}}]}, "lr"),
    "not a mapping": ([1, 2], "mapping"),
}


@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_bad_grid_is_one_line_and_runs_nothing(case, tmp_path, cli):
    grid, fragment = BAD_GRIDS[case]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    result = cli("sweep", path, "--out", tmp_path / "sweep")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("groupcoop: error: ") and fragment in lines[0], result.err
    assert not (tmp_path / "sweep").exists()


def test_bad_shard_and_root_flags(tmp_path, cli):
    grid = tiny_grid(tmp_path)
    for flags, fragment in ((["--shard", "3/3"], "--shard"), (["--root", "nofolder"], "--root")):
        result = cli("sweep", grid, "--out", tmp_path / "s", *flags)
        assert result.code == 2 and fragment in result.err and len(result.err.strip().splitlines()) == 1


def test_bootstrap_interval_covers_the_mean():
    lo, hi = bootstrap_ci([0.1, 0.2, 0.3, 0.05, 0.15])
    assert lo < 0.16 < hi and lo > 0.0


def test_suite_presets_are_disjoint():
    dev, report = load_grid(resolve("dev")), load_grid(resolve("report"))
    assert len(dev.datasets) == len(report.datasets) == 30
    assert not {d.name for d in dev.datasets} & {d.name for d in report.datasets}


def test_focus_table_compares_one_method_with_every_other():
    from groupcoop.sweeps.summary import focus_table

    rows = [{"dataset": f"t{t}", "method": m, "groups": g, "seed": 0, "test_worst_group_acc": acc}
            for t in range(4)
            for m, g, acc in [("groupcoop", "gt", 0.8), ("coop", "-", [0.5, 0.6, 0.7, 0.9][t]), ("dfr", "gt", 0.9)]]
    text = focus_table(rows, "groupcoop [gt]")
    line = {row.split(" | ")[0].strip("| "): row for row in text.splitlines() if row.startswith("| ")}
    assert "| +12.5 [" in line["coop"] and "| 75% |" in line["coop"] and "-10.0 (t3)" in line["coop"] and "+30.0 (t0)" in line["coop"]
    assert "-10.0 [-10.0, -10.0]" in line["dfr [gt]"] and "| 0% |" in line["dfr [gt]"]
    assert "groupcoop [gt]" not in line


PAPER_WATERBIRDS = resolve("waterbirds")


def test_paper_preset_lists_runs_and_cost_without_data(cli, monkeypatch):
    monkeypatch.delenv("WATERBIRDS_ROOT", raising=False)
    result = cli("sweep", PAPER_WATERBIRDS, "--dry-run")
    assert result.code == 0, result.err
    assert "todo  runs/waterbirds/ViT-L-14_openai/groupcoop/pseudo/seed-2" in result.out
    assert "runs over 5 (dataset, backbone) pairs" in result.out and "estimated on one GPU" in result.out
    assert "not in the estimate" not in result.out  # its dataset and every backbone have their cost facts


def test_a_synthetic_grid_is_in_the_dry_run_estimate(tmp_path, cli):
    """The synthetic tasks' sizes come from their definitions, random tasks' from their seeds."""
    from groupcoop.sweeps.cost import sweep_cost

    grid = Grid(datasets=["synth-waterbirds", "synth-random:0..1"], methods=["zeroshot", "coop", "groupcoop", "jtt"],
                groups=["gt"])
    cost = sweep_cost(expand(grid))
    assert not cost.unknown and cost.extraction > 0 and 0 < cost.fused < cost.alone
    result = cli("sweep", tiny_grid(tmp_path), "--out", tmp_path / "sweep", "--dry-run")
    assert result.code == 0 and "estimated on one GPU" in result.out and "not in the estimate" not in result.out


def test_the_cost_model_counts_the_loop_runs_each_recipe_names():
    """A method trained by the loop runs `epochs` over the training set unless its recipe says
    otherwise (JTT: a first run, then a longer second one); one trained in one go has none."""
    from groupcoop.methods import METHODS

    for recipe in METHODS.values():
        hp = recipe.params()
        runs = recipe.loop_epochs(hp, 1000)
        if recipe.start is None:
            assert runs == []
        elif recipe.epoch_sizes is None:
            assert runs == [(hp.epochs, 1000)]
        else:
            assert runs and all(epochs >= 1 and examples >= 1000 for epochs, examples in runs)
    jtt = METHODS["jtt"]
    (first, n_first), (second, n_second) = jtt.loop_epochs(jtt.params({"first_epochs": 3, "epochs": 5}), 1000)
    assert (first, n_first, second) == (3, 1000, 5) and n_second > 1000


@pytest.mark.slow
def test_paper_preset_runs_end_to_end_on_a_waterbirds_replica(cli, tmp_path):
    import replicas

    root = replicas.waterbirds_replica(tmp_path, counts={"train": [8, 4, 3, 6], "val": [4, 4, 4, 4],
                                                         "test": [3, 3, 3, 3]})
    out = tmp_path / "paper"
    result = cli("sweep", PAPER_WATERBIRDS, "--root", f"waterbirds={root}", "--backbones", "groupcoop-tiny",
                 "--seeds", "0", "--set", "epochs=1", "--out", out, "--cache-dir", tmp_path / "cache", "--quiet",
                 "--workers", "0")
    assert result.code == 0, result.err
    with open(out / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    grid = load_grid(PAPER_WATERBIRDS)
    assert {r["method"] for r in rows} == {m.method for m in grid.methods}  # every method of the preset ran
    assert {r["groups"] for r in rows if r["method"] == "groupcoop"} == {"gt", "pseudo"}
    assert all(r["test_worst_group_acc"] not in ("", None) for r in rows)


def test_a_label_free_dfr_entry_first_in_a_grid_runs(tmp_path, cli, waterbirds_prep):
    """The sweep prepares each dataset once, with every bias label; that preparation must not ask the
    first run's own grouping checks of the unhidden data (DFR with discovery refuses true val groups)."""
    auto = [{"source": "pseudo", "bias_prompts": "auto"}]
    grid = tiny_grid(tmp_path, methods=[{"method": "dfr", "groups": auto}], groups=auto, seeds=[0],
                     hide_bias_labels=["train", "val"], hyperparameters={"tune_repeats": 1, "repeats": 2})
    out = tmp_path / "sweep"
    result = cli("sweep", grid, "--out", out, "--quiet")
    assert result.code == 0, result.err
    (metrics,) = out.glob("runs/*/*/dfr/*/seed-0/metrics.json")
    assert json.loads(metrics.read_text())["selection_groups"] == "pseudo val groups (half-splits of val)"


# ---------------------------------------------------------------- listing and cost nits


def test_cost_durations_show_minutes_or_seconds_below_an_hour():
    from groupcoop.sweeps.cost import duration

    assert [duration(s) for s in (0, 0.04, 8.44, 59.9, 60, 750, 3600, 9000)] == \
        ["0 s", "under 0.1 s", "8.4 s", "59.9 s", "1.0 min", "12.5 min", "1.00 h", "2.50 h"]


def test_a_synthetic_grids_dry_run_estimate_is_not_zero_hours(tmp_path, cli):
    result = cli("sweep", tiny_grid(tmp_path), "--out", tmp_path / "sweep", "--dry-run")
    assert result.code == 0, result.err
    line = next(x for x in result.out.splitlines() if x.startswith("estimated on one GPU"))
    assert "0.00 h" not in line and re.search(r"feature extraction [\d.]+ (s|min)\b", line), line


def test_list_presets_shows_whole_first_sentences(cli):
    from groupcoop.presets import available, summary

    listed = cli("sweep", "--list-presets")
    assert listed.code == 0, listed.err
    for name, path in available().items():
        text = summary(path)
        assert text and text[-1] in ".?!", (name, text)  # a whole sentence, never cut at a line's end
        assert text in listed.out, name
    # the dev suite's first sentence runs over two comment lines
    assert "is chosen on these 30 random tasks of the synthetic world, and never on the report suite." in listed.out


def test_a_preset_summary_is_its_first_sentence_only(tmp_path):
    from groupcoop.presets import summary

    path = tmp_path / "p.yaml"
    path.write_text("# One grid (issue 3): it runs over\n# two lines, e.g. this. Second sentence.\n"
                    "#   groupcoop sweep p\nname: p\n# a later comment\n")
    assert summary(path) == "One grid (issue 3): it runs over two lines, e.g. this."
    path.write_text("name: p\n# No full stop here\n")
    assert summary(path) == "No full stop here"
