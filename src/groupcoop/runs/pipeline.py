"""One run, start to finish: dataset -> features -> groups -> the method's training -> metrics.

`check_run` does every cheap check a run needs (settings, dataset metadata, groups, model
selection, backbone, the method's own checks such as prompt lengths) before `prepare` does the
expensive, shared part (cached features), so that bad input is refused before any image is
read. It returns the settings with the grouping resolved for the method; `run_method` trusts
them: it plans the groups (`plan_run`: a `PlannedRun` holding the `FitTask` the method's trainer
reads), trains, and turns the `Fitted` result into a `Run` (folder.py): its settings, the
metrics.json value, the classifier head and the learned prompts. `fusion.fit_runs` trains
several planned runs of one dataset and backbone together and finishes each the same way.

`hide_bias_labels` drops the chosen splits' bias labels right after loading: `check_run`
checks the dataset without them, and `plan_run` works on prepared features whose dataset
has them dropped (done again there, so a caller's own `Prepared` cannot leak them).
With `bias_prompts: auto` the method's own checks (prompt lengths, named groups) wait until
the attributes are discovered, after extraction and before training.

Each phase says what it did in one line through the run's `log` (default: the `groupcoop` logger;
phases.py words them): what discovery kept and the groups before training starts, then the
training and the evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..backbones.families import check_device, load_backbone
from ..backbones.protocol import Backbone
from ..data.base import GroupDataset
from ..data.registry import load_dataset
from ..features.extract import extract_features
from ..features.store import Features
from ..grouping.plan import GroupPlan, check_selection, labeler_spec, plan_groups, resolve_method_grouping
from ..io.progress import info
from ..methods.head import Head
from ..methods import FitTask, Fitted, Recipe, RunPlan
from ..metrics import split_metrics
from . import phases
from .folder import Run
from .settings import RunSettings


@dataclass
class Prepared:
    dataset: GroupDataset
    backbone: Backbone
    feats: Features  # one row per dataset row; rows come back L2-normalised

    def __post_init__(self):
        if isinstance(self.feats, torch.Tensor):
            self.feats = Features.from_tensor(self.feats)


def prepare(dataset: GroupDataset, backbone: Backbone | str, pretrained: str | None = None, device: str = "cpu",
            cache_dir=None, feature_dtype: str = "float32", workers: int | None = None,
            progress: bool = True, verify_cache: bool = False) -> Prepared:
    """The dataset's image features through the cache (extracted only where missing or stale)."""
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, pretrained, device=device)
    feats = extract_features(backbone, dataset.images, cache_dir=cache_dir, dtype=feature_dtype, workers=workers,
                             progress=progress, verify=verify_cache)
    return Prepared(dataset, backbone, feats)


def check_run(settings: RunSettings, dataset: GroupDataset | None = None, backbone: Backbone | None = None,
              allow_symlinks_outside: bool = False) -> tuple[GroupDataset, RunSettings, Backbone]:
    """Every check that needs no image: dataset metadata, groups, backbone, the method's own checks.

    `dataset` and `backbone` are loaded from the settings unless given. Returns (dataset,
    settings with the group source resolved for the method, backbone): what `run_method` trusts.
    """
    if dataset is None:
        dataset = load_dataset(settings.dataset, settings.root, allow_symlinks_outside=allow_symlinks_outside,
                               **settings.dataset_options)
    dataset = dataset.without_bias_labels(settings.hide_bias_labels)
    recipe = settings.recipe
    grouping = resolve_method_grouping(recipe, dataset, settings.groups)
    check_selection(recipe, dataset, grouping, settings.selection)
    if grouping != settings.groups:
        settings = settings.replace(groups=grouping.model_dump())
    if backbone is None:
        check_device(settings.device)
        backbone = load_backbone(settings.backbone, settings.pretrained, device=settings.device)
    if recipe.check is not None and not grouping.discovers:
        recipe.check(RunPlan(dataset, grouping, labeler_spec(dataset, grouping), backbone), settings.params)
    return dataset, settings, backbone


def evaluate_split(head: Head, prep: Prepared, split: str, report: tuple[np.ndarray, bool] | None = None,
                   names: list[str] | None = None) -> dict:
    """The metrics.json block of one split, by `report`: (group ids, whether they are the true
    groups) as the group plan decided (`GroupPlan.report`; `names` names labeler groups). Without
    one (`groupcoop evaluate`): by the true groups where the split has them, else per class.
    True groups add the train-weighted average and the dataset's own extra metrics."""
    ds = prep.dataset
    rows = ds.split_indices(split)
    pred = head.predict_classes(prep.feats.subset(rows))
    if report is None:
        report = (ds.groups[rows], True) if ds.labelled(rows) else (ds.y[rows], False)
        names = None if report[1] else list(ds.class_names)
    groups, true_groups = report
    if true_groups:
        names = ds.group_names()
    train_counts = ds.group_counts("train") if true_groups and ds.has_group_labels else None
    return split_metrics(pred, ds.y[rows], groups, names, train_counts=train_counts,
                         extra=ds.extra_metrics if true_groups else ())


@dataclass
class PlannedRun:
    """One method's run on prepared features with its groups planned: the `FitTask` its trainer
    reads, and how the trained classifier becomes a `Run`. `run_method` trains it alone;
    `fusion.py` trains several learned-prompt runs of one dataset and backbone together."""

    prep: Prepared
    settings: RunSettings
    plan: GroupPlan
    task: FitTask
    started: float = field(default_factory=time.time)  # when it was planned (fused runs: their pass's start)

    @property
    def recipe(self) -> Recipe:
        return self.settings.recipe

    def fit(self) -> Fitted:
        """The method's trainer on the task, alone."""
        return self.recipe.train(self.task, self.settings.params)

    def start(self):
        """The method's run of the training loop (`loop.LoopRun` or one with its steps), not started yet."""
        return self.recipe.start(self.task, self.settings.params)

    def finish(self, fitted: Fitted) -> Run:
        """The Run of the trained classifier: evaluated on val and test, with metrics.json's value."""
        recipe, hp, settings, plan, prep = self.recipe, self.settings.params, self.settings, self.plan, self.prep
        ds, bb = prep.dataset, prep.backbone
        head = fitted.head
        head.class_names = list(ds.class_names)
        # a group-row method whose last layer made it one row per class (groupcoop's last_layer) names classes
        group_rows = recipe.rows == "group" and head.weight.shape[0] == plan.spec.n_groups
        head.row_names = plan.spec.names() if group_rows else list(ds.class_names)
        head.info = {"backbone": bb.identity, "method": recipe.name}
        splits = {}
        for split in ("val", "test"):
            if len(ds.split_indices(split)):
                splits[split] = evaluate_split(head, prep, split, plan.report[split], plan.report_names(split))
        val_trained = recipe.needs_groups == "val" or fitted.extra.get("last_layer", {}).get("kind", "none") != "none"
        metrics = {
            "method": recipe.name,
            "backbone": bb.identity,
            "dataset": ds.name,
            "groups_source": plan.source,
            "needs_groups": recipe.needs_groups,
            "val_used_for_training": val_trained,
            "selection": settings.selection,
            "selection_groups": plan.selection.used if recipe.needs_groups != "val" else
            f"{'true' if plan.report['val'][1] else plan.source} val groups (half-splits of val)",
            "report_groups": {s: plan.report_words(s) for s in splits},
            "trainable_params": int(fitted.trainable),
            "total_params": int(bb.parameter_count() + fitted.trainable),
            "seed": settings.seed,
            "hyperparameters": hp.model_dump(),
            "grouping": settings.groups.model_dump(),
            "splits": splits,
            **({"hidden_bias_labels": ds.hidden_splits} if ds.hidden_splits else {}),
            **({"discovery": plan.discovery} if plan.discovery else {}),
            **({"group_quality": plan.quality} if plan.quality else {}),
            **fitted.extra,
        }
        if val_trained:
            metrics["note"] = ("val was used for training: its accuracies are training-set accuracies, "
                               "not held-out ones; compare methods on test")
        if fitted.learner is not None:
            fitted.learner.info.update({"classes": list(ds.class_names),
                                        "groups": plan.spec.names() if recipe.rows == "group" else head.row_names,
                                        "method": recipe.name, "groups_source": plan.source,
                                        "aggregate": head.aggregate})
        return Run(settings, metrics, head, fitted.learner, started=self.started, wall_s=time.time() - self.started,
                   figures=discovered_grid(ds, plan))


UNNAMED_GRID = "unnamed-groups.png"


def discovered_grid(ds: GroupDataset, plan: GroupPlan, per_group: int = 8) -> dict[str, bytes]:
    """Where discovery found an unnamed attribute: a grid of example training images of every group the
    run made (`UNNAMED_GRID`), so the user can see the attribute and name it; else nothing (also for a
    dataset of features without images, whose ImageSource says `has_pixels = False`)."""
    from ..reports.gallery import rows_png

    if not (plan.discovery or {}).get("unnamed") or plan.train is None or not getattr(ds.images, "has_pixels", True):
        return {}
    rows = ds.split_indices("train")
    names = plan.spec.names()
    members = [(names[g], rows[plan.train == g]) for g in range(plan.spec.n_groups)]
    title = (f"{ds.name}: the run's training groups, {' and '.join(plan.discovery['unnamed'])} as the image features "
             f"split each class (up to {per_group} random images per group)")
    return {UNNAMED_GRID: rows_png(ds, members, title, "train", per_group, seed=0)}


def plan_run(prep: Prepared, settings: RunSettings, log=info) -> PlannedRun:
    """Plan one method with one seed on prepared features (its groups labelled), with the settings
    `check_run` returned."""
    if settings.groups.source is None:
        raise ValueError("run_method needs the settings check_run returns (their group source resolved)")
    recipe = settings.recipe
    prep = Prepared(prep.dataset.without_bias_labels(settings.hide_bias_labels), prep.backbone, prep.feats)
    plan = plan_groups(prep, settings.groups, settings.seed, train_groups=recipe.needs_groups != "val",
                       selection=settings.selection)
    if plan.discovery:
        log(phases.discovered(plan.discovery))  # before training: what the groups are made of
    log(phases.labelled(plan))
    if settings.groups.discovers and recipe.check is not None:  # the groups are known now
        grouping = settings.groups.model_copy(update={"source": plan.source})
        recipe.check(RunPlan(prep.dataset, grouping, plan.spec, prep.backbone), settings.params)
    return PlannedRun(prep, settings, plan, FitTask(prep.dataset, prep.backbone, prep.feats, plan, settings.seed, log))


def run_method(prep: Prepared, settings: RunSettings, log=info) -> Run:
    """Train (or not) one method with one seed on prepared features, with the settings `check_run` returned."""
    planned = plan_run(prep, settings, log)
    log(phases.training(settings, planned.plan))
    fitted = planned.fit()
    started = time.perf_counter()
    run = planned.finish(fitted)
    log(phases.evaluated(run.metrics, time.perf_counter() - started))
    return run
