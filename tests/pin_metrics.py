"""Pinned metrics.json of every method on the built-in synthetic tasks, for fixed seeds.

The regression net under refactorings: the same seed must give the same metrics.json. Each
entry of `RUNS` is one run (task, method, group source, seed, a short schedule so that the
whole pin stays cheap); `tests/fixtures/pinned_metrics.json` holds their metrics.json values.
`tests/test_pinned_metrics.py` checks synth-waterbirds in every test session (its features
come from the session cache); the other tasks need their own feature extraction (about two
minutes on a 2-core CPU), so they are checked with `GROUPCOOP_PIN_ALL=1` or by this script.

When the synthetic world or the bundled model changes on purpose, re-pin on the new world:

    PYTHONPATH=src python tests/pin_metrics.py --write          # all tasks, a few minutes
    PYTHONPATH=src python tests/pin_metrics.py --check          # compare without writing

Only `provenance` (versions, git commit, host, start and wall time: `VOLATILE`) is left out of
the comparison; metrics.json holds no other timings or paths. Numbers are
compared to within `TOLERANCE` (float rounding of another CPU or BLAS), which is far below
one prediction's share of any split (1/5794 on synth-waterbirds' test split).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "pinned_metrics.json"
TASKS = ("synth-waterbirds", "synth-multiceleba", "synth-threebias")
TOLERANCE = 2e-5  # absolute and relative
VOLATILE = ("provenance",)  # metrics.json keys that differ between two runs of the same settings
THREADS = 2  # the test session's torch threads (conftest.py): reductions may depend on them

LOOP = {"epochs": 2, "batch_size": 512}
SHORT = {  # per method: the shortest schedule that still exercises what defines it
    "zeroshot": {}, "zeroshot_groups": {},
    "coop": LOOP, "coop_balanced": LOOP, "groupcoop": LOOP, "group_linear": LOOP,
    "coop_groupdro": {**LOOP, "eta": 0.1},
    "jtt": {**LOOP, "first_epochs": 1, "upweight": 5},
    "linear_probe": {"c_values": [0.1, 1.0]}, "linear_probe_balanced": {"c_values": [0.1, 1.0]},
    "dfr": {"tune_repeats": 1, "repeats": 3},
}
METHOD_ORDER = ("zeroshot", "coop", "groupcoop", "zeroshot_groups", "linear_probe", "linear_probe_balanced",
                "group_linear", "dfr", "coop_balanced", "coop_groupdro", "jtt")


def _runs() -> list[dict]:
    runs = [{"task": t, "method": m, "groups": None, "seed": 0} for t in TASKS for m in METHOD_ORDER]
    runs += [{"task": "synth-waterbirds", "method": "groupcoop", "groups": g, "seed": 0}
             for g in ("pseudo", "zeroshot", "kmeans")]
    runs += [{"task": "synth-waterbirds", "method": m, "groups": None, "seed": 1} for m in ("coop", "groupcoop")]
    runs += [{"task": "synth-multiceleba", "method": "groupcoop", "groups": "pseudo", "seed": 0}]
    return runs


RUNS = _runs()


def run_id(run: dict) -> str:
    return f"{run['task']}/{run['method']}/{run['groups'] or 'auto'}/seed-{run['seed']}"


def settings_values(run: dict) -> dict:
    values = {"dataset": run["task"], "backbone": "groupcoop-tiny", "method": run["method"], "seed": run["seed"],
              "hyperparameters": SHORT[run["method"]]}
    if run["groups"]:
        values["groups"] = run["groups"]
    return values


def metrics_for(prep, runs: list[dict]) -> dict[str, dict]:
    """metrics.json of each run on one task's prepared features (the JSON round trip a run folder makes)."""
    from groupcoop.runs.pipeline import check_run, run_method
    from groupcoop.runs.settings import make_settings

    out = {}
    for run in runs:
        _, settings, _ = check_run(make_settings(settings_values(run), "pin"), prep.dataset, prep.backbone)
        metrics = run_method(prep, settings, log=lambda s: None).metrics
        out[run_id(run)] = comparable(json.loads(json.dumps(metrics)))
    return out


def comparable(metrics: dict) -> dict:
    """metrics.json without its `VOLATILE` keys (read from a run folder, or made in memory)."""
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


def differences(expected, actual, where: str = "") -> list[str]:
    """Where two metrics.json values differ (numbers to within TOLERANCE), as readable lines."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{where}.{k}: missing" for k in expected if k not in actual]
        out += [f"{where}.{k}: unexpected" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += differences(expected[k], actual[k], f"{where}.{k}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, pinned {len(expected)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    numbers = (int, float)
    if (isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool)
            and not isinstance(actual, bool)):
        if math.isclose(expected, actual, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            return []
    elif expected == actual:
        return []
    return [f"{where}: {actual!r}, pinned {expected!r}"]


def load_fixture() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def compute(tasks, cache_dir=None) -> dict[str, dict]:
    import torch

    from groupcoop.data.registry import load_dataset
    from groupcoop.runs.pipeline import prepare

    torch.set_num_threads(THREADS)
    out = {}
    for task in tasks:
        prep = prepare(load_dataset(task), "groupcoop-tiny", cache_dir=cache_dir, progress=False)
        out.update(metrics_for(prep, [r for r in RUNS if r["task"] == task]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="compute and write the fixture")
    action.add_argument("--check", action="store_true", help="compute and compare with the fixture")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated (default {','.join(TASKS)})")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default $GROUPCOOP_CACHE or ~/.cache)")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    actual = compute(tasks, args.cache_dir)
    if args.write:
        pinned = load_fixture() if FIXTURE.is_file() else {}
        pinned = {k: v for k, v in pinned.items() if k.split("/")[0] not in tasks}
        pinned.update(actual)
        ordered = {run_id(r): pinned[run_id(r)] for r in RUNS if run_id(r) in pinned}
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(ordered, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {len(actual)} runs of {', '.join(tasks)} to {FIXTURE}")
        return 0
    pinned = load_fixture()
    problems = [d for key, metrics in actual.items()
                for d in (differences(pinned[key], metrics, key) if key in pinned else [f"{key}: not pinned"])]
    print("\n".join(problems) if problems else f"{len(actual)} runs match {FIXTURE}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
