"""Hostile grids and damaged sweep folders: run folders stay inside --out, existing runs are kept
unless --overwrite, unknown hyper-parameters and huge grids are refused before any work, workers
die with the sweep, and resume cleans up after a killed sweep instead of failing."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from groupcoop.io.csv_safe import FORMULA_STARTS, csv_text
from groupcoop.reports.html import md_cell, md_cells
from groupcoop.sweeps.grid import SLUG_MAX, Grid, _slug, expand

FAST = {"epochs": 1, "batch_size": 2048}
PROPERTY = settings(max_examples=200, deadline=None)


def write_grid(tmp_path: Path, **values) -> Path:
    grid = {"name": "hostile", "datasets": ["synth-waterbirds"], "methods": ["zeroshot"], "seeds": [0], **values}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def one_line(result) -> str:
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("groupcoop: error: "), result.err
    return lines[0]


# --- names ---------------------------------------------------------------------------------------

@PROPERTY
@given(st.text())
def test_a_slug_is_one_safe_folder_name(text):
    slug = _slug(text)
    assert 0 < len(slug) <= SLUG_MAX and slug.isascii()
    assert "/" not in slug and "\x00" not in slug and not slug.startswith(".") and not slug.endswith(".")
    out = Path("/sweep")
    assert (out / slug).resolve().parent == out  # never `.`, `..` or a path of its own
    assert _slug(text) == slug


@PROPERTY
@given(st.text(min_size=SLUG_MAX + 1, alphabet="ab"), st.text(min_size=SLUG_MAX + 1, alphabet="ab"))
def test_long_labels_keep_distinct_folders(a, b):
    if a != b:
        assert _slug(a) != _slug(b)


@pytest.mark.parametrize("label", ["..", "../..", "/", "", "a/../../b", "x\x00y", "é" * 300, "." * 5, "-"])
def test_hostile_labels_make_run_folders_inside_the_sweep(label):
    grid = Grid(datasets=[{"name": "synth-waterbirds", "label": label or None}],
                methods=[{"method": "zeroshot", "label": label or None}, {"method": "groupcoop", "label": "g"}],
                groups=[{"source": "gt", "label": label or None}])
    out = Path("/sweep")
    for spec in expand(grid):
        assert ".." not in spec.folder.parts and all(p and not p.startswith(".") for p in spec.folder.parts)
        assert (out / spec.folder).resolve().is_relative_to(out)


@PROPERTY
@given(st.lists(st.text(), min_size=1, max_size=5))
def test_labels_with_pipes_and_newlines_stay_one_markdown_cell_each(labels):
    row = "| " + " | ".join(md_cell(x) for x in labels) + " |"
    assert "\n" not in row and "\r" not in row
    assert md_cells(row) == [" ".join(x.splitlines()).strip() for x in labels]


@PROPERTY
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1), min_size=1, max_size=4))
def test_sweep_labels_in_runs_csv_are_never_formulas(labels):
    rows = [{"dataset": label, "method": label, "groups": label, "seed": 0, "test_worst_group_acc": 0.5}
            for label in labels]
    read = list(csv.DictReader(io.StringIO(csv_text(rows), newline="")))
    assert len(read) == len(labels)
    for row, label in zip(read, labels):
        for key in ("dataset", "method", "groups"):
            cell = row[key]
            assert cell in (label, "'" + label)
            assert not cell.startswith(FORMULA_STARTS) or len(cell) == 1 or cell == label


# --- refused before any work ---------------------------------------------------------------------

def test_run_folder_reached_through_a_link_is_refused(tmp_path, cli):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "runs").symlink_to(elsewhere)
    line = one_line(cli("sweep", write_grid(tmp_path), "--out", out))
    assert "outside" in line
    assert not any(elsewhere.iterdir())


TRAIN_LINE = "there is no --set epcohs (did you mean: epochs?)"


def test_unknown_hyperparameters_are_refused_as_train_refuses_them(tmp_path, cli):
    train = one_line(cli("train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "coop",
                         "--set", "epcohs=2", "--out", tmp_path / "run"))
    assert TRAIN_LINE in train
    grid = write_grid(tmp_path, methods=["zeroshot", "coop"])
    assert TRAIN_LINE in one_line(cli("sweep", grid, "--set", "epcohs=2", "--out", tmp_path / "s"))
    assert "learning_rate" in one_line(cli("sweep", grid, "--set", "learning_rate=0.1", "--out", tmp_path / "s"))
    in_file = one_line(cli("sweep", write_grid(tmp_path, methods=["coop"], hyperparameters={"epcohs": 2}),
                           "--out", tmp_path / "s"))
    assert "'epcohs' (did you mean: epochs?)" in in_file
    in_entry = one_line(cli("sweep", write_grid(tmp_path, methods=[{"method": "coop", "hyperparameters":
                                                                    {"epcohs": 2}}]), "--out", tmp_path / "s"))
    assert TRAIN_LINE in in_entry
    assert not (tmp_path / "s").exists() and not (tmp_path / "run").exists()


def test_a_key_that_only_another_method_has_is_kept_for_that_method(tmp_path, cli):
    result = cli("sweep", write_grid(tmp_path, methods=["zeroshot", "coop"]), "--set", "n_ctx=4", "--dry-run",
                 "--out", tmp_path / "s")
    assert result.code == 0, result.err


def test_a_huge_grid_is_refused_at_once(tmp_path, cli):
    start = time.perf_counter()
    line = one_line(cli("sweep", write_grid(tmp_path), "--seeds", "0..100000000000", "--dry-run",
                        "--out", tmp_path / "s"))
    assert time.perf_counter() - start < 5 and "100,000,000,001 runs" in line and "--max-runs" in line
    seeds = write_grid(tmp_path, seeds="0..2")
    assert "3 runs" in one_line(cli("sweep", seeds, "--max-runs", "2", "--dry-run", "--out", tmp_path / "s"))
    allowed = cli("sweep", seeds, "--max-runs", "3", "--dry-run", "--out", tmp_path / "s")
    assert allowed.code == 0 and allowed.out.count("todo  runs/") == 3


def test_summary_of_a_missing_sweep_is_one_line(tmp_path, cli):
    line = one_line(cli("sweep", write_grid(tmp_path), "--summary-only", "--out", tmp_path / "nothing"))
    assert "--summary-only" in line and not (tmp_path / "nothing").exists()


# --- resume and existing runs ---------------------------------------------------------------------

def finished_sweep(tmp_path, cli, **values) -> tuple[Path, Path]:
    grid, out = write_grid(tmp_path, **values), tmp_path / "sweep"
    result = cli("sweep", grid, "--out", out, "--quiet")
    assert result.code == 0, result.err
    return grid, out


def test_a_run_of_other_settings_is_replaced_only_with_overwrite(tmp_path, cli, waterbirds_prep):
    grid, out = finished_sweep(tmp_path, cli, methods=["coop"], hyperparameters=FAST)
    (metrics,) = out.glob("runs/*/*/*/*/seed-0/metrics.json")
    before = metrics.read_bytes()
    line = one_line(cli("sweep", grid, "--set", "lr=0.0001", "--out", out))
    assert "--overwrite" in line and metrics.read_bytes() == before
    replaced = cli("sweep", grid, "--set", "lr=0.0001", "--out", out, "--overwrite", "--quiet")
    assert replaced.code == 0, replaced.err
    assert yaml.safe_load((metrics.parent / "config.yaml").read_text())["hyperparameters"]["lr"] == 0.0001


DAMAGE = {"not JSON": "{not json", "not a mapping": "[1, 2]", "no headline numbers": '{"splits": {"test": {}}}'}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_redoes_a_damaged_run_and_removes_its_own_temporaries(damage, tmp_path, cli, waterbirds_prep):
    grid, out = finished_sweep(tmp_path, cli, seeds=[0, 1])
    seed0, seed1 = sorted(out.glob("runs/*/*/*/*/seed-*"))
    kept = seed0 / "metrics.json"
    stamp = kept.stat().st_mtime_ns
    (seed1 / "metrics.json").write_text(DAMAGE[damage])
    stale = seed0.parent / ".seed-0.tmp-k1ll3d_x"  # what a sweep killed mid-write leaves
    stale.mkdir()
    (stale / "metrics.json").write_text("{}")
    users = [seed0.parent / ".notes", seed0.parent / ".seed-0.tmp-mine"]  # not the sweep's: kept
    for folder in users:
        folder.mkdir()
    again = cli("sweep", grid, "--out", out)
    assert again.code == 0, again.err
    assert "1 already finished, 1 to run" in again.err and "removed 1 temporary folder" in again.err
    assert not stale.exists() and all(f.is_dir() for f in users)
    assert kept.stat().st_mtime_ns == stamp
    redone = json.loads((seed1 / "metrics.json").read_text())
    assert isinstance(redone["splits"]["test"]["worst_group_acc"], float)


def test_a_label_with_a_pipe_keeps_the_table_whole(tmp_path, cli, waterbirds_prep):
    _, out = finished_sweep(tmp_path, cli, methods=[{"method": "zeroshot", "label": "zero|shot\nnew line"}])
    rows = [line for line in (out / "table.md").read_text().splitlines() if line.startswith("|")]
    assert len({len(md_cells(r)) for r in rows}) == 1 and md_cells(rows[-1])[0] == "zero|shot new line"
    assert "<td>zero|shot new line</td>" in (out / "report.html").read_text()


# --- workers die with the sweep -------------------------------------------------------------------

ORPHAN = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from groupcoop.sweeps.run import _init_worker

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(1, os.getpid()))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 300)
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sweep_workers_die_when_the_sweep_is_killed(tmp_path):
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 20
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived the sweep"
    finally:
        parent.kill()
