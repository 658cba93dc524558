"""Errors at the end of a command never cost the work, and never spill a traceback: a full disk,
a closed or full stdout, a tracker that fails once the run is trained, Ctrl-C in a `--jobs 2`
sweep, library warnings; and the Python API checks its arguments as the CLI checks its flags.

Everything runs on the 12-image CSV dataset of test_hostile.py and its zero-shot run.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from groupcoop.errors import UserError
from groupcoop.io.folders import groupcoop_kind

from test_cli import assert_one_line_error
from test_hostile import ENV, PYTHON, snapshot, train_args, zeroshot_run  # noqa: F401 (a fixture)


def _train(zeroshot_run, out: Path, *extra) -> list:
    root, run = zeroshot_run
    return train_args(root, out, "--workers", "0", "--cache-dir", run.parent / "cache", *extra)


# --- a full disk: one line, nothing half-written --------------------------------------------------------

def test_a_full_disk_while_writing_the_run_is_one_line_and_leaves_nothing(zeroshot_run, tmp_path, cli, monkeypatch):
    from groupcoop.methods.head import Head

    def full_disk(self, path):
        Path(path).write_bytes(b"\0" * 100)  # part of the file made it, then the disk was full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(Head, "save", full_disk)
    before = snapshot(tmp_path)
    line = assert_one_line_error(cli(*_train(zeroshot_run, tmp_path / "new" / "run")), "no space left", "head.safetensors")
    assert "nothing half-written" in line
    assert snapshot(tmp_path) == before, "a failed write left files or folders behind"


# --- a closed or full stdout --------------------------------------------------------------------------

@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_a_closed_or_full_stdout_is_one_line(stdout):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([PYTHON, "-m", "groupcoop", "methods", "-v"], stdout=full, stderr=subprocess.PIPE,
                              preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None,
                              text=True, env=ENV, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("groupcoop: error: "), proc.stderr
    assert ("no space left" if stdout == "full" else "stdout is closed") in lines[0]


# --- a tracker that fails after training ----------------------------------------------------------------

class _Broken:
    """wandb's run and tensorboard's SummaryWriter, failing the way a backend does: at write time."""

    summary = {}

    def __init__(self, *args, **kwargs):
        pass

    def log(self, *args, **kwargs):
        raise ConnectionError("wandb.ai unreachable")

    def finish(self):
        raise ConnectionError("wandb.ai unreachable")

    def add_scalar(self, *args):
        raise OSError(errno.EIO, "event file write failed")

    def close(self):
        pass


@pytest.mark.parametrize("tracker, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_tracker_that_fails_keeps_the_written_run(tracker, module, zeroshot_run, tmp_path, cli, monkeypatch):
    fake = types.ModuleType(module)
    fake.init, fake.SummaryWriter = _Broken, _Broken
    monkeypatch.setitem(sys.modules, module, fake)
    out = tmp_path / "run"
    line = assert_one_line_error(cli(*_train(zeroshot_run, out, "--log", tracker)), f"--log {tracker} failed", str(out))
    assert "unreachable" in line or "event file" in line
    assert (out / "metrics.json").is_file() and (out / "head.safetensors").is_file()
    assert groupcoop_kind(out) == "run", "the run folder holds files its manifest does not list"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".groupcoop.json"]


# --- Ctrl-C in a sweep with worker processes -----------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and signals")
def test_ctrl_c_in_a_parallel_sweep_is_one_line_without_a_worker_traceback(zeroshot_run, tmp_path):
    root, run = zeroshot_run
    options = {"csv_path": "meta.csv", "path_col": "path", "label_col": "label", "attr_cols": ["place"]}
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "ctrl-c", "datasets": [{"name": "csv", "root": str(root), "options": options}],
                                    "methods": ["zeroshot"], "seeds": "0..399"}))
    command = [PYTHON, "-m", "groupcoop", "sweep", grid, "--jobs", "2", "--out", tmp_path / "sweep",
               "--cache-dir", run.parent / "cache"]
    # its own process group, as a shell gives a pipeline: Ctrl-C is SIGINT to every process of the group
    # SIGINT at its default, as in a terminal: a test run started in the background (`make test &`) inherits it ignored
    proc = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stderr.readline()
        assert first.startswith("sweep: 400 runs"), first
        seen = [first]
        while not seen[-1].lstrip().startswith("[1/"):  # the workers are running runs (their features are ready)
            seen.append(proc.stderr.readline())
            assert seen[-1], "".join(seen)
        os.killpg(proc.pid, signal.SIGINT)
        err = "".join(seen) + proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130, (proc.returncode, err)
    last = [line for line in err.splitlines() if line.startswith("groupcoop: ")]
    assert len(last) == 1 and "runs are finished and kept; run the same command to resume" in last[0], err


# --- library warnings stay off stderr -------------------------------------------------------------------

NOISY = """
import importlib, logging, sys, warnings
main = importlib.import_module("groupcoop.cli.main")

def noisy(run):
    def command(args):
        warnings.warn("a library's FutureWarning", FutureWarning)  # as torch, sklearn, transformers do
        logging.getLogger("open_clip").warning("a library's log warning")  # as open_clip, timm, the hub do
        run(args)
    return command

main.COMMANDS = tuple(c._replace(run=noisy(c.run)) for c in main.COMMANDS)
sys.exit(main.main(sys.argv[1:]))
"""


def test_library_warnings_stay_off_stderr():
    quiet = {k: v for k, v in ENV.items() if k not in ("PYTHONWARNINGS", "GROUPCOOP_DEBUG")}
    proc = subprocess.run([PYTHON, "-c", NOISY, "methods"], capture_output=True, text=True, timeout=60, env=quiet)
    assert proc.returncode == 0 and proc.stdout, proc.stderr
    assert proc.stderr == "", proc.stderr
    shown = subprocess.run([PYTHON, "-c", NOISY, "methods"], capture_output=True, text=True, timeout=60,
                           env={**quiet, "GROUPCOOP_DEBUG": "1"})
    assert "FutureWarning" in shown.stderr and "log warning" in shown.stderr, shown.stderr


# --- the Python API checks its arguments first --------------------------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for name in ("prepare", "check_run"):
        monkeypatch.setattr(f"groupcoop.api.{name}", refuse)
    monkeypatch.setattr("groupcoop.data.registry.load_dataset", refuse)


def _file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file"


@pytest.mark.parametrize("call, fragment", [
    (lambda g, t: g.fit("synth-waterbirds", method="zeroshot", config="missing.yaml"), "config file not found"),
    (lambda g, t: g.fit("synth-waterbirds", method="zeroshot", config=3), "config=3"),
    (lambda g, t: g.fit("synth-waterbirds", method="zeroshot", cache_dir=_file(t)), "is a file, not a folder"),
    (lambda g, t: g.fit("synth-waterbirds", method="zeroshot", workers=-1), "workers=-1"),
    (lambda g, t: g.fit("synth-waterbirds", method="zeroshot", workers="2"), "workers='2'"),
    (lambda g, t: g.fit("synth-waterbirds", method="zeroshot", progress="yes"), "progress='yes'"),
    (lambda g, t: g.fit_many("synth-waterbirds", ["zeroshot"], max_prompts=0), "max_prompts=0"),
    (lambda g, t: g.fit_many("synth-waterbirds", ["zeroshot"], cache_dir=_file(t)), "is a file, not a folder"),
    (lambda g, t: g.discover("synth-waterbirds", cache_dir=_file(t)), "is a file, not a folder"),
    (lambda g, t: g.discover("synth-waterbirds", workers=-1), "workers=-1"),
    (lambda g, t: g.discover("synth-waterbirds", seed="0"), "seed='0'"),
    (lambda g, t: g.load_run(3), "folder=3"),
])
def test_api_arguments_are_checked_before_any_work(call, fragment, tmp_path, no_work):
    import groupcoop

    with pytest.raises(UserError, match=fragment) as err:
        call(groupcoop, tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("images, fragment", [
    (torch.zeros(2, 3, 32, 32, dtype=torch.float64), "float64"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "uint8"),
    ([Image.new("RGB", (0, 0))], "0x0 pixels"),
])
def test_api_predict_refuses_raw_pixels_and_empty_images(images, fragment, zeroshot_run):
    from groupcoop.runs.predict import Classifier

    with pytest.raises(UserError, match=fragment):
        Classifier.from_run(zeroshot_run[1]).predict(images)
