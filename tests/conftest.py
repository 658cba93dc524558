"""Shared fixtures: one feature cache per test session, the synthetic Waterbirds task prepared
once with the bundled tiny CLIP, and a helper that runs the CLI in-process.

Extracting features for synth-waterbirds (11,788 images) is the one expensive step of the
suite; every test that needs them (in-process CLI runs, console-script runs, the demo) finds
them in the session cache that $GROUPCOOP_CACHE points to.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

TINY = "groupcoop-tiny"
SPLIT_KEYS = {"avg_acc", "worst_group_acc", "unbiased_acc", "groups"}
TOP_KEYS = {"method", "backbone", "dataset", "groups_source", "trainable_params", "total_params", "splits"}


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory):
    """$GROUPCOOP_CACHE -> a session temp folder (restored afterwards); torch on 2 threads."""
    cache = tmp_path_factory.mktemp("feature-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    patch = pytest.MonkeyPatch()
    patch.setenv("GROUPCOOP_CACHE", str(cache))
    yield cache
    patch.undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_backbone():
    from groupcoop.backbones.families import load_backbone

    return load_backbone(TINY)


@pytest.fixture(scope="session")
def waterbirds_prep(feature_cache):
    """synth-waterbirds with groupcoop-tiny features (extracted once, into the session cache)."""
    from groupcoop.data.world.datasets import make_task_dataset
    from groupcoop.runs.pipeline import prepare

    return prepare(make_task_dataset("synth-waterbirds"), TINY, progress=False)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `groupcoop ARGS...` in-process; returns exit code, stdout and stderr."""
    from groupcoop.cli.main import main

    def run(*argv) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse: --help, or a usage error
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def _check_split(m: dict, n_groups: int | None = None) -> None:
    assert SPLIT_KEYS <= set(m), f"missing split keys {SPLIT_KEYS - set(m)}"
    for key in ("avg_acc", "worst_group_acc", "unbiased_acc"):
        assert isinstance(m[key], float) and 0.0 <= m[key] <= 1.0, (key, m[key])
    if n_groups is not None:
        assert len(m["groups"]) == n_groups
    for i, g in enumerate(m["groups"]):
        assert set(g) >= {"group", "name", "n", "acc"}
        assert g["group"] == i and isinstance(g["name"], str) and isinstance(g["n"], int)
        assert g["acc"] is None or 0.0 <= g["acc"] <= 1.0
    assert m["worst_group_acc"] <= m["unbiased_acc"] + 1e-12
    assert m["worst_group_acc"] == min(g["acc"] for g in m["groups"] if g["acc"] is not None)


def _check_metrics(metrics: dict, n_groups: int | None = None) -> None:
    assert TOP_KEYS <= set(metrics), f"missing keys {TOP_KEYS - set(metrics)}"
    assert set(metrics["splits"]) == {"val", "test"}
    assert isinstance(metrics["trainable_params"], int) and isinstance(metrics["total_params"], int)
    assert metrics["total_params"] >= metrics["trainable_params"] >= 0
    for split in ("val", "test"):
        _check_split(metrics["splits"][split], n_groups)


@pytest.fixture(scope="session")
def check_metrics():
    """Asserts the metrics.json contract (architecture.md) on a parsed dict."""
    return _check_metrics
