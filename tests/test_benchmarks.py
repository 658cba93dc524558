"""Smoke tests of the benchmark scripts at tiny sizes: they run end to end and print their tables
(the numbers are not checked: speed claims live in benchmarks/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def script(name: str, *args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


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
