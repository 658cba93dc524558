"""The Python entry points: train a run, load one back, list what there is.

The CLI's `train` and the demo are users of the same functions (`check_run`, `prepare`,
`run_method`), so a run made here and one made on the command line are the same thing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .data.base import GroupDataset
from .errors import UserError
from .io.progress import info, shown
from .runs.arguments import check
from .runs import phases
from .runs.pipeline import check_run, prepare, run_method
from .runs.folder import Run, read_run_config
from .runs.settings import RunSettings, make_settings


def fit(dataset: str | GroupDataset, backbone: str = "groupcoop-tiny", pretrained: str | None = None,
        method: str = "groupcoop", groups: str | dict | None = None,
        config: RunSettings | dict | str | Path | None = None, *, selection: str | None = None,
        hide_bias_labels: list[str] | str | None = None,
        root: str | None = None, seed: int = 0, device: str = "cpu", cache_dir: str | Path | None = None,
        workers: int | None = None, progress: bool = False, log=None) -> Run:
    """Train `method` on `dataset` (a name, or a loaded GroupDataset) and return the finished Run.

    `config` is a RunSettings, a dict of its keys, or the path of a YAML file of them (a run's
    config.yaml); it is validated into a RunSettings and the other arguments fill in what it leaves
    out. `groups` is a source name ('gt', 'pseudo', ...) or a dict of grouping options
    (`{"source": "pseudo", "bias_prompts": "auto"}` discovers the attributes).
    `selection` is the model-selection rule (auto, labeler, worst_class, average);
    `hide_bias_labels` the splits ('train', 'val') whose bias labels are dropped right after loading.
    Every argument is checked before any work (`runs.arguments.check`); a bad one raises UserError.
    `progress=True` prints what it does on stderr, one line per phase (load, extract with a progress
    bar, discover, label, train with a line per epoch, evaluate) and one before any download; without
    it nothing is printed, and the lines go to the `groupcoop` logger (INFO). `log`, a callable taking
    a line, receives the discover, label, train, epoch and evaluate lines instead.
    """
    given = check("fit()", dataset=dataset, root=root, progress=progress, workers=workers, log=log, config=config,
                  cache_dir=cache_dir)
    root, values, cache_dir = given["root"], given["config"], given["cache_dir"]
    loaded = dataset if isinstance(dataset, GroupDataset) else None
    defaults = {"dataset": loaded.name if loaded else dataset, "root": root, "backbone": backbone,
                "pretrained": pretrained, "method": method, "groups": groups, "selection": selection,
                "hide_bias_labels": hide_bias_labels, "seed": seed, "device": device}
    for key, value in defaults.items():
        if value is not None:
            values.setdefault(key, value)
    settings = make_settings(values, "fit()")
    with shown(progress):
        started = time.perf_counter()
        ds, settings, bb = check_run(settings, dataset=loaded)
        info(phases.loaded(ds, bb, time.perf_counter() - started))
        prep = prepare(ds, bb, cache_dir=cache_dir, feature_dtype=settings.feature_dtype, workers=workers,
                       progress=progress)
        return run_method(prep, settings, log=log or info)


def fit_many(dataset: str | GroupDataset, runs: list[str | dict | RunSettings], backbone: str = "groupcoop-tiny",
             pretrained: str | None = None, *, root: str | None = None, device: str = "cpu",
             cache_dir: str | Path | None = None, workers: int | None = None, progress: bool = False, log=None,
             fuse: bool = True, max_prompts: int | None = None) -> list[Run]:
    """Train several runs on one dataset and backbone and return their Runs, in order.

    Each entry of `runs` is a method name, or a dict of RunSettings keys (`method`, `seed`,
    `groups`, `hyperparameters`, ...), or a RunSettings; the other arguments fill in what it leaves
    out, as in `fit`; runs on another dataset, backbone or feature cache are refused. The features
    are extracted (or found cached) once. With `fuse` (the default) the learned-prompt runs train
    together, one text-encoder call per step for all their prompts (at most `max_prompts` per
    call); each equals what `fit` gives for its settings, up to float rounding.
    """
    from .runs.fusion import DEFAULT_MAX_PROMPTS, fit_runs

    given = check("fit_many()", dataset=dataset, root=root, progress=progress, fuse=fuse, workers=workers,
                  max_prompts=max_prompts, log=log, cache_dir=cache_dir)
    root, cache_dir = given["root"], given["cache_dir"]
    if isinstance(runs, (str, dict, RunSettings)) or not isinstance(runs, (list, tuple)) or not runs:
        raise UserError("fit_many() takes a non-empty list of runs (method names, dicts of settings or RunSettings)")
    loaded = dataset if isinstance(dataset, GroupDataset) else None
    shared = {"dataset": loaded.name if loaded else dataset, "root": root, "backbone": backbone,
              "pretrained": pretrained, "device": device}
    settings = []
    for k, entry in enumerate(runs):
        values = {"method": entry} if isinstance(entry, str) else entry.dump() if isinstance(entry, RunSettings) \
            else dict(entry) if isinstance(entry, dict) else None
        if values is None:
            raise UserError(f"fit_many() run {k}: expected a method name, a dict or RunSettings, "
                            f"not {type(entry).__name__}")
        for key, value in shared.items():
            if value is not None:
                values.setdefault(key, value)
        settings.append(make_settings(values, f"fit_many() run {k}"))
    for k, s in enumerate(settings[1:], 1):
        for key in ("dataset", "root", "dataset_options", "backbone", "pretrained", "device", "feature_dtype"):
            if getattr(s, key) != getattr(settings[0], key):
                raise UserError(f"fit_many() run {k} has {key} {getattr(s, key)!r}, run 0 {getattr(settings[0], key)!r}: "
                                "one call trains runs of one dataset, backbone and feature cache; call it once for each")
    with shown(progress):  # the lines `fit` prints, each run's tagged with its method and seed where fused
        started = time.perf_counter()
        ds, _, bb = check_run(settings[0], dataset=loaded)
        settings = [check_run(s, dataset=ds, backbone=bb)[1] for s in settings]
        info(phases.loaded(ds, bb, time.perf_counter() - started))
        prep = prepare(ds, bb, cache_dir=cache_dir, feature_dtype=settings[0].feature_dtype, workers=workers,
                       progress=progress)
        return fit_runs(prep, settings, log=log or info, fuse=fuse, max_prompts=max_prompts or DEFAULT_MAX_PROMPTS)


def discover(dataset: str | GroupDataset, backbone: str = "groupcoop-tiny", pretrained: str | None = None,
             vocabulary=None, top: int | None = 10, cache_dir: str | Path | None = None, *, score: str | None = None,
             root: str | None = None, device: str = "cpu", workers: int | None = None, progress: bool = False,
             seed: int = 0, grid: str | Path | None = None, unkept: list | None = None) -> list[dict]:
    """Bias discovery on the dataset's training split: the vocabulary's attributes ranked by how
    strongly their zero-shot value assignments go with the class, best first (at most `top`;
    None: all), and the image features' own unnamed attribute where they hold one no caption names.

    Each candidate is a dict: `attribute`, `values` (the kept value phrases, "{}" where the class
    name goes), `score` (by `score`, default `labelfree.DISCOVERY_SCORE`), `scores`, `shares` (of
    the training images per value), `dropped` (values too few images matched) and `spurious`
    (what `bias_prompts: auto` keeps), and `not_kept` (the test it failed) for one above the score's
    threshold that is not kept; an unnamed one also has `unnamed`, `value_names` (a, b), `set_apart`,
    `zeroshot_ratio`, `near_boundary` and, where a left-out caption splits each class alike, `named_by`.
    `vocabulary` is a YAML file, a `discovery.Vocabulary`, or None for the shipped one (world for
    synth-* datasets, clip otherwise). With `grid` (a .png path) and an unnamed attribute found,
    example training images of each class x value are written there. `unkept`, a list, receives the vocabulary's attributes that are no candidate, each
    {"attribute", "reason"} (fewer than two values matched enough images). Reads image features and
    class labels, never a bias label.
    """
    from .backbones.families import check_device, load_backbone
    from .data.registry import load_dataset
    from .grouping.discovery import DISCOVERY_SCORE, Vocabulary, check_score, discover_on, load_vocabulary, why_not_kept

    given = check("discover()", dataset=dataset, backbone=backbone, pretrained=pretrained, vocabulary=vocabulary,
                  top=top, score=score, root=root, progress=progress, workers=workers, seed=seed, grid=grid,
                  cache_dir=cache_dir)
    root, vocabulary, grid, cache_dir = given["root"], given["vocabulary"], given["grid"], given["cache_dir"]
    score = check_score(score or DISCOVERY_SCORE)
    check_device(device)
    ds = dataset if isinstance(dataset, GroupDataset) else load_dataset(dataset, root)
    vocab = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary, ds)
    with shown(progress):
        started = time.perf_counter()
        bb = load_backbone(backbone, pretrained, device=device)
        info(phases.loaded(ds, bb, time.perf_counter() - started))
        prep = prepare(ds, bb, cache_dir=cache_dir, workers=workers, progress=progress)
    candidates = discover_on(prep, vocab, score, seed=seed, unkept=unkept)
    unnamed = next((c for c in candidates if c.get("unnamed")), None)
    if grid is not None and unnamed is not None:
        from .reports.gallery import unnamed_grid

        unnamed_grid(ds, unnamed, grid)
    return [{k: v for k, v in c.items() if k != "assigned"}
            | ({"not_kept": why} if (why := why_not_kept(c, score)) else {}) for c in candidates[:top]]


def load_run(folder: str | Path) -> Run:
    """A saved run: its settings, metrics and classifier head (prompts stay in the folder)."""
    from .methods.head import load_head

    from .io.read import read_if_present

    folder = check("load_run()", folder=folder)["folder"]
    if folder is None:
        raise UserError("load_run() needs the folder of a run; give a folder written by train or Run.save")
    metrics_path = folder / "metrics.json"
    text = read_if_present(metrics_path, "run metrics")
    if text is None:
        raise UserError(f"{folder} holds no groupcoop run (no metrics.json); give a folder written by train or Run.save")
    try:
        metrics = json.loads(text)
    except ValueError as err:
        raise UserError(f"cannot read {metrics_path}: {err}; train the run again") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{metrics_path} holds a {type(metrics).__name__}, not a run's metrics; train the run again")
    settings = make_settings(read_run_config(folder), f"{folder}/config.yaml")
    return Run(settings, metrics, load_head(folder / "head.safetensors"))


def list_methods() -> dict[str, str]:
    """Method names and one-line summaries."""
    from .methods import METHODS

    return {name: recipe.summary for name, recipe in METHODS.items()}
