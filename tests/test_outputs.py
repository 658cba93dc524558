"""Hostile input against `predict`, `export`, the outputs and the Python API, by mechanism:

- one output writer (`files.atomic_write`/`atomic_folder`): a device node, FIFO or link at an
  output path is never replaced, with or without --overwrite; missing folders are created and
  removed again when the output fails;
- one reader of user files (`files.open_regular`): a FIFO where a file should be is one line,
  never a hang;
- one path confinement (`PathImages`): `predict --csv --root` refuses a symlink out of the root
  as `train` does;
- one CSV writer (`csv_safe`): no cell a spreadsheet would run;
- one head validator (`head.check_head`);
- one check of the GROUPCOOP_* variables; torchrun's variables without torchrun.

Everything runs on the 12-image CSV dataset of test_hostile.py and its zero-shot run (`zeroshot_run`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import groupcoop
from groupcoop.io.csv_safe import FORMULA_STARTS, csv_text, neutralise
from groupcoop.errors import UserError

from test_cli import assert_one_line_error
from test_hostile import (TINY, csv_args, make_csv_root, snapshot, train_args, write_png,
                          zeroshot_run)  # noqa: F401 (zeroshot_run: a fixture)

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def predict(cli, run, *args):
    return cli("predict", run, *args, "--quiet", "--workers", "0")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- 1. one writer: special files are never replaced ---------------------------------------------------

def _special(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"special-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
    else:
        (tmp_path / "elsewhere.csv").write_text("mine")
        path.symlink_to(tmp_path / "elsewhere.csv")
    return path


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink"])
@pytest.mark.parametrize("command", ["predict", "export", "train", "grid"])
def test_an_output_path_holding_a_special_file_is_never_replaced(kind, command, zeroshot_run, tmp_path, cli):
    root, run = zeroshot_run
    target = _special(tmp_path, kind)
    before = os.lstat(target)
    argv = {"predict": ["predict", run, "--images", root / "img" / "0.png", "--out", target, "--quiet"],
            "export": ["export", run, "--out", target],
            "train": train_args(root, target),
            "grid": ["datasets", "check", "csv", *csv_args(root)[2:], "--grid", target]}[command]
    assert_one_line_error(cli(*argv, "--overwrite"), str(target))
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    if kind == "symlink":
        assert (tmp_path / "elsewhere.csv").read_text() == "mine"


def test_dev_null_as_out_is_refused_and_left_alone(zeroshot_run, cli, tmp_path):
    root, run = zeroshot_run
    before = os.lstat("/dev/null")
    assert_one_line_error(predict(cli, run, "--images", root / "img" / "0.png", "--out", "/dev/null", "--overwrite"),
                          "/dev/null", "character device")
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_a_special_file_swapped_in_while_writing_is_not_replaced(tmp_path):
    """The writer checks the target again just before its rename."""
    from groupcoop.io.write import atomic_text

    target = tmp_path / "out.csv"

    def swap(tmp):
        Path(tmp).write_text("x")
        os.mkfifo(target)

    from groupcoop.io.write import atomic_write

    with pytest.raises(UserError, match="FIFO"):
        atomic_write(target, swap)
    assert stat.S_ISFIFO(os.lstat(target).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    atomic_text(tmp_path / "new" / "deeper" / "x.txt", "ok")  # missing folders are made
    assert (tmp_path / "new" / "deeper" / "x.txt").read_text() == "ok"


def test_a_failed_write_leaves_no_folders_behind(tmp_path):
    from groupcoop.io.write import atomic_write

    def fail(tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a" / "b" / "out.csv", fail)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(UserError, match="cannot create folder"):  # a file among the parents: one line
        atomic_write(tmp_path / "afile" / "b" / "out.csv", lambda tmp: None)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and (tmp_path / "afile").read_text() == "mine"


def test_predict_and_export_into_folders_that_do_not_exist_yet(zeroshot_run, cli, tmp_path):
    root, run = zeroshot_run
    out = tmp_path / "new" / "deeper" / "preds.csv"
    result = predict(cli, run, "--images", root / "img", "--out", out)
    assert result.code == 0, result.err
    assert len(read_rows(out)) == 12
    exported = tmp_path / "also" / "new" / "classifier"
    result = cli("export", run, "--out", exported)
    assert result.code == 0, result.err
    assert (exported / "head.safetensors").is_file() and (exported / "open_clip_model.safetensors").is_file()


def test_strict_predict_into_a_new_folder_leaves_nothing(zeroshot_run, cli, tmp_path):
    root, run = zeroshot_run
    images = tmp_path / "images"
    shutil.copytree(root / "img", images)
    (images / "broken.png").write_bytes(b"not an image")
    before = snapshot(tmp_path)
    result = predict(cli, run, "--images", images, "--out", tmp_path / "new" / "preds.csv", "--strict")
    assert_one_line_error(result, "broken.png")
    assert snapshot(tmp_path) == before


# --- 2. reads never hang -----------------------------------------------------------------------------

class Hung(BaseException):
    """Raised by the alarm; a BaseException, so that no error handler of the CLI takes it for a failure."""


@contextlib.contextmanager
def alarm(seconds: int, what: str):
    """A read that hangs (opening a FIFO blocks until a writer comes) fails the test instead of stopping
    the suite: SIGALRM interrupts the blocked call in this, the main, thread."""
    def hung(*_):
        raise Hung(f"{what} hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def guarded(cli):
    """The CLI in this process (the `cli` fixture) under an alarm."""
    def run(*argv):
        with alarm(120, f"groupcoop {argv[0]}"):
            return cli(*argv)
    return run


def test_a_fifo_among_the_images_of_a_csv_is_an_error_row_not_a_hang(zeroshot_run, tmp_path, guarded):
    root, run = zeroshot_run
    data = tmp_path / "data"
    shutil.copytree(root, data)
    os.mkfifo(data / "img" / "fifo.png")
    (tmp_path / "list.csv").write_text("path\nimg/0.png\nimg/fifo.png\n")
    proc = guarded("predict", run, "--csv", tmp_path / "list.csv", "--root", data, "--out", tmp_path / "p.csv",
                   "--quiet", "--workers", "0")
    assert proc.code == 0, proc.err
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "p.csv")}
    assert rows["0.png"]["class"] and "FIFO" in rows["fifo.png"]["error"]


def test_a_fifo_in_an_images_folder_is_passed_over_and_one_named_is_refused(zeroshot_run, tmp_path, guarded):
    root, run = zeroshot_run
    images = tmp_path / "images"
    shutil.copytree(root / "img", images)
    os.mkfifo(images / "fifo.png")
    proc = guarded("predict", run, "--images", images, "--out", tmp_path / "p.csv", "--quiet", "--workers", "0")
    assert proc.code == 0, proc.err
    assert len(read_rows(tmp_path / "p.csv")) == 12
    proc = guarded("predict", run, "--images", images / "fifo.png", "--out", tmp_path / "q.csv", "--quiet")
    assert proc.code == 2 and "FIFO" in proc.err and len(proc.err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["config.yaml", "head.safetensors", "--config", "meta.csv", "--csv", "metrics.json"])
def test_a_fifo_where_a_file_is_read_is_one_line(where, zeroshot_run, tmp_path, guarded):
    root, run = zeroshot_run
    copy, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(run, copy)
    shutil.copytree(root, data)
    fifo = {"config.yaml": copy / "config.yaml", "head.safetensors": copy / "head.safetensors",
            "--config": tmp_path / "config.yaml", "meta.csv": data / "meta.csv", "--csv": tmp_path / "list.csv",
            "metrics.json": copy / "metrics.json"}[where]
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    if where == "metrics.json":  # the Python API's load_run
        with alarm(120, "load_run"), pytest.raises(Exception, match="FIFO"):
            groupcoop.load_run(copy)
        return
    args = {"config.yaml": ["predict", copy, "--images", data / "img" / "0.png"],
            "head.safetensors": ["predict", copy, "--images", data / "img" / "0.png"],
            "--csv": ["predict", copy, "--csv", fifo, "--root", data],
            "--config": ["train", "--config", fifo],
            "meta.csv": ["datasets", "check", "csv", *csv_args(data)[2:]]}[where]
    if where != "meta.csv":
        args += ["--out", tmp_path / "out", "--quiet"]
    proc = guarded(*args)
    assert proc.code == 2, proc.err
    assert len(proc.err.strip().splitlines()) == 1 and "FIFO" in proc.err, proc.err


def test_train_into_a_run_folder_whose_config_is_a_fifo_never_waits_on_it(zeroshot_run, tmp_path, guarded):
    """`train` (and `sweep`) ask whether --out already holds this run: a FIFO config.yaml is not one."""
    from groupcoop.runs.folder import holds_run

    root, run = zeroshot_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.yaml").unlink()
    os.mkfifo(copy / "config.yaml")
    assert not holds_run(copy, {})
    proc = guarded(*train_args(root, copy, "--workers", "0", "--cache-dir", tmp_path / "cache"))
    assert proc.code == 2 and "already holds" in proc.err, proc.err
    assert len(proc.err.strip().splitlines()) == 1 and stat.S_ISFIFO(os.lstat(copy / "config.yaml").st_mode)


# --- 3. path confinement: predict --csv --root like train ------------------------------------------------

def test_predict_csv_refuses_a_symlink_out_of_the_root(zeroshot_run, cli, tmp_path):
    root, run = zeroshot_run
    data = tmp_path / "data"
    shutil.copytree(root, data)
    write_png(tmp_path / "outside" / "secret.png", 77)
    (data / "img" / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    (tmp_path / "list.csv").write_text("path\nimg/0.png\nimg/link.png\n")
    args = ["--csv", tmp_path / "list.csv", "--root", data, "--out", tmp_path / "p.csv"]
    assert_one_line_error(predict(cli, run, *args), "link.png", "outside", "--allow-symlinks-outside")
    assert not (tmp_path / "p.csv").exists()
    result = predict(cli, run, *args, "--allow-symlinks-outside")
    assert result.code == 0, result.err
    assert all(r["class"] for r in read_rows(tmp_path / "p.csv"))


# --- 4. CSV cells a spreadsheet cannot run ------------------------------------------------------------------

def test_predict_neutralises_formula_file_names_and_class_names(zeroshot_run, cli, tmp_path):
    root, run = zeroshot_run
    images = tmp_path / "images"
    images.mkdir()
    names = ["=HYPERLINK(x).png", "+1.png", "-2+3.png", "@SUM.png", "ok.png"]
    for i, name in enumerate(names):
        shutil.copy(root / "img" / f"{i}.png", images / name)
    (tmp_path / "list.csv").write_text("path\n" + "".join(f"{n}\n" for n in names))
    result = predict(cli, run, "--csv", tmp_path / "list.csv", "--root", images, "--out", tmp_path / "p.csv")
    assert result.code == 0, result.err
    text = (tmp_path / "p.csv").read_text(encoding="utf-8")
    for line in text.splitlines():
        for cell in next(csv.reader([line])):
            assert not cell.startswith(FORMULA_STARTS), cell
    rows = read_rows(tmp_path / "p.csv")
    assert [Path(r["path"]).name for r in rows] == names  # the path column starts with the root, not the name
    assert all(0 <= float(r["p_cat"]) <= 1 for r in rows)


def test_groups_csv_neutralises_formula_labels(tmp_path, cli):
    root = make_csv_root(tmp_path / "data", labels=("=cmd|' /C calc'!A0", "@dog"))
    out = tmp_path / "groups"
    result = cli("groups", *csv_args(root), *TINY, "--labeler", "kmeans", "--out", out, "--quiet", "--workers", "0",
                 "--cache-dir", tmp_path / "cache")
    assert result.code == 0, result.err
    rows = read_rows(out / "groups.csv")
    assert rows and all(r["group_name"].startswith("'") for r in rows)
    assert {r["group_name"].split(",")[0] for r in rows} == {"'=cmd|' /C calc'!A0", "'@dog"}


CELLS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30) | st.sampled_from(
    ["=1+2", "+1", "-1", "-0.5", "-1e5", "@SUM(A1)", "\t=x", "\r=x", "\uff1d1", "=1+2\";=1+2", "a;=1+1", "1e5", "-",
     "-\u0661"]) | st.text("0123456789+-.eE", max_size=6)


@PROPERTY
@given(st.lists(st.lists(CELLS, min_size=3, max_size=3), min_size=1, max_size=5))
def test_csv_cells_never_start_a_formula_and_read_back_as_written(table):
    rows = [dict(zip("abc", r)) for r in table]
    cells = list(csv.reader(csv_text(rows).splitlines(keepends=True)))
    assert cells[0] == ["a", "b", "c"]
    for written, row in zip(cells[1:], table):
        for cell, original in zip(written, row):
            number = set(original) <= set("0123456789+-.eE") and _is_float(original)
            assert not cell.startswith(FORMULA_STARTS) or number or len(cell) == 1, cell
            assert cell == original or (cell == "'" + original and original.startswith(FORMULA_STARTS))


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@PROPERTY
@given(st.binary(min_size=1, max_size=20))
def test_file_names_in_any_encoding_become_valid_utf8_cells(raw):
    name = os.fsdecode(raw)  # how Python holds a file name of any bytes
    cell = neutralise(name)
    cell.encode("utf-8")  # never raises
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        assert "\\x" in cell
    else:
        assert cell in (name, "'" + name)


def test_a_non_utf8_file_name_is_predicted_with_an_escaped_path(zeroshot_run, cli, tmp_path):
    root, run = zeroshot_run
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(root / "img" / "0.png", os.path.join(os.fsencode(images), b"caf\xe9.png"))
    result = predict(cli, run, "--images", images, "--out", tmp_path / "p.csv")
    assert result.code == 0, result.err
    (row,) = read_rows(tmp_path / "p.csv")
    assert row["path"].endswith("caf\\xe9.png") and row["class"] and row["error"] == ""


def test_a_csv_that_is_not_utf8_is_one_line(zeroshot_run, cli, tmp_path):
    root, run = zeroshot_run
    (tmp_path / "list.csv").write_bytes(b"path\nimg/caf\xe9.png\n")
    assert_one_line_error(predict(cli, run, "--csv", tmp_path / "list.csv", "--root", root, "--out", tmp_path / "p.csv"),
                          "list.csv", "UTF-8")


# --- 5. one validator for heads ---------------------------------------------------------------------------

def _rewrite_head(run: Path, copy: Path, tensors=None, **meta_changes) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(run, copy)
    with safe_open(str(copy / "head.safetensors"), framework="pt") as fh:
        meta = json.loads(fh.metadata()["groupcoop"])
        weight = fh.get_tensor("weight")
    meta.update(meta_changes)
    save_file(tensors(weight) if tensors else {"weight": weight}, str(copy / "head.safetensors"),
              metadata={"groupcoop": json.dumps(meta)})


DAMAGED_HEADS = {
    "nan-weight": ({"tensors": lambda w: {"weight": torch.full_like(w, float("nan"))}}, "NaN"),
    "inf-weight": ({"tensors": lambda w: {"weight": w.index_fill(1, torch.tensor([0]), float("inf"))}}, "infinite"),
    "nan-bias": ({"tensors": lambda w: {"weight": w, "bias": torch.tensor([0.0, float("nan")])}}, "bias"),
    "inf-scale": ({"scale": float("inf")}, "scale"),
    "negative-scale": ({"scale": -3.0}, "scale"),
    "text-scale": ({"scale": "100"}, "scale"),
    "duplicate-classes": ({"class_names": ["cat", "cat"]}, "twice"),
    "too-few-classes": ({"class_names": ["cat"]}, "class names"),
    "classes-a-string": ({"class_names": "catdog"}, "class names"),
    "empty-class-name": ({"class_names": ["cat", " "]}, "class names"),
    "duplicate-rows": ({"row_names": ["x", "x"]}, "twice"),
    "n-classes-float": ({"n_classes": 2.0}, "classes"),
    "aggregate-list": ({"aggregate": ["max"]}, "aggregate"),
}


@pytest.mark.parametrize("case", list(DAMAGED_HEADS))
def test_a_damaged_head_is_refused_by_every_loader(case, zeroshot_run, tmp_path, cli):
    root, run = zeroshot_run
    changes, fragment = DAMAGED_HEADS[case]
    copy = tmp_path / "run"
    _rewrite_head(run, copy, **changes)
    line = assert_one_line_error(predict(cli, copy, "--images", root / "img" / "0.png", "--out", tmp_path / "p.csv"),
                                 "head.safetensors")
    assert fragment in line
    assert_one_line_error(cli("evaluate", "--prompts", copy, *csv_args(root), *TINY, "--quiet"), fragment)
    assert_one_line_error(cli("export", copy, "--out", tmp_path / "exp"), fragment)
    import groupcoop

    with pytest.raises(UserError, match="head.safetensors"):
        groupcoop.Classifier.from_run(copy)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "exp").exists()


@PROPERTY
@given(st.one_of(st.lists(st.text(max_size=4), max_size=4), st.text(max_size=4), st.integers(), st.none()))
def test_names_are_accepted_exactly_when_they_are_distinct_non_empty_strings(names):
    from groupcoop.methods.head import check_names

    good = isinstance(names, list) and all(isinstance(n, str) and n.strip() for n in names) \
        and len(set(names)) == len(names)
    count = len(names) if isinstance(names, list) else 2
    try:
        assert check_names(names, "class names", count, "head") == names and good
    except UserError as err:
        assert not good and "\n" not in str(err)


# --- 6. environment -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, fragment", [
    ("GROUPCOOP_MAX_IMAGE_PIXELS", "lots", "GROUPCOOP_MAX_IMAGE_PIXELS"),
    ("GROUPCOOP_MAX_IMAGE_PIXELS", "-1", "pixel count"),
    ("GROUPCOOP_DIST_TIMEOUT", "soon", "GROUPCOOP_DIST_TIMEOUT"),
    ("GROUPCOOP_DIST_TIMEOUT", "0", "seconds"),
    ("GROUPCOOP_DEBUG", "maybe", "GROUPCOOP_DEBUG"),
    ("GROUPCOOP_CACHE", "FILE", "not a folder"),
    ("GROUPCOOP_CACH", "/tmp", "GROUPCOOP_CACHE"),
])
def test_a_bad_environment_value_is_one_line_before_any_work(name, value, fragment, zeroshot_run, tmp_path, monkeypatch, cli):
    root, run = zeroshot_run
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv(name, str(tmp_path / "afile") if value == "FILE" else value)
    before = snapshot(tmp_path)
    for argv in (train_args(root, tmp_path / "new"), ["predict", run, "--images", root / "img", "--out",
                                                      tmp_path / "p.csv"], ["methods"]):
        assert_one_line_error(cli(*argv), name, fragment)
    assert snapshot(tmp_path) == before


def test_every_groupcoop_variable_the_project_reads_is_known():
    """A GROUPCOOP_* name used anywhere in the project but missing from the table would be refused
    as misspelt by every command."""
    from groupcoop.io.environment import VARIABLES

    project = Path(__file__).resolve().parents[1]
    used = {name for folder in ("src", "tests", "scripts", "benchmarks") for path in (project / folder).rglob("*.py")
            for name in re.findall(r"GROUPCOOP_[A-Z][A-Z_]*[A-Z]", path.read_text(encoding="utf-8"))}
    used -= {"GROUPCOOP_CACH"}  # the misspelling a test above sets on purpose
    assert used and used <= set(VARIABLES), sorted(used - set(VARIABLES))


def test_world_size_without_torchrun_is_one_line(zeroshot_run, tmp_path, monkeypatch, cli):
    root, _ = zeroshot_run
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    result = cli("extract", *csv_args(root), *TINY, "--cache-dir", tmp_path / "cache", "--quiet")
    assert_one_line_error(result, "WORLD_SIZE=2", "torchrun")
    assert not (tmp_path / "cache").exists()
    monkeypatch.setenv("WORLD_SIZE", "0")
    assert_one_line_error(cli("extract", *csv_args(root), *TINY, "--cache-dir", tmp_path / "cache"), "WORLD_SIZE")


@PROPERTY
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12))
def test_any_pixel_limit_text_parses_or_is_one_line(text):
    from groupcoop.io.environment import value

    try:
        limit = value("GROUPCOOP_MAX_IMAGE_PIXELS", {"GROUPCOOP_MAX_IMAGE_PIXELS": text})
    except UserError as err:
        assert "GROUPCOOP_MAX_IMAGE_PIXELS" in str(err)
    else:
        assert limit is None or (isinstance(limit, int) and limit > 0)


# --- 7. the Python API ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier(zeroshot_run):
    from groupcoop.runs.predict import Classifier

    return Classifier.from_run(zeroshot_run[1])


@pytest.mark.parametrize("call, fragment", [
    (lambda c: c.predict([]), "no images"),
    (lambda c: c.predict(torch.zeros(0, 3, 32, 32)), "batch"),
    (lambda c: c.predict(torch.zeros(2, 3, 16, 16)), "32"),
    (lambda c: c.predict([42]), "int"),
    (lambda c: c.predict_features(torch.zeros(2, 7)), "128"),
    (lambda c: c.predict_features(torch.zeros(128)), "shape"),
    (lambda c: c.predict_features(torch.full((2, 128), float("nan"))), "NaN"),
    (lambda c: c.predict_features(np.full((1, 128), np.inf)), "infinite"),
    (lambda c: c.predict_features([["a"] * 128]), "numbers"),
    (lambda c: c.predict_features(torch.zeros(0, 128)), "batch"),
])
def test_api_bad_input_is_a_user_error(call, fragment, classifier):
    with pytest.raises(UserError, match=fragment) as err:
        call(classifier)
    assert "\n" not in str(err.value)


def test_api_predict_features_still_predicts(classifier, zeroshot_run):
    pred = classifier.predict_features(torch.randn(3, 128))
    assert pred.classes.shape == (3,) and np.allclose(pred.probabilities.sum(1), 1, atol=1e-6)


# --- 8. presets ---------------------------------------------------------------------------------------------

def test_every_preset_loads_and_resolves_by_name_outside_a_checkout(tmp_path, monkeypatch, cli):
    from groupcoop.presets import available
    from groupcoop.sweeps.grid import load_grid

    presets = available()
    assert {"dev", "report", "report-all-methods", "waterbirds", "celeba", "training-dev"} <= set(presets)
    for name, path in presets.items():
        assert load_grid(path).datasets, name
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    result = cli("sweep", "report", "--dry-run")
    assert result.code == 0, result.err
    assert "todo  runs/synth-random_1000/groupcoop-tiny/groupcoop/gt/seed-0" in result.out
    listed = cli("sweep", "--list-presets")
    assert listed.code == 0 and all(name in listed.out for name in presets)
    assert_one_line_error(cli("sweep", "reprot", "--dry-run"), "reprot", "report", "--list-presets")
    assert_one_line_error(cli("sweep", "missing.yaml", "--dry-run"), "missing.yaml")
