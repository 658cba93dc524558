"""A sweep's grid: the grid file's schema (`Grid`, read by `load_grid`), its runs (`RunSpec`, listed
by `expand`, counted before that by `count_runs`) and the slices of them that `--shard I/N` runs.

A grid names datasets, backbones, methods (with hyper-parameter variants), group sources and
seeds; every combination is one run folder under OUT/runs/ (`RunSpec.folder`). `--shard I/N`
runs one of N disjoint slices (whole datasets go to one slice, so each machine extracts only
its own).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..errors import UserError
from ..schema import Frozen, Int, build
from ..io.read import read_yaml_mapping
from ..runs.settings import check_hyperparameter_keys, make_settings


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

    @property
    def folder(self) -> Path:
        """The default sweep folder, runs/<name>; the name becomes one folder name as run labels do
        (`_slug`), so `../..` or an absolute path never leads out of ./runs."""
        return Path("runs", _slug(self.name))

    def same_runs(self, other: Grid) -> bool:
        """Whether two grids make the same runs and tables (their names aside), compared as grid.yaml holds them."""
        import yaml

        def written(grid: Grid):
            return yaml.safe_load(yaml.safe_dump(grid.model_dump(exclude={"name"})))

        return written(self) == written(other)

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


GRID_FILE = "grid.yaml"  # the grid a sweep folder was made with


def check_grid_folder(out: Path, grid: Grid, overwrite: bool) -> bool:
    """Refuse a sweep folder made with another grid (its grid.yaml) unless `overwrite`; a grid.yaml
    that cannot be read as a grid counts as another. Returns whether grid.yaml must be (re)written."""
    path = Path(out) / GRID_FILE
    if not os.path.lexists(path):
        return True
    try:
        stored = build(Grid, read_yaml_mapping(path, "grid file"), f"grid {path}", context={"max_runs": float("inf")})
    except UserError:
        stored = None
    if stored is not None and stored.same_runs(grid):
        return False
    if not overwrite:
        raise UserError(f"--out {out} holds a sweep of another grid (its {GRID_FILE}); choose another --out, or pass "
                        "--overwrite to run this grid there (its run folders of other settings are replaced)")
    return True


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
    unknown = set(roots) - {d.name for d in grid.datasets} - {d.label for d in grid.datasets}
    if unknown:
        raise UserError(f"--root {min(unknown)}=...: no dataset of the grid has that name; the grid's datasets: "
                        f"{', '.join(dict.fromkeys(d.label or d.name for d in grid.datasets))}")
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
