"""Smoke tests of the benchmark scripts at tiny sizes: they run end to end and print their tables
(the numbers are not checked: speed claims live in benchmarks/README.md)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def script(name: str, *args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """The script run as `python benchmarks/NAME ARGS`: in this process (torch and open_clip, some
    seconds of imports, are loaded already) unless it needs an environment of its own."""
    if env is None:
        return in_process(name, *args)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def in_process(name: str, *args: str) -> subprocess.CompletedProcess:
    import torch

    argv, threads, out, err = sys.argv, torch.get_num_threads(), io.StringIO(), io.StringIO()
    sys.argv = [str(BENCHMARKS / name), *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)  # the scripts set their own
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


@pytest.mark.slow
def test_fused_benchmark_prints_its_table():
    done = script("fused.py", "--backbones", "groupcoop-tiny", "--scale", "0.05", "--seeds", "1", "--threads", "1")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| groupcoop-tiny"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["3", "8"]  # 3 runs (one seed of each method), 2 + 4 + 2 prompts
    assert cells[6].endswith(")") and "x (" in cells[6]  # the ratio
    assert cells[7] == "0.0e+00 / 0.0e+00"  # fused and one by one classify every test image alike


def test_gpu_benchmark_without_a_gpu_is_one_line_and_status_2(tmp_path):
    done = script("gpu.py", "--json", str(tmp_path / "gpu.json"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in done.stderr, done.stderr
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.slow
def test_gpu_benchmark_sections_run_on_the_cpu(tmp_path):
    """`--device cpu` runs the GPU check's sections at tiny sizes: each ends ok, and the JSON holds them."""
    out = tmp_path / "gpu.json"
    done = script("gpu.py", "--device", "cpu", "--quick", "--archs", "groupcoop-tiny", "--images", "12",
                  "--prompts", "4,8", "--sweep-scale", "0.03", "--sections", "extraction,agreement,train_step,sweep",
                  "--json", str(out), "--tmp", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {name: s["status"] for name, s in data["sections"].items()} == {
        "extraction": "ok", "agreement": "ok", "train_step": "ok", "sweep": "ok"}
    assert [r["prompts"] for r in data["sections"]["train_step"]["rows"]] == [4, 8]
    sweep = data["sections"]["sweep"]["rows"][0]
    assert sweep["max_diff_test_wga"] == 0.0 and sweep["model_fused_s"] < sweep["model_one_by_one_s"]
    again = script("gpu.py", "--device", "cpu", "--json", str(out))  # an existing file is never replaced
    assert again.returncode == 2 and "exists" in again.stderr


# --- every other script, at tiny sizes (the bundled tiny model; a few images) ------------------------

TINY = ("--backbone", "groupcoop-tiny")


def ran(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done.stdout


def has_row(out: str, first_cell: str) -> bool:
    """Whether a markdown table in `out` has a row whose first cell starts with `first_cell`."""
    return any(line.startswith(f"| {first_cell}") for line in out.splitlines())


def test_speed_benchmark_runs_every_section():
    out = ran(script("speed.py", *TINY, "--images", "8", "--batch", "4", "--repeats", "1", "--min-time", "0",
                     "--extract-repeats", "1", "--many-prompts", "4", "--n-ctx", "4", "--threads", "1",
                     "--workers", "0"))
    for section in ("## 1.", "## 2.", "## 3. Feature extraction", "## Acceptance targets"):
        assert section in out
    diff = out.split("max abs feature diff = ")[1].split()[0]
    assert float(diff) < 1e-4  # extract_features gives the bare encoder's (normalised) features


@pytest.mark.slow
def test_extract_benchmark_runs_on_the_cpu_and_times_torchrun():
    out = ran(script("extract.py", *TINY, "--images", "12", "--batch", "4", "--shard-size", "4", "--procs", "1",
                     "--repeats", "1", "--workers", "0"))
    assert has_row(out, "extract_features, cpu fp32") and has_row(out, "bare encoder, cpu fp32")
    assert has_row(out, "torchrun, 1 processes")


def test_predict_benchmark_compares_predict_with_extraction():
    out = ran(script("predict.py", *TINY, "--images", "24", "--batch", "8", "--repeats", "1", "--workers", "0"))
    assert has_row(out, "predict_files") and "predict / extraction:" in out


def test_memory_benchmark_refuses_too_few_rows():
    done = script("memory.py", "--rows", "1000", "--held-out", "500")
    assert done.returncode == 2 and "--held-out" in done.stderr


def test_train_step_benchmark_times_both_text_paths():
    out = ran(script("train_step.py", *TINY, "--prompts", "4", "--rounds", "1", "--steps", "1", "--threads", "1",
                     "--max-others", "1"))
    assert "open_clip blocks (before)" in out and "fused blocks (now)" in out
