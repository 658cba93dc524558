"""`groupcoop sweep`: grids of ordinary runs, resumable, parallel, shardable, summarised.

A grid names datasets, backbones, methods (with hyper-parameter variants), group sources and
seeds; every combination is one run folder under OUT/runs/. Finished runs are skipped on a
re-run, so a killed sweep resumes. The learned-prompt runs of one dataset and backbone train
together in a fused pass (`fusion.py`: one text-encoder call per step for all their prompts, each
run's results as alone; `--no-fuse` trains each alone). `--jobs N` runs N worker processes on the
shared feature cache (features are extracted once per dataset and backbone, before the runs; each
worker fuses its share of the runs); `--shard I/N`
runs one of N disjoint slices (whole datasets go to one slice, so each machine extracts only
its own). The summary (`runs.csv`, `table.md`, `report.html`) is rebuilt from whatever run
folders exist, so it can be made again after all shards finish.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..errors import UserError
from ..metrics import HEADLINE
from ..reports.report import md_cell, method_label
from ..schema import Frozen, Int, build
from ..runs.settings import check_hyperparameter_keys, make_settings, read_yaml_mapping


# --- the grid file ----------------------------------------------------------------------------

class DatasetEntry(Frozen):
    name: Annotated[str, Field(strict=True, min_length=1)]
    root: str | None = None
    options: dict[str, Any] = {}
    label: str | None = None  # how the dataset is named in tables (default: name)


class BackboneEntry(Frozen):
    name: Annotated[str, Field(strict=True, min_length=1)]
    pretrained: str | None = None


class GroupsEntry(Frozen):
    source: str
    label: str | None = None
    bias_prompts: Any = None
    clusters: Any = None
    variant: str | None = None
    discover_top: Any = None
    discover_score: Any = None
    vocabulary: Any = None

    @property
    def default_label(self) -> str:
        """How tables name the entry without a label: 'pseudo', 'pseudo:recall', 'pseudo, auto'."""
        return (self.source + (f":{self.variant}" if self.variant else "")
                + (", auto" if self.bias_prompts == "auto" else ""))


def _group_entries(value):
    return [{"source": v} if isinstance(v, str) else v for v in (value if isinstance(value, list) else [value])]


class MethodEntry(Frozen):
    method: Annotated[str, Field(strict=True, min_length=1)]
    label: str | None = None  # default: the method name
    hyperparameters: dict[str, Any] = {}
    groups: Annotated[list[GroupsEntry], Field(min_length=1)] | None = None  # replaces the grid's groups for this entry
    selection: Any = None  # replaces the grid's selection rule for this entry
    hide_bias_labels: Any = None  # replaces the grid's hidden splits for this entry ([] hides none)

    @field_validator("groups", mode="before")
    @classmethod
    def _groups(cls, value):
        return None if value is None else _group_entries(value)


def _expand_names(value):
    """'synth-random:0..29' -> synth-random:0 ... synth-random:29; strings -> {name: ...}."""
    out = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            m = re.fullmatch(r"(.*:)(\d+)\.\.(\d+)", item.strip())
            if m:
                lo, hi = int(m.group(2)), int(m.group(3))
                if hi < lo or hi - lo > 100_000:
                    raise ValueError(f"range {item!r} is empty or too long")
                out += [{"name": f"{m.group(1)}{k}"} for k in range(lo, hi + 1)]
            else:
                out.append({"name": item})
        else:
            out.append(item)
    return out


MAX_RUNS = 10_000  # runs a grid may make unless --max-runs allows more
_RANGE = re.compile(r"(.*:)?(\d+)\.\.(\d+)")


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def _range_length(text: str, prefixed: bool) -> int | None:
    """How many items 'lo..hi' (seeds) or 'name:lo..hi' (datasets) names, without listing them."""
    m = _RANGE.fullmatch(text.strip())
    if not m or bool(m.group(1)) != prefixed:
        return None
    return max(0, int(m.group(3)) - int(m.group(2)) + 1)


def count_runs(values: dict) -> int:
    """How many runs a grid's raw values make, counted from the axis lengths (ranges are never
    listed), so that a grid of 10^11 runs is refused at once. Methods whose training ignores
    groups count once per group source, as `expand` runs them."""
    def items(value, prefixed: bool) -> int:
        if isinstance(value, str) and not prefixed:  # seeds: '0..9' or '0,1,2'
            n = _range_length(value, False)
            return n if n is not None else len(value.split(","))
        return sum((_range_length(v, True) or 1) if isinstance(v, str) else 1 for v in _as_list(value))

    grid_groups = max(1, len(_as_list(values.get("groups"))))
    per_method = 0
    for m in _as_list(values.get("methods")):
        name = m if isinstance(m, str) else m.get("method") if isinstance(m, dict) else None
        own = _as_list(m.get("groups")) if isinstance(m, dict) else []
        try:
            trains_on_groups = uses_training_groups(name)
        except (UserError, TypeError):  # an unknown method: refused by name later
            trains_on_groups = False
        per_method += len(own) or (grid_groups if trains_on_groups else 1)
    seeds = values.get("seeds", [0])
    return (items(values.get("datasets"), True) * max(1, len(_as_list(values.get("backbones")))) * per_method
            * (items(seeds, False) if isinstance(seeds, str) else max(1, len(_as_list(seeds)))))


class Grid(Frozen):
    """A sweep: every combination of these axes is one run.

    A grid of more than MAX_RUNS runs is refused before it is expanded (validation context
    `max_runs` raises the cap), and every key of `hyperparameters` must belong to one of its methods.
    """

    name: str = "sweep"
    datasets: Annotated[list[DatasetEntry], Field(min_length=1)]
    backbones: Annotated[list[BackboneEntry], Field(min_length=1)] = [BackboneEntry(name="groupcoop-tiny")]
    methods: Annotated[list[MethodEntry], Field(min_length=1)]
    groups: Annotated[list[GroupsEntry], Field(min_length=1)] = [GroupsEntry(source="auto")]
    seeds: Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=1)] = [0]
    hyperparameters: dict[str, Any] = {}  # for every method that has the key
    selection: Any = None  # model-selection rule of every run (default: the settings' default, auto)
    hide_bias_labels: Any = None  # splits whose bias labels every run drops (train, val)
    device: str = "cpu"  # torch device of every run (features are extracted there too)
    baseline_methods: list[str] = ["coop", "zeroshot"]  # gains in the suite aggregate are measured against these
    focus: str | None = None  # a method label ("groupcoop [gt]"): the suite summary adds its gain over every other method

    @model_validator(mode="before")
    @classmethod
    def _size_cap(cls, values, info: ValidationInfo):
        cap = (info.context or {}).get("max_runs", MAX_RUNS)
        n = count_runs(values) if isinstance(values, dict) else 0
        if n > cap:
            raise UserError(f"the grid makes {n:,} runs, more than the cap of {cap:,}; check its ranges and axes "
                            f"(e.g. `seeds: 0..4` is 5 seeds), or pass --max-runs {n} to run them all")
        return values

    @model_validator(mode="after")
    def _known_hyperparameters(self):
        check_hyperparameter_keys(self.hyperparameters, [m.method for m in self.methods],
                                  f"grid hyperparameters (for every method that has the key: "
                                  f"{', '.join(dict.fromkeys(m.method for m in self.methods))})")
        return self

    @field_validator("datasets", mode="before")
    @classmethod
    def _datasets(cls, value):
        return _expand_names(value)

    @field_validator("backbones", mode="before")
    @classmethod
    def _backbones(cls, value):
        return [{"name": v} if isinstance(v, str) else v for v in (value if isinstance(value, list) else [value])]

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value):
        return [{"method": v} if isinstance(v, str) else v for v in (value if isinstance(value, list) else [value])]

    @field_validator("groups", mode="before")
    @classmethod
    def _groups(cls, value):
        return _group_entries(value)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value):
        if isinstance(value, str):
            m = re.fullmatch(r"(\d+)\.\.(\d+)", value.strip())
            if m:
                return list(range(int(m.group(1)), int(m.group(2)) + 1))
            return [int(v) if v.strip().isdigit() else v for v in value.split(",")]
        return value


def load_grid(path: str | Path | None, overrides: dict | None = None, hyperparameters: dict | None = None,
              max_runs: int = MAX_RUNS) -> Grid:
    """A grid from a YAML file (or none), with flag values replacing whole axes and `hyperparameters`
    (`--set`) added to the grid's; at most `max_runs` runs."""
    values = read_yaml_mapping(path, "grid file") if path else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if not values.get("datasets") or not values.get("methods"):
        raise UserError("the grid is empty: give datasets and methods (in the grid file or with --datasets/--methods)")
    grid = build(Grid, values, f"grid {path}" if path else "grid", context={"max_runs": max_runs})
    if hyperparameters:
        methods = [m.method for m in grid.methods]
        check_hyperparameter_keys(hyperparameters, methods, f"sweep --set (for every method that has the key: "
                                  f"{', '.join(dict.fromkeys(methods))})", flag="--set")
        grid = grid.model_copy(update={"hyperparameters": {**grid.hyperparameters, **hyperparameters}})
    return grid


# --- runs ---------------------------------------------------------------------------------------

SLUG_MAX = 64  # characters of one run-folder name part


def _slug(text: str) -> str:
    """A label as one safe folder name: ASCII letters, digits and `._=-` only (anything else, `/`,
    NUL, non-ASCII, becomes `_`), never empty, never starting or ending with `.` (so never `.`,
    `..` or hidden) and at most SLUG_MAX characters (a long label keeps a hash of the whole)."""
    import hashlib

    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_.") or "x"
    if len(slug) > SLUG_MAX:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        slug = slug[:SLUG_MAX - 11].rstrip("_.") + "-" + digest
    return slug


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its keys (for tables) and its settings."""

    dataset: str  # label
    backbone: str
    method: str  # label
    groups: str  # label
    seed: int
    settings: dict = field(hash=False, compare=False)

    @property
    def folder(self) -> Path:
        return Path("runs", _slug(self.dataset), _slug(self.backbone), _slug(self.method), _slug(self.groups),
                    f"seed-{self.seed}")

    @property
    def data_key(self) -> tuple:
        s = self.settings
        return (s["dataset"], s.get("root"), repr(sorted(s.get("dataset_options", {}).items())), s["backbone"],
                s.get("pretrained"))

    def keys(self) -> dict:
        return {"dataset": self.dataset, "backbone": self.backbone, "method": self.method, "groups": self.groups,
                "seed": self.seed}


def uses_training_groups(method: str) -> bool:
    """Whether a method's training depends on the group source (else one group source is enough)."""
    from ..methods import get_method

    return get_method(method).needs_groups == "train"


def expand(grid: Grid, roots: dict[str, str] | None = None) -> list[RunSpec]:
    """Every run of the grid, validated (settings and names) before anything runs."""
    from ..data.registry import loader_spec

    roots = roots or {}
    specs, seen = [], set()
    for d in grid.datasets:
        loader_spec(d.name)  # an unknown name is refused here, before anything runs
        root = roots.get(d.label or d.name, roots.get(d.name, d.root))
        root = os.path.expandvars(root) if root else None
        for b in grid.backbones:
            backbone_label = b.name if b.pretrained is None else f"{b.name}@{b.pretrained}"
            for m in grid.methods:
                hp = {**{k: v for k, v in grid.hyperparameters.items() if _has_param(m.method, k)}, **m.hyperparameters}
                sources = m.groups or grid.groups
                if not uses_training_groups(m.method) and not m.groups:  # its groups only select (or nothing)
                    sources = [GroupsEntry(source="auto", label="-")]
                label_free = {k: v for k, v in (("selection", grid.selection), ("hide_bias_labels", grid.hide_bias_labels),
                                                ("selection", m.selection), ("hide_bias_labels", m.hide_bias_labels))
                              if v is not None}
                for g in sources:
                    group_values = {k: v for k, v in g.model_dump().items() if k != "label" and v is not None}
                    if group_values.get("source") == "auto":
                        group_values.pop("source")
                    glabel = g.label or g.default_label
                    for seed in grid.seeds:
                        values = {"dataset": d.name, "root": root, "dataset_options": d.options, "backbone": b.name,
                                  "pretrained": b.pretrained, "method": m.method, "groups": group_values, "seed": seed,
                                  "hyperparameters": hp, "device": grid.device, **label_free}
                        settings = make_settings(values, f"grid run {d.name} / {m.method}")
                        spec = RunSpec(d.label or d.name, backbone_label, m.label or m.method, glabel, seed,
                                       settings.dump())
                        if spec.folder in seen:
                            raise UserError(f"two grid entries make the same run folder {spec.folder}; give the "
                                            "method or groups entries distinct labels")
                        seen.add(spec.folder)
                        specs.append(spec)
    return specs


def _has_param(method: str, key: str) -> bool:
    from ..methods import get_method

    return key in get_method(method).schema.model_fields


def shard(specs: list[RunSpec], index: int, count: int) -> list[RunSpec]:
    """The index-th of `count` disjoint slices; whole (dataset, backbone) groups, balanced by run count."""
    groups: dict[tuple, list[RunSpec]] = {}
    for s in specs:
        groups.setdefault(s.data_key, []).append(s)
    load = [0] * count
    owner = {}
    for key in sorted(groups, key=lambda k: (-len(groups[k]), k)):
        j = min(range(count), key=lambda i: (load[i], i))
        owner[key] = j
        load[j] += len(groups[key])
    return [s for s in specs if owner[s.data_key] == index]


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or int(m.group(2)) < 1 or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UserError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4 (a Slurm array's task id / count)")
    return int(m.group(1)), int(m.group(2))


# --- running ----------------------------------------------------------------------------------------

_PREPARED: dict[tuple, Any] = {}


def _prepared(spec: RunSpec, cache_dir, workers):
    """Features for the run's dataset and backbone, kept in this process for the next run of the same data
    (with every bias label: each run's `check_run` and `run_method` drop the ones it hides)."""
    from ..runs.pipeline import check_run, prepare

    if spec.data_key not in _PREPARED:
        _PREPARED.clear()
        dataset, _, backbone = check_run(make_settings({**spec.settings, "hide_bias_labels": [], "selection": "auto"}))
        _PREPARED[spec.data_key] = prepare(dataset, backbone, cache_dir=cache_dir, workers=workers, progress=False,
                                           feature_dtype=spec.settings.get("feature_dtype", "float32"))
    return _PREPARED[spec.data_key]


_PARENT_PID: int | None = None  # in a --jobs worker: the sweep process that started it


def _die_with_parent(parent: int) -> None:
    """Make this worker end when the sweep process does, even by SIGKILL: Linux sends it SIGTERM
    (prctl PR_SET_PDEATHSIG); elsewhere `_exit_if_orphaned` checks between runs."""
    global _PARENT_PID
    _PARENT_PID = parent
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the check between runs remains
            pass
    _exit_if_orphaned()  # the parent may have died before prctl


def _exit_if_orphaned() -> None:
    """End a worker whose sweep process is gone (it was reparented), before it starts another run."""
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)  # nothing is being written between runs; nobody is left to report to


def _init_worker(threads: int, parent: int | None = None) -> None:
    import torch

    if parent is not None:
        _die_with_parent(parent)
    torch.set_num_threads(threads)


def extract_one(spec: RunSpec, cache_dir, workers) -> str:
    _prepared(spec, cache_dir, workers)
    return spec.dataset


def run_group(specs: list[RunSpec], out: Path, cache_dir, workers, fuse: bool = True,
              max_prompts: int | None = None, report=None, trackers: tuple = ()) -> list[tuple[str, float]]:
    """Train runs of one dataset and backbone into their folders (each written atomically as it
    finishes); with `fuse`, the learned-prompt runs in one fused pass (`fusion.py`). `report(folder,
    seconds)` is called as each finishes; returns every (folder, seconds)."""
    from ..runs.fusion import DEFAULT_MAX_PROMPTS, fit_runs
    from ..runs.pipeline import check_run
    from ..runs.folder import write_run

    _exit_if_orphaned()
    prep = _prepared(specs[0], cache_dir, workers)
    settings = [check_run(make_settings(s.settings), prep.dataset, prep.backbone)[1] for s in specs]
    results = []

    def done(i: int, run, seconds: float) -> None:
        _exit_if_orphaned()
        write_run(out / specs[i].folder, run, trackers)
        results.append((str(specs[i].folder), seconds))
        if report is not None:
            report(*results[-1])

    fit_runs(prep, settings, log=lambda s: None, fuse=fuse, max_prompts=max_prompts or DEFAULT_MAX_PROMPTS, done=done)
    return results


def fusable_spec(spec: RunSpec) -> bool:
    from ..runs.fusion import fusable
    from ..methods import get_method

    return fusable(get_method(spec.settings["method"]))


def work_units(order: list[RunSpec], jobs: int, fuse: bool) -> list[list[RunSpec]]:
    """What one worker task trains: a single run, or (with `fuse`) a share of one dataset and
    backbone's learned-prompt runs, trained together; each (dataset, backbone) gives `jobs` shares."""
    if not fuse:
        return [[s] for s in order]
    units, by_data = [], {}
    for s in order:
        if fusable_spec(s):
            by_data.setdefault(s.data_key, []).append(s)
        else:
            units.append([s])
    for specs in by_data.values():
        units += [specs[k::jobs] for k in range(min(jobs, len(specs)))]
    return units


def finished(spec: RunSpec, out: Path) -> bool:
    """Whether the run's folder holds a finished run of exactly these settings."""
    from ..runs.folder import holds_run

    return holds_run(out / spec.folder, spec.settings)


def check_run_folders(specs: list[RunSpec], out: Path, overwrite: bool = False) -> None:
    """Before anything is written: every run folder lies inside `out` (no link or name leads out),
    and one that holds a run of other settings is replaced only with `overwrite` (a folder holding
    files groupcoop did not write, never). A folder of the same settings is resumed: kept when
    finished, redone when its metrics are damaged."""
    from ..io.folders import check_inside, check_replaceable
    from ..runs.folder import same_settings

    for spec in specs:
        folder = out / spec.folder
        check_inside(folder, out, "run folder", "remove the link, or choose another --out")
        if not os.path.lexists(folder) or same_settings(folder, spec.settings):
            continue
        check_replaceable(folder, overwrite=True)  # never a folder of the user's files
        if not overwrite:
            raise UserError(f"run folder {folder} already holds a run of other settings (the grid changed?); "
                            "pass --overwrite to replace such runs, or choose another --out")


def remove_stale_temporaries(specs: list[RunSpec], out: Path) -> int:
    """Remove the temporary folders a killed sweep left beside its run folders (`files.atomic_folder`
    names them `.<run>.tmp-` or `.<run>.old-` plus 8 random characters); only those of these specs' runs,
    whose writer is gone: the caller holds these specs' lock. Returns how many were removed."""
    import shutil

    from ..io.folders import check_inside

    removed = 0
    for spec in specs:
        parent = out / spec.folder.parent
        if not parent.is_dir() or parent.is_symlink():
            continue
        pattern = re.compile(rf"\.{re.escape(spec.folder.name)}\.(tmp|old)-[a-z0-9_]{{8}}")
        for entry in os.scandir(parent):
            if pattern.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                check_inside(entry.path, out, "temporary folder", "remove it by hand")
                shutil.rmtree(entry.path)
                removed += 1
    return removed


def check_roots(specs: list[RunSpec]) -> None:
    """A dataset folder left as an unset ${VARIABLE} is named before anything runs."""
    for s in specs:
        root = s.settings.get("root") or ""
        if "$" in root:
            raise UserError(f"dataset {s.settings['dataset']}: its folder {root} uses an environment variable that is "
                            f"not set; set it or pass --root {s.settings['dataset']}=FOLDER")


def run_sweep(specs: list[RunSpec], out: Path, jobs: int = 1, cache_dir=None, workers: int | None = 0,
              log=print, fuse: bool = True, max_prompts: int | None = None, overwrite: bool = False,
              trackers: tuple = ()) -> dict:
    """Run every unfinished spec; returns counts. Progress: done / total with an ETA.

    With `fuse`, the learned-prompt runs of each dataset and backbone train together in fused
    passes (one per worker), at most `max_prompts` prompts per text-encoder call. The caller holds
    the lock of these specs (`cli.cmd_sweep`: one per shard). A run folder of other settings is
    replaced only with `overwrite` (`check_run_folders`). Each run's epochs also go to `trackers`
    (`tracking.send`).
    """
    out = Path(out)
    check_roots(specs)
    check_run_folders(specs, out, overwrite)
    stale = remove_stale_temporaries(specs, out)
    if stale:
        log(f"removed {stale} temporary folder(s) left by a killed sweep")
    todo = [s for s in specs if not finished(s, out)]
    total, done_before = len(specs), len(specs) - len(todo)
    log(f"sweep: {total} runs, {done_before} already finished, {len(todo)} to run with {jobs} job(s)"
        + (", learned-prompt runs fused" if fuse else ""))
    if not todo:
        return {"total": total, "ran": 0, "skipped": done_before}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    order = sorted(todo, key=lambda s: (s.data_key, s.method, s.groups, s.seed))
    units = work_units(order, jobs, fuse)
    first_of_data = list({s.data_key: s for s in reversed(order)}.values())
    start = time.perf_counter()
    completed = 0

    def report(folder: str, seconds: float) -> None:
        nonlocal completed
        completed += 1
        _progress(log, done_before + completed, total, completed, len(order), start, folder, seconds)

    if jobs == 1:
        _init_worker(threads)
        for unit in units:
            run_group(unit, out, cache_dir, workers, fuse, max_prompts, report, trackers)
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                 initargs=(threads, os.getpid())) as pool:
            # features first, one task per dataset, so that no two processes extract the same images
            for future in [pool.submit(extract_one, s, cache_dir, workers) for s in first_of_data]:
                future.result()
            log(f"features ready ({(time.perf_counter() - start) / 60:.1f} min)")
            start = time.perf_counter()  # the ETA counts runs only
            pending = {pool.submit(run_group, unit, out, cache_dir, workers, fuse, max_prompts, None, trackers)
                       for unit in units}
            while pending:  # a fused share reports its runs when the whole share is done
                finished_now, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished_now:
                    for folder, seconds in future.result():
                        report(folder, seconds)
    return {"total": total, "ran": len(order), "skipped": done_before}


def _progress(log, done, total, ran, to_run, start, folder, seconds) -> None:
    elapsed = time.perf_counter() - start
    eta = elapsed / ran * (to_run - ran)
    log(f"[{done}/{total}] {folder} ({seconds:.1f} s)  elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min")


# --- summaries -------------------------------------------------------------------------------------

def collect(specs: list[RunSpec], out: Path) -> list[dict]:
    """One row per finished run of the grid: its keys, headline metrics (val and test), run folder
    (relative to `out`) and provenance (versions, commit, host, start and wall time)."""
    from ..runs.provenance import CSV_COLUMNS, PROVENANCE

    from ..runs.folder import read_metrics

    rows = []
    for spec in specs:
        metrics = read_metrics(out / spec.folder)
        if metrics is None:  # not run yet, or damaged (the next sweep redoes it)
            continue
        row = dict(spec.keys())
        for split in ("test", "val"):
            for key in HEADLINE:
                value = metrics.get("splits", {}).get(split, {}).get(key)
                row[f"{split}_{key}"] = value
        if "group_quality" in metrics:
            row["group_agreement"] = metrics["group_quality"].get("accuracy")
            row["group_min_recall"] = metrics["group_quality"].get("min_recall")
        row["run_folder"] = spec.folder.as_posix()
        made = metrics.get(PROVENANCE) if isinstance(metrics.get(PROVENANCE), dict) else {}
        row.update({key: made.get(key) for key in CSV_COLUMNS})
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> str:
    import numpy as np

    if not values:
        return "-"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if len(values) > 1 else f"{100 * values[0]:.1f}"


def table_md(rows: list[dict], split: str = "test") -> str:
    """Worst-group and average accuracy (%), mean ± std over seeds: methods x datasets, or datasets
    as rows when there are more datasets than methods (a suite)."""
    methods = list(dict.fromkeys(method_label(r) for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))

    def cell(m: str, d: str) -> str:
        sel = [r for r in rows if method_label(r) == m and r["dataset"] == d]
        wga = [r[f"{split}_worst_group_acc"] for r in sel if r[f"{split}_worst_group_acc"] is not None]
        avg = [r[f"{split}_avg_acc"] for r in sel if r[f"{split}_avg_acc"] is not None]
        return f"{_mean_std(wga)} / {_mean_std(avg)}" if sel else "-"

    by_dataset = len(datasets) > len(methods)
    first, columns = ("dataset", methods) if by_dataset else ("method", datasets)
    lines = [f"{split} split, accuracy in % (mean ± std over seeds); each cell: worst-group / average", "",
             f"| {first} | " + " | ".join(map(md_cell, columns)) + " |", "|---|" + "---|" * len(columns)]
    for r in (datasets if by_dataset else methods):
        lines.append(f"| {md_cell(r)} | " + " | ".join(cell(c, r) if by_dataset else cell(r, c) for c in columns) + " |")
    return "\n".join(lines)


def per_task(rows: list[dict], split: str = "test", key: str = "worst_group_acc") -> dict[str, dict[str, float]]:
    """{method label: {dataset: mean over seeds}}."""
    import numpy as np

    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        value = r.get(f"{split}_{key}")
        if value is not None:
            out.setdefault(method_label(r), {}).setdefault(r["dataset"], []).append(value)
    return {m: {d: float(np.mean(v)) for d, v in by.items()} for m, by in out.items()}


def bootstrap_ci(diffs, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `diffs` (resampling tasks)."""
    import numpy as np

    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n, len(diffs)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def suite_aggregate(rows: list[dict], baselines: list[str], split: str = "test") -> tuple[str, dict]:
    """Per method over tasks: mean worst-group, gain over each baseline with a bootstrap 95% interval,
    win rate (tasks where it is at least as good), and its worst task."""
    import numpy as np

    table = per_task(rows, split)
    baseline_labels = {b: next((m for m in table if m.split(" [")[0] == b), None) for b in baselines}
    lines = [f"{split} worst-group accuracy over tasks (%): mean; gain over each baseline with bootstrap 95% interval "
             "over tasks; win rate = share of tasks at least as good; worst task", ""]
    header = ["method", "tasks", "mean WGA"]
    for b, label in baseline_labels.items():
        if label:
            header += [f"gain vs {b}", f"win rate vs {b}"]
    header += ["worst task"]
    lines += ["| " + " | ".join(map(md_cell, header)) + " |", "|" + "---|" * len(header)]
    data = {}
    for m, by_task in table.items():
        tasks = sorted(by_task)
        cells = [md_cell(m), str(len(tasks)), f"{100 * np.mean([by_task[t] for t in tasks]):.1f}"]
        entry = {"tasks": len(tasks), "mean": float(np.mean([by_task[t] for t in tasks]))}
        for b, label in baseline_labels.items():
            if not label:
                continue
            common = [t for t in tasks if t in table[label]]
            diffs = np.array([by_task[t] - table[label][t] for t in common])
            if m == label or not len(common):
                cells += ["-", "-"]
                continue
            lo, hi = bootstrap_ci(diffs)
            win = float(np.mean(diffs >= 0))
            cells += [f"{100 * diffs.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]", f"{100 * win:.0f}%"]
            entry[f"gain_vs_{b}"] = {"mean": float(diffs.mean()), "ci95": [lo, hi], "win_rate": win,
                                     "min": float(diffs.min())}
        worst = min(tasks, key=lambda t: by_task[t])
        cells.append(f"{md_cell(worst)} ({100 * by_task[worst]:.1f})")
        entry["worst_task"] = {"task": worst, "wga": by_task[worst]}
        data[m] = entry
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), data


def focus_table(rows: list[dict], focus: str, split: str = "test") -> str:
    """`focus` against every other method over tasks: its worst-group gain (bootstrap 95% interval),
    win rate, and the tasks where it loses and where it gains most."""
    import numpy as np

    table = per_task(rows, split)
    if focus not in table:
        return f"({focus} has no finished runs)"
    mine = table[focus]
    lines = [f"{focus} against every other method, {split} worst-group accuracy (%), over the tasks both ran: "
             "mean gain with bootstrap 95% interval, share of tasks at least as good, largest loss and gain", "",
             "| other method | tasks | its mean WGA | gain of " + md_cell(focus) + " | win rate | largest loss | largest gain |",
             "|---|---|---|---|---|---|---|"]
    for m, theirs in sorted(table.items(), key=lambda kv: -np.mean(list(kv[1].values()))):
        common = sorted(set(mine) & set(theirs))
        if m == focus or not common:
            continue
        diffs = np.array([mine[t] - theirs[t] for t in common])
        lo, hi = bootstrap_ci(diffs)
        worst, best = common[int(np.argmin(diffs))], common[int(np.argmax(diffs))]
        lines.append(f"| {md_cell(m)} | {len(common)} | {100 * np.mean([theirs[t] for t in common]):.1f} | "
                     f"{100 * diffs.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {100 * np.mean(diffs >= 0):.0f}% | "
                     f"{100 * diffs.min():+.1f} ({md_cell(worst)}) | {100 * diffs.max():+.1f} ({md_cell(best)}) |")
    return "\n".join(lines)


def write_summary(specs: list[RunSpec], out: Path, grid: Grid) -> tuple[str, int]:
    """runs.csv, table.md and report.html from the finished runs; returns (table text, finished runs)."""
    import json

    from ..io.csv_safe import csv_text
    from ..io.write import atomic_text

    rows = collect(specs, out)
    if not rows:
        return "no finished runs yet", 0
    atomic_text(out / "runs.csv", csv_text(rows))
    text = table_md(rows)
    datasets = {r["dataset"] for r in rows}
    aggregate = None
    if len(datasets) > 1:
        agg_text, aggregate = suite_aggregate(rows, grid.baseline_methods)
        text += "\n\n" + agg_text
        if grid.focus:
            text += "\n\n" + focus_table(rows, grid.focus)
    missing = len(specs) - len(rows)
    if missing:
        text += f"\n\n({missing} of {len(specs)} runs not finished yet)"
    atomic_text(out / "table.md", text + "\n")
    atomic_text(out / "summary.json", json.dumps({"grid": grid.model_dump(), "runs": len(rows),
                                                  "aggregate": aggregate}, indent=1) + "\n")
    from ..reports.report import sweep_report_html

    atomic_text(out / "report.html", sweep_report_html(grid.name, rows, text))
    return text, len(rows)


# --- cost estimate (dry run) ----------------------------------------------------------------------

# Image-encoder GFLOPs per image (open_clip's model profile table), dataset sizes (all images,
# training images) and shapes (classes, groups per class), and stated assumptions about one GPU,
# for --dry-run. No GPU was available to measure them here (benchmarks/gpu.py measures what they
# stand for); presets/paper/README.md lists them and says how to replace them.
IMAGE_GFLOPS = {"RN50": 9.2, "RN101": 12.8, "ViT-B-32": 4.4, "ViT-B-16": 17.6, "ViT-L-14": 81.1,
                "groupcoop-tiny": 0.03}
DATASET_IMAGES = {"waterbirds": (11_788, 4_795), "celeba": (202_599, 162_770), "multiceleba": (107_000, 67_000),
                  "metashift": (3_499, 2_276), "chexpert": (190_000, 167_000), "imagenetbg": (50_000, 45_000)}
DATASET_SHAPE = {"waterbirds": (2, 2), "celeba": (2, 2), "multiceleba": (2, 4), "metashift": (2, 2),
                 "chexpert": (2, 6), "imagenetbg": (9, 1)}
GPU_EFFECTIVE_TFLOPS = 50.0  # bf16 inference on an A100/H100-class GPU at a modest utilisation
GPU_DECODE_IMAGES_PER_S = 2000.0  # JPEG decoding + resizing with ~16 CPU workers
# Training: a step's text-encoder call costs a floor (kernel launches; a few prompts hardly fill a
# GPU) plus its FLOPs; each run of the step adds its own work (its batch of cached features, loss,
# optimiser): a fused step of R runs and P prompts of L tokens costs
# GPU_TEXT_CALL_S + P * L * TEXT_GFLOPS_PER_TOKEN / GPU_TRAIN_TFLOPS + R * GPU_RUN_STEP_S.
GPU_TEXT_CALL_S = {"RN50": 0.006, "RN101": 0.006, "ViT-B-32": 0.006, "ViT-B-16": 0.006, "ViT-L-14": 0.012,
                   "groupcoop-tiny": 0.003}
TEXT_GFLOPS_PER_TOKEN = {"RN50": 0.15, "RN101": 0.15, "ViT-B-32": 0.15, "ViT-B-16": 0.15, "ViT-L-14": 0.34,
                         "groupcoop-tiny": 0.0016}  # forward + input-gradient backward: 4 x the blocks' weights
GPU_TRAIN_TFLOPS = 25.0  # the text tower trains in fp32
GPU_RUN_STEP_S = 0.0005  # one run's own work in a step, launch-bound
PROMPT_TEXT_TOKENS = 8  # tokens of a prompt beside its n_ctx context vectors: [SOS], name words, '.', [EOS]
JTT_ERROR_RATE = 0.1  # JTT's first run's training error rate, which lengthens its second run's epochs


@dataclass
class TrainingCost:
    """What the cost model needs of one run of the training loop."""

    steps: int
    prompts: int  # 0: free vectors, no text encoder
    tokens: int


def _training_cost(spec: RunSpec) -> TrainingCost | None:
    """The run's steps (each epoch of n_train / batch_size steps; no early stopping) and prompts; None
    for methods trained in one go, or a dataset of unknown size."""
    from ..runs.fusion import fusable
    from ..methods import get_method

    dataset, hp = spec.data_key[0], spec.settings["hyperparameters"]
    recipe = get_method(spec.settings["method"])
    if dataset not in DATASET_IMAGES or recipe.start is None:
        return None
    n_train = DATASET_IMAGES[dataset][1]
    steps = hp["epochs"] * math.ceil(n_train / hp["batch_size"])
    if "upweight" in hp:  # JTT: a first run, then epochs lengthened by the upsampled errors
        longer = n_train * (1 + (hp["upweight"] - 1) * JTT_ERROR_RATE)
        steps = hp["first_epochs"] * math.ceil(n_train / hp["batch_size"]) + hp["epochs"] * math.ceil(longer / hp["batch_size"])
    if not fusable(recipe):
        return TrainingCost(steps, 0, 0)
    classes, groups = DATASET_SHAPE[dataset]
    return TrainingCost(steps, classes * (groups if recipe.rows == "group" else 1), hp["n_ctx"] + PROMPT_TEXT_TOKENS)


def step_seconds(backbone: str, runs: list[TrainingCost]) -> float:
    prompts = [r for r in runs if r.prompts]
    text = GPU_TEXT_CALL_S[backbone] + sum(r.prompts for r in prompts) * max(r.tokens for r in prompts) * \
        TEXT_GFLOPS_PER_TOKEN[backbone] / (GPU_TRAIN_TFLOPS * 1e3) if prompts else 0.0
    return text + len(runs) * GPU_RUN_STEP_S


def fused_pass_seconds(backbone: str, runs: list[TrainingCost], max_prompts: int) -> float:
    """A fused pass as `fusion.drive_together` runs it: runs join while their prompts fit the cap and
    leave when their steps are done; between two such events every step costs the same."""
    queue, active, seconds = list(runs), [], 0.0
    while queue or active:
        while queue and (not active or sum(r.prompts for r, _ in active) + queue[0].prompts <= max_prompts):
            active.append((queue[0], queue[0].steps))
            queue.pop(0)
        steps = min(left for _, left in active)
        seconds += steps * step_seconds(backbone, [r for r, _ in active])
        active = [(r, left - steps) for r, left in active if left > steps]
    return seconds


def estimate(specs: list[RunSpec], fuse: bool = True, max_prompts: int | None = None) -> str:
    """A rough cost of a sweep on one GPU: extraction once per (dataset, backbone) plus training, with
    the learned-prompt runs of each (dataset, backbone) fused (`fuse`) or each run alone."""
    from ..runs.fusion import DEFAULT_MAX_PROMPTS

    extraction = 0.0
    unknown = set()
    for key in {s.data_key for s in specs}:
        dataset, backbone = key[0], key[3]
        if dataset not in DATASET_IMAGES or backbone not in IMAGE_GFLOPS:
            unknown.add(f"{dataset}/{backbone}")
            continue
        n = DATASET_IMAGES[dataset][0]
        extraction += max(n * IMAGE_GFLOPS[backbone] * 1e9 / (GPU_EFFECTIVE_TFLOPS * 1e12), n / GPU_DECODE_IMAGES_PER_S)
    alone, fused = 0.0, 0.0
    by_data: dict[tuple, list[TrainingCost]] = {}
    for s in sorted(specs, key=lambda s: (s.data_key, s.method, s.groups, s.seed)):
        cost = _training_cost(s) if s.data_key[3] in GPU_TEXT_CALL_S else None
        if cost is None:
            continue
        alone += cost.steps * step_seconds(s.data_key[3], [cost])
        if cost.prompts:
            by_data.setdefault(s.data_key, []).append(cost)
        else:
            fused += cost.steps * step_seconds(s.data_key[3], [cost])
    for key, runs in by_data.items():
        fused += fused_pass_seconds(key[3], runs, max_prompts or DEFAULT_MAX_PROMPTS)
    training = (f"training at most {fused / 3600:.2f} h with the learned-prompt runs of each (dataset, backbone) fused "
                f"({alone / 3600:.2f} h run one by one)" if fuse else f"training at most {alone / 3600:.2f} h "
                "(every run alone, --no-fuse)")
    lines = [f"{len(specs)} runs over {len({s.data_key for s in specs})} (dataset, backbone) pairs",
             f"estimated on one GPU: feature extraction {extraction / 3600:.2f} h, {training}; every run's epochs "
             "(early stopping ends most runs sooner). These are assumptions, not measurements: see "
             "presets/paper/README.md"]
    if unknown:
        lines.append(f"no size or FLOPs known for: {', '.join(sorted(unknown))} (not in the estimate)")
    return "\n".join(lines)


def print_runs(specs: list[RunSpec], out: Path) -> None:
    for s in specs:
        print(f"{'done' if finished(s, out) else 'todo'}  {s.folder}")
