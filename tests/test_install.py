"""Installable in a user's environment: version ranges (no exact torch pin), the local pair in
constraints.txt for `make`, a LICENSE, and a wheel that carries the presets and the tiny model."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_dependencies_are_ranges_and_make_installs_the_local_torch_pair():
    deps = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower(): d for d in _project()["dependencies"]}
    assert not any("==" in spec for spec in deps.values()), deps
    assert deps["torch"].startswith("torch>=") and deps["torchvision"].startswith("torchvision>=")
    constraints = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    assert constraints == ["torch==2.14.1", "torchvision==0.29.1"]
    assert "pip install --quiet -c constraints.txt -e '.[dev]'" in (REPO / "Makefile").read_text()


def test_license_file_matches_the_declared_licence():
    assert _project()["license"] == "MIT" and "LICENSE" in _project()["license-files"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.slow  # builds the wheel with setuptools: ~15-30 s on a busy 2-core CPU
def test_the_wheel_holds_the_presets_the_tiny_model_and_the_license(tmp_path):
    source = tmp_path / "src-copy"  # build from a copy: the checkout stays free of build/ and egg-info
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist")], cwd=source, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("groupcoop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src/groupcoop/presets").rglob("*.yaml")}
    assert presets and presets <= names, presets - names
    assert {"groupcoop/assets/groupcoop-tiny.safetensors", "groupcoop/assets/groupcoop-tiny.json",
            "groupcoop/presets/__init__.py", "groupcoop/presets/paper/README.md"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(n for n in names if "dist-info" in n)
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: torch")]
    assert requires and all("==" not in line for line in requires), requires
    # installed from the wheel alone, a preset resolves by name in a folder that is no checkout
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    code = "import groupcoop, sys; from groupcoop.cli.main import main; print(groupcoop.__file__); sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "sweep", "report", "--dry-run"], capture_output=True, text=True,
                          cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(site)) and "todo  runs/synth-random_1000/" in proc.stdout
