"""One rule for every output (`io/folders.py`), one test per mechanism: --overwrite replaces only a
folder of the same kind that groupcoop wrote, never one of the command's inputs; the --overwrite
hint appears only where it helps; a killed writer's temporary folders are cleared by the next one;
a sweep folder stays under ./runs, holds one grid, and a missing dataset folder writes nothing.

Every folder here is made by hand (a manifest and a few files): the refusals come before any model
or image is loaded, so each test takes well under a second.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from groupcoop.io.folders import output_lock, write_manifest

from test_cli import assert_one_line_error
from test_hostile import TINY, csv_args, make_csv_root, snapshot, train_args


def made_by_groupcoop(folder: Path, kind: str, files=("config.yaml", "metrics.json", "head.safetensors")) -> Path:
    """A folder as groupcoop leaves it: a few files and the manifest naming them, of `kind`."""
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text(f"{kind} {name}\n")
    write_manifest(folder, kind)
    return folder


@pytest.fixture
def data(tmp_path) -> Path:
    return make_csv_root(tmp_path / "data")


def _groups(data: Path, out: Path, *extra) -> list:
    return ["groups", *csv_args(data), *TINY, "--labeler", "kmeans", "--out", out, "--quiet", *extra]


# --- 1. --overwrite replaces only a folder of the same kind -----------------------------------------------

@pytest.mark.parametrize("case", ["groups into a run", "train into a groups output", "extract into a run"])
def test_overwrite_replaces_only_a_folder_of_the_same_kind(case, data, tmp_path, cli):
    cache = tmp_path / "cache"
    if case == "groups into a run":
        target = made_by_groupcoop(tmp_path / "run", "run")
        argv, fragments = _groups(data, target, "--overwrite", "--cache-dir", cache), ["holds a groupcoop run"]
    elif case == "train into a groups output":
        target = made_by_groupcoop(tmp_path / "groups", "groups", files=("groups.csv", "quality.json"))
        argv, fragments = train_args(data, target, "--overwrite", "--cache-dir", cache), ["not a run"]
    else:
        target = made_by_groupcoop(tmp_path / "run", "run")
        argv, fragments = ["extract", *csv_args(data), *TINY, "--cache-dir", target / "cache", "--quiet"], ["--cache-dir"]
    before = snapshot(tmp_path)
    assert_one_line_error(cli(*argv), str(target), *fragments)
    assert snapshot(tmp_path) == before


# --- 2. never one of the command's own inputs ---------------------------------------------------------------

@pytest.mark.parametrize("case", ["predict onto its --csv", "predict into its run folder",
                                  "export onto the export it reads", "a grid onto a dataset image"])
def test_an_output_is_never_one_of_the_commands_inputs(case, data, tmp_path, cli):
    run = made_by_groupcoop(tmp_path / "run", "run")
    listing = tmp_path / "list.csv"
    listing.write_text("path\nimg/0.png\n")
    argv = {
        "predict onto its --csv": ["predict", run, "--csv", listing, "--root", data, "--out", listing, "--overwrite",
                                   "--quiet"],
        "predict into its run folder": ["predict", run, "--images", data / "img", "--out", run / "preds.csv", "--quiet"],
        "export onto the export it reads": ["export", made_by_groupcoop(tmp_path / "exp", "export"),
                                            "--out", tmp_path / "exp", "--overwrite"],
        "a grid onto a dataset image": ["datasets", "check", "csv", *csv_args(data)[2:], "--grid",
                                        data / "img" / "0.png", "--overwrite"],
    }[case]
    before = snapshot(tmp_path)
    line = assert_one_line_error(cli(*argv), "which this command reads")
    assert "pass --overwrite" not in line
    assert snapshot(tmp_path) == before


# --- 3. the --overwrite hint only where it helps ---------------------------------------------------------------

def test_the_overwrite_hint_appears_only_where_it_would_help(data, tmp_path, cli):
    run = made_by_groupcoop(tmp_path / "run", "run")
    other = made_by_groupcoop(tmp_path / "other", "run")
    groups = made_by_groupcoop(tmp_path / "groups", "groups", files=("groups.csv",))
    before = snapshot(tmp_path)
    demo = assert_one_line_error(cli("demo", "--out", run, "--cache-dir", tmp_path / "cache"), str(run), "not a demo")
    export = assert_one_line_error(cli("export", other, "--out", run), str(run), "not an export")
    assert "pass --overwrite" not in demo + export  # demo has no --overwrite; export never replaces a run
    again = assert_one_line_error(cli(*_groups(data, groups, "--cache-dir", tmp_path / "cache")), str(groups))
    assert "pass --overwrite" in again  # an earlier groups output: --overwrite replaces it
    assert snapshot(tmp_path) == before


# --- 4. a killed writer's temporary folders ----------------------------------------------------------------

def test_the_next_writer_removes_the_temporary_folders_a_killed_one_left(tmp_path):
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    half_written = tmp_path / ".run.tmp-k1ll3d_x"  # atomic_folder's name: the writer died before its manifest
    (half_written / "sub").mkdir(parents=True)
    (half_written / "sub" / "metrics.json").write_text("{")
    moved_aside = made_by_groupcoop(tmp_path / ".run.old-abcd_123" / "x", "run").parent
    kept = [tmp_path / ".run.tmp-mine", tmp_path / ".other.tmp-k1ll3d_x", tmp_path / "run.tmp-k1ll3d_x"]
    for folder in kept:  # not this writer's temporary folders: a user's, another output's, a visible one
        folder.mkdir()
    with output_lock(out):
        pass
    assert not half_written.exists() and not moved_aside.exists()
    assert all(folder.is_dir() for folder in kept) and not (tmp_path / ".run.lock").exists()
    # without a dead writer's lock, only a whole groupcoop output is taken for a leftover
    whole = made_by_groupcoop(tmp_path / ".run.tmp-wh0le_00", "run")
    live = tmp_path / ".run.tmp-l1ve_000"  # could be another writer's, still filling it
    live.mkdir()
    with output_lock(out):
        pass
    assert not whole.exists() and live.is_dir()


# --- 5. sweeps: the grid's name, one grid per folder, missing dataset folders ------------------------------

def _grid_file(tmp_path: Path, data: Path, **values) -> Path:
    grid = {"name": "folders", "methods": ["zeroshot"], "seeds": [0], **values,
            "datasets": [{"name": "csv", "root": str(data), "options": {"csv_path": "meta.csv", "path_col": "path",
                                                                         "label_col": "label", "attr_cols": ["place"]}}]}
    path = tmp_path / f"grid-{len(list(tmp_path.glob('grid-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.mark.parametrize("where", ["../../victim", "absolute"])
def test_a_grid_name_never_puts_the_sweep_outside_runs(where, data, tmp_path, cli, monkeypatch):
    victim = tmp_path / "victim"
    victim.mkdir()
    runs = tmp_path / "work" / "runs"  # where earlier sweeps went
    runs.mkdir(parents=True)
    monkeypatch.chdir(runs.parent)
    grid = _grid_file(tmp_path, data, name=str(victim) if where == "absolute" else where)
    result = cli("sweep", grid, "--summary-only")  # a sweep folder that exists is summarised into
    assert_one_line_error(result, "runs/")
    assert list(victim.iterdir()) == [] and list(runs.iterdir()) == []


def test_a_second_grid_into_a_sweep_folder_is_refused(data, tmp_path, cli):
    from groupcoop.sweeps.grid import load_grid

    first = _grid_file(tmp_path, data)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "grid.yaml").write_text(yaml.safe_dump(load_grid(first).model_dump(), sort_keys=False))
    write_manifest(out, "sweep", nested=False)  # what a sweep of `first` leaves before its first run
    before = snapshot(tmp_path)
    second = _grid_file(tmp_path, data, seeds=[1])
    assert_one_line_error(cli("sweep", second, "--out", out, "--quiet"), str(out), "another grid", "--overwrite")
    assert snapshot(tmp_path) == {**before, second.name: second.stat().st_size}


def test_a_missing_dataset_folder_is_refused_before_anything_is_written(data, tmp_path, cli):
    grid = _grid_file(tmp_path, data)
    before = snapshot(tmp_path)
    result = cli("sweep", grid, "--root", f"csv={tmp_path / 'missing'}", "--out", tmp_path / "sweep", "--quiet")
    assert_one_line_error(result, "missing", "--root csv=")
    assert snapshot(tmp_path) == before
