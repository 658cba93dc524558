"""The same seed gives the same metrics.json, for every method, as pinned in
tests/fixtures/pinned_metrics.json (see tests/pin_metrics.py for what is pinned and how to
re-pin after an intended change of the synthetic world or the bundled model)."""

from __future__ import annotations

import os

import pytest

import pin_metrics


def _check(prep, task: str) -> None:
    pinned = pin_metrics.load_fixture()
    runs = [r for r in pin_metrics.RUNS if r["task"] == task]
    assert runs and all(pin_metrics.run_id(r) in pinned for r in runs), "re-pin: python tests/pin_metrics.py --write"
    actual = pin_metrics.metrics_for(prep, runs)
    problems = [d for key, metrics in actual.items() for d in pin_metrics.differences(pinned[key], metrics, key)]
    assert not problems, "metrics.json changed:\n" + "\n".join(problems[:40])


def test_synth_waterbirds_metrics_are_pinned(waterbirds_prep):
    _check(waterbirds_prep, "synth-waterbirds")


@pytest.mark.skipif(not os.environ.get("GROUPCOOP_PIN_ALL"), reason="set GROUPCOOP_PIN_ALL=1: extracts two more tasks")
@pytest.mark.parametrize("task", [t for t in pin_metrics.TASKS if t != "synth-waterbirds"])
def test_other_tasks_metrics_are_pinned(task):
    from groupcoop.data.registry import load_dataset
    from groupcoop.runs.pipeline import prepare

    _check(prepare(load_dataset(task), "groupcoop-tiny", progress=False), task)


def test_a_changed_number_is_caught():
    """The comparison is not vacuous: one prediction's worth of accuracy is a difference."""
    pinned = {"splits": {"test": {"avg_acc": 0.5, "groups": [{"n": 10, "acc": 0.5}]}}, "method": "coop"}
    moved = {"splits": {"test": {"avg_acc": 0.5 + 1 / 5794, "groups": [{"n": 10, "acc": 0.5}]}}, "method": "coop"}
    assert pin_metrics.differences(pinned, moved) == [f".splits.test.avg_acc: {0.5 + 1 / 5794!r}, pinned 0.5"]
    assert pin_metrics.differences(pinned, pinned) == []
    assert pin_metrics.differences({"a": 1}, {"a": 1, "b": 2}) == [".b: unexpected"]
