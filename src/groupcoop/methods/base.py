"""What a method is, what its training reads and what it returns.

A `Recipe` names a method and carries its hyper-parameter schema and its trainer: `fit`
(a classifier in one go: hand-written prompts, logistic regressions) or `start` (a run of the
training loop with explicit steps, `loop.LoopRun`, that a driver advances; `drive` is the
driver of one run). `check` refuses, before any image is read, what the method cannot train
on. A trainer reads a `FitTask` (the dataset, backbone and cached features, the group plan,
the seed) and returns `Fitted` (the classifier head, its trainable parameter count, what it
adds to metrics.json, the learned prompts if any).

The rules every method shares live here once: how the validation split selects a model
(`selection_score`) and what group-balanced weights are (`balanced_weights`).
This module imports no torch (see the package docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal, get_args

import numpy as np
from pydantic import Field

from ..metrics import group_accuracies, worst_group_accuracy
from ..schema import Frozen, Int, Number, Text, build

if TYPE_CHECKING:  # type hints only: importing these would import torch
    from ..backbones.protocol import Backbone
    from ..data.base import GroupDataset, GroupSpec
    from ..features.store import Features
    from ..grouping.plan import GroupPlan
    from .head import Head
    from ..grouping.options import GroupingOptions
    from .prompts import PromptLearner

Needs = Literal["none", "train", "val"]
NEEDS: tuple[str, ...] = get_args(Needs)


# --- the rules every method shares ----------------------------------------------------------------

def selection_score(head: Head, val: SplitData) -> tuple[float, float]:
    """The model-selection key on the validation split, larger is better: (accuracy of the worst
    part of val's partition, average accuracy), so ties on the worst part go to the better average.

    The partition is the run's selection rule (`grouping.plan.Selection`): val's true or labeler groups
    (worst-group accuracy), its classes (worst-class accuracy) or one part (average accuracy)."""
    pred = head.predict_classes(val.feats)
    acc, _ = group_accuracies(pred, val.y, val.groups, int(val.groups.max()) + 1)
    return worst_group_accuracy(acc), float(np.mean(pred == val.y))


SCORE_WORDS = {"val_worst_group_acc": "worst-group", "val_worst_class_acc": "worst-class", "val_avg_acc": "avg"}


def score_entry(score: tuple[float, float], key: str | None) -> dict:
    """A selection score as history keys: the worst part's accuracy named `key` (none for the
    `average` rule, whose worst part is all of val) and the average accuracy."""
    return {**({key: score[0]} if key else {}), "val_avg_acc": score[1]}


def score_text(entry: dict) -> str:
    """'val worst-group 81.2  avg 90.1' from a `score_entry`."""
    return "val " + "  ".join(f"{SCORE_WORDS[k]} {100 * v:.1f}" for k, v in entry.items() if k in SCORE_WORDS)


def balanced_weights(labels: np.ndarray, n_labels: int = 0) -> np.ndarray:
    """Weight per label value, n / (G * n_g) for the G values present and 0 for absent ones:
    every present value then weighs n / G in total (group-balanced losses and reweighting)."""
    counts = np.bincount(labels, minlength=n_labels)
    present = int((counts > 0).sum())
    return np.where(counts > 0, len(labels) / (present * np.maximum(counts, 1)), 0.0)


# --- what a trainer reads and returns ----------------------------------------------------------------

@dataclass
class SplitData:
    """A split's image features (rows gathered on demand) with class labels and the group ids used."""

    feats: Any  # FeatureRows, or anything with .rows(index), .chunks() and .numpy()
    y: np.ndarray
    groups: np.ndarray | None



@dataclass
class RunPlan:
    """What a run is about to train on, known before any image is read (a recipe's `check`)."""

    dataset: GroupDataset
    grouping: GroupingOptions  # resolved: the source is known
    spec: GroupSpec
    backbone: Backbone


@dataclass
class FitTask:
    """What a method's trainer reads: the dataset with its backbone and cached image features,
    the group plan and the seed."""

    dataset: GroupDataset
    backbone: Backbone
    feats: Features  # one row per dataset row
    plan: GroupPlan
    seed: int
    log: Callable[[str], None] = print

    @property
    def spec(self) -> GroupSpec:
        return self.plan.spec

    @property
    def n_classes(self) -> int:
        return self.dataset.n_classes

    def split(self, name: str, groups: np.ndarray | None) -> SplitData:
        rows = self.dataset.split_indices(name)
        return SplitData(self.feats.subset(rows), self.dataset.y[rows], groups)

    @property
    def train(self) -> SplitData:
        """The training split with the groups the plan trains on."""
        return self.split("train", self.plan.train)

    @property
    def val(self) -> SplitData:
        """The validation split with the partition model selection uses (`plan.selection` says which)."""
        return self.split("val", self.plan.val_select)

    @property
    def selection_key(self) -> str | None:
        """The history key of the selection rule's worst-part accuracy (None: average accuracy only)."""
        return self.plan.selection.key

    @property
    def val_groups(self) -> SplitData:
        """The validation split with the groups the plan reports for it: its true groups, or the
        labeler's where it has none (a method that trains on val: DFR)."""
        return self.split("val", self.plan.report["val"][0])


@dataclass
class Fitted:
    """A method's result: the classifier and what metrics.json says about its training."""

    head: Head
    trainable: int
    extra: dict = field(default_factory=dict)  # added to metrics.json
    learner: PromptLearner | None = None  # learned prompts, saved with the run


# --- the recipe ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """One method: its name, what its classifier is, what it needs, its schema and its trainer."""

    name: str
    summary: str
    kind: Literal["text", "prompt", "linear"]  # rows are hand-written prompts, learned prompts or linear vectors
    rows: Literal["class", "group"]  # one row per class, or one per (class, group)
    needs_groups: Needs  # see the package docstring
    schema: type[Frozen]
    trainable: str  # trainable parameters as a formula (C classes, G groups per class, D feature width,
    #                 M context vectors of width W)
    fit: Callable[[FitTask, Any], Fitted] | None = None  # trained in one go
    start: Callable[[FitTask, Any], Any] | None = None  # a run of the training loop (`loop.LoopRun`)
    check: Callable[[RunPlan, Any], None] | None = None  # refuses what it cannot train on, before any image
    # (epochs, examples per epoch) of each run of the loop it makes, from its hyper-parameters and the
    # training-set size, for the dry-run cost estimate; None: one run of `epochs` over the training set
    epoch_sizes: Callable[[Any, int], list[tuple[int, float]]] | None = None
    phrases: bool = False  # it reads the run's bias value phrases (given, the dataset's, or discovered)

    def __post_init__(self):
        if (self.fit is None) == (self.start is None):
            raise TypeError(f"recipe {self.name}: give exactly one of fit and start")

    @property
    def learned(self) -> bool:
        return self.kind != "text"

    @property
    def labels(self) -> str:
        """What labels the recipe needs, in words (for `groupcoop methods`)."""
        if self.kind == "text":
            return "none (group value phrases)" if self.rows == "group" else \
                "none (bias phrases: given or discovered)" if self.phrases else "none"
        return {"none": "class", "train": "class + train groups (gt or --groups)",
                "val": "class + val groups (true, else a labeler's)"}[self.needs_groups]

    def params(self, values: dict | None = None) -> Frozen:
        """The typed hyper-parameters: defaults overridden by `values`, validated."""
        return build(self.schema, values or {}, f"method {self.name} hyper-parameters")

    def defaults(self) -> dict:
        return self.schema().model_dump()

    def loop_epochs(self, hp, n_train: int) -> list[tuple[int, float]]:
        """(epochs, examples per epoch) of each run of the training loop (`epoch_sizes`); none for a
        method trained in one go."""
        if self.start is None:
            return []
        return self.epoch_sizes(hp, n_train) if self.epoch_sizes is not None else [(hp.epochs, n_train)]

    def train(self, task: FitTask, hp) -> Fitted:
        """Train on `task`: in one go, or by driving the loop's run to its end."""
        if self.fit is not None:
            return self.fit(task, hp)
        return drive(self.start(task, hp))


def drive(run) -> Fitted:
    """Advance one run of the training loop (`loop.LoopRun`, or anything with its steps) to its end."""
    run.start()
    while True:
        while run.next_batch():
            run.loss(run.rows.encode()).backward()
            run.step()
        if not run.end_epoch():
            return run.fitted()


def needs_phrases(name: str, what: str) -> Callable[[RunPlan, Any], None]:
    """The `check` of a method that reads the run's bias value phrases (`Recipe.phrases`): refused in
    one line only where none can come (the groups have no phrases and nothing will be discovered);
    discovery that finds nothing leaves the method plain zero-shot."""
    def check(plan: RunPlan, hp) -> None:
        from ..errors import UserError
        from ..grouping.labelers import why_no_phrases

        if plan.spec.phrases is not None or plan.grouping.discovers:
            return
        why = why_no_phrases(plan.grouping.source, plan.dataset.name)
        raise UserError(f"--method {name} {what}, read from the bias value phrases, and {why}; pass --bias-prompts "
                        "\"on land,on water\" (one phrase per value) with --groups zeroshot, pseudo or gt, or --groups "
                        "pseudo --bias-prompts auto to discover them")

    return check


def prompts_fit(names: Callable[[Any, GroupSpec], list[str]]) -> Callable[[RunPlan, Any], None]:
    """The `check` of a learned-prompt method whose prompts' frozen text is `names(hp, spec)`:
    the prompts fit the text encoder with `n_ctx` context vectors (tokenising only)."""
    def check(plan: RunPlan, hp) -> None:
        from .prompts import check_prompts_fit

        check_prompts_fit(plan.backbone, names(hp, plan.spec), hp.n_ctx, hp.ctx_init)

    return check


# --- the loop's schedule and optimiser, and the prompt context, shared by many methods -------------------

class LoopParams(Frozen):
    """What every method trained by the loop (loop.py) shares: the schedule and the optimiser."""

    epochs: Annotated[Int, Field(ge=1, le=100_000)] = 20
    batch_size: Annotated[Int, Field(ge=1, le=1_000_000)] = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[Number, Field(gt=0, le=10)] = 2e-3
    weight_decay: Annotated[Number, Field(ge=0, le=10)] = 0.0
    momentum: Annotated[Number, Field(ge=0, lt=1)] = 0.9  # sgd only
    warmup_epochs: Annotated[Int, Field(ge=0, le=100_000)] = 1
    patience: Annotated[Int, Field(ge=1, le=100_000)] = 8  # epochs without a better validation score


class PromptParams(LoopParams):
    """What every learned-prompt method shares: the loop's settings and the context."""

    n_ctx: Annotated[Int, Field(ge=1, le=64)] = 16  # context vectors per prompt
    ctx_init: Text | None = "a photo of a"  # None: random context
