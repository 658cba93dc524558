"""The training loop for every method with learned rows, on cached image features only.

The rows are prompts (`PromptRows`: the text encoder runs once per step for all prompts, cut
after [EOS], and the batch's cached image features are scored against them; the image
encoder never runs here) or free linear vectors (`LinearRows`). The method's `Objective`
computes the loss from the rows' logits: class or group targets, the sampler that draws each
epoch, an optional class-level term or anchor, and a method's own weighting of the examples
(coop_groupdro's online GroupDRO weights live with that method, `coop.GroupDROWeights`).

One run of the loop is a `LoopRun`, an object with explicit steps, so that a driver decides
when each happens:

    run.start()
    while True:
        while run.next_batch():
            loss = run.loss(run.rows.encode())   # the rows' outputs: text features, or weights
            loss.backward()
            run.step()
        if not run.end_epoch():                  # validation, selection, early stopping
            break
    fitted = run.fitted()

`methods.base.drive` is that driver for one run. `fusion.drive_together` drives several runs on
one dataset and backbone: it takes every run's prompt embeddings (`PromptLearner.prompt_embeddings`),
encodes them in one text-encoder call and hands each run its slice; each run keeps its own sampler,
generator, optimiser, schedule, early stopping and selection. The epoch with the best validation
score is kept: the worst part of the selection rule's partition of val (true or labeler groups,
classes, or all of val; `--selection`), ties to the better average, `methods.base.selection_score`,
with early stopping; `keep="last"` keeps the last epoch instead (JTT's first run). All randomness
comes from a generator seeded with the run's seed; no global RNG is touched.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io.progress import eta
from .head import Head, class_scores
from .base import FitTask, Fitted, SplitData, balanced_weights, score_entry, score_text, selection_score
from .prompts import PromptLearner


# --- rows: what the loop trains ------------------------------------------------------------------

class PromptRows:
    """A prompt learner as the loop's rows: normalised text features, the backbone's logit scale."""

    def __init__(self, learner: PromptLearner):
        self.learner = learner
        self.scale = learner.backbone.logit_scale
        self.bias = learner.backbone.logit_bias

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [self.learner.ctx]

    @property
    def device(self) -> torch.device:
        return self.learner.ctx.device

    @property
    def n_rows(self) -> int:
        return len(self.learner.names)

    def trainable_parameters(self) -> int:
        return self.learner.trainable_parameters()

    def train(self, mode: bool = True) -> None:
        self.learner.train(mode)

    def encode(self) -> torch.Tensor:
        """The prompts' text features (P, D), not normalised: the text encoder's forward."""
        return self.learner()

    def logits(self, feats: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        out = self.scale * feats @ F.normalize(encoded, dim=-1).T
        return out if self.bias is None else out + self.bias

    @torch.no_grad()
    def head(self, n_classes: int, aggregate: str) -> Head:
        bb = self.learner.backbone
        return Head.from_text(self.learner(), self.scale, n_classes, aggregate, bias=bb.row_bias(self.n_rows))


class LinearRows:
    """C x G free vectors (and optional biases) as the loop's rows: logits = feats @ W.T (+ b)."""

    def __init__(self, n_rows: int, dim: int, bias: bool, device="cpu"):
        self.weight = nn.Parameter(torch.zeros(n_rows, dim, device=device))
        self.bias = nn.Parameter(torch.zeros(n_rows, device=device)) if bias else None

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def n_rows(self) -> int:
        return self.weight.shape[0]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters)

    def train(self, mode: bool = True) -> None:
        pass

    def encode(self) -> torch.Tensor:
        return self.weight

    def logits(self, feats: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        out = feats @ encoded.T
        return out if self.bias is None else out + self.bias

    @torch.no_grad()
    def head(self, n_classes: int, aggregate: str) -> Head:
        bias = None if self.bias is None else self.bias.detach().clone().float()
        return Head(self.weight.detach().clone().float(), 1.0, n_classes, aggregate, bias)


# --- objectives: how the labels make the loss --------------------------------------------------------

class Objective:
    """Cross-entropy of the rows' logits on class targets (one row per class) or group targets
    (one row per (class, group)); `sampler` draws each epoch (`reweight` weighs the loss by
    inverse target frequency instead); `class_loss_weight` adds a class-level cross-entropy on
    the aggregated class scores; `anchor_weight` an L2 pull of the rows' parameters toward
    their initial values (a few-image group's prompt stays near its hand-written start).
    `weighting` (a method's own: `start(run)`, `loss(per_example, idx)`, `epoch_entry()`,
    `extra()`) replaces the batch's mean by its weighting of the per-example losses."""

    def __init__(self, targets: str, sampler: str = "natural", aggregate: str = "max",
                 class_loss_weight: float = 0.0, anchor_weight: float = 0.0, weighting=None):
        if targets not in ("class", "group"):
            raise ValueError(f"targets must be class or group, not {targets!r}")
        self.targets, self.sampler, self.aggregate = targets, sampler, aggregate
        self.class_loss_weight, self.anchor_weight, self.weighting = class_loss_weight, anchor_weight, weighting

    def start(self, run: "LoopRun") -> None:
        """Set up for a run: its targets, loss weights and anchor."""
        train = run.train
        self.n_classes, self.device, self.parameters = run.n_classes, run.rows.device, run.rows.parameters
        self.target = torch.as_tensor(train.groups if self.targets == "group" else train.y, dtype=torch.long)
        self.y = torch.as_tensor(train.y, dtype=torch.long)
        self.loss_weight = None
        if self.sampler == "reweight":
            weights = balanced_weights(self.target.numpy(), run.rows.n_rows)
            self.loss_weight = torch.as_tensor(weights, dtype=torch.float32).to(self.device)
        self.anchor = [p.detach().clone() for p in self.parameters] if self.anchor_weight > 0 else None
        if self.weighting is not None:
            self.weighting.start(run)

    def data_loss(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        target = self.target[idx].to(self.device)
        if self.weighting is None:
            return F.cross_entropy(logits, target, weight=self.loss_weight)
        per_example = F.cross_entropy(logits, target, weight=self.loss_weight, reduction="none")
        return self.weighting.loss(per_example, idx)

    def loss(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        loss = self.data_loss(logits, idx)
        if self.targets == "group" and self.class_loss_weight > 0:
            loss = loss + self.class_loss_weight * F.cross_entropy(
                class_scores(logits, self.n_classes, self.aggregate), self.y[idx].to(self.device))
        if self.anchor is not None:
            loss = loss + self.anchor_weight * sum(
                (p - p0).pow(2).flatten(1).sum(dim=1).mean() for p, p0 in zip(self.parameters, self.anchor))
        return loss

    def epoch_entry(self) -> dict:
        """What this objective adds to each epoch's history entry."""
        return {} if self.weighting is None else self.weighting.epoch_entry()

    def extra(self) -> dict:
        """What this objective adds to metrics.json."""
        return {} if self.weighting is None else self.weighting.extra()


# --- sampling, optimiser and schedule -----------------------------------------------------------------

def epoch_order(sampler: str, groups: np.ndarray, generator: torch.Generator,
                repeats: np.ndarray | None = None) -> torch.Tensor:
    """One epoch's sample order: a permutation, or group-balanced draws with replacement.

    `repeats[i]` makes example i count that many times: it appears that often in a
    permutation (JTT's upsampling), and weighs that much within its group when drawing
    group-balanced.
    """
    if sampler == "group_balanced":
        if repeats is None:  # weight 1/|group| per row: one float64 per row, even for millions of rows
            weights, n = torch.from_numpy(1.0 / np.maximum(np.bincount(groups), 1))[torch.as_tensor(groups)], len(groups)
        else:
            w = repeats.astype(np.float64)
            weights, n = torch.as_tensor(w / np.bincount(groups, weights=w)[groups]), int(w.sum())
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    if repeats is None:
        return torch.randperm(len(groups), generator=generator)
    pool = torch.as_tensor(np.repeat(np.arange(len(groups)), repeats), dtype=torch.long)
    return pool[torch.randperm(len(pool), generator=generator)]


def make_optimizer(hp, params) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))


# --- one run --------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    model: object  # the rows (PromptRows, LinearRows) holding the kept epoch's parameters
    best_epoch: int
    history: list[dict]
    extra: dict = field(default_factory=dict)  # what the objective adds to metrics.json

    @property
    def learner(self) -> PromptLearner | None:
        return getattr(self.model, "learner", None)


class LoopRun:
    """One run of the loop on the rows' parameters, step by step (see the module docstring).

    `hp` gives the schedule and the optimiser (epochs, batch_size, optimizer, lr, ...),
    `objective` the use of the labels; `repeats` upsamples examples (JTT). `val.groups` is the
    selection rule's partition of val and `score_key` the history's name for its worst part's
    accuracy (`FitTask.selection_key`; None for the `average` rule).
    """

    def __init__(self, rows, hp, objective: Objective, train: SplitData, val: SplitData, n_classes: int, seed: int,
                 log=print, repeats: np.ndarray | None = None, keep: str = "best",
                 score_key: str | None = "val_worst_group_acc", finish=None):
        self.rows, self.hp, self.objective = rows, hp, objective
        self.finish = finish  # Fitted -> Fitted, applied to the kept epoch's result (a last layer on top)
        self.train, self.val, self.n_classes, self.seed, self.log = train, val, n_classes, seed, log
        self.repeats, self.keep, self.score_key = repeats, keep, score_key

    def start(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        self.device = self.rows.device
        self.objective.start(self)
        self.opt = make_optimizer(self.hp, self.rows.parameters)
        epoch_size = len(self.train.y) if self.repeats is None else int(np.sum(self.repeats))
        steps_per_epoch = math.ceil(epoch_size / self.hp.batch_size)
        self.schedule = warmup_cosine(self.opt, self.hp.warmup_epochs * steps_per_epoch, self.hp.epochs * steps_per_epoch)
        self.best, self.best_state, self.best_epoch, self.history, self.stale = (-1.0, -1.0), None, -1, [], 0
        self.epoch = 0
        self.started = time.perf_counter()
        self._begin_epoch()

    def _begin_epoch(self) -> None:
        self.rows.train()
        self.order = epoch_order(self.objective.sampler, self.train.groups, self.generator, self.repeats)
        self.position = 0

    def next_batch(self) -> bool:
        """Draw the epoch's next batch; False when the epoch has none left."""
        if self.position >= len(self.order):
            return False
        self.idx = self.order[self.position:self.position + self.hp.batch_size]
        self.position += self.hp.batch_size
        self.feats = self.train.feats.rows(self.idx).to(self.device)
        return True

    def loss(self, encoded: torch.Tensor) -> torch.Tensor:
        """The objective's loss on the current batch, given the rows' outputs (`rows.encode()`)."""
        self.last_loss = self.objective.loss(self.rows.logits(self.feats, encoded), self.idx)
        return self.last_loss

    def step(self) -> None:
        """One optimiser and schedule step, after the loss's gradients were computed."""
        self.opt.step()
        self.schedule.step()
        self.opt.zero_grad(set_to_none=True)

    def end_epoch(self) -> bool:
        """Validate, keep the epoch if it is the best (or `keep="last"`); whether to go on."""
        hp = self.hp
        self.rows.train(False)
        score = selection_score(self.rows.head(self.n_classes, self.objective.aggregate), self.val)
        loss = self.last_loss.item()
        entry = score_entry(score, self.score_key)
        self.history.append({"epoch": self.epoch, "loss": loss, **entry, **self.objective.epoch_entry()})
        self.log(f"  epoch {self.epoch + 1:3d}/{hp.epochs}  loss {loss:.4f}  {score_text(entry)}"
                 + eta(time.perf_counter() - self.started, self.epoch + 1, hp.epochs))  # at most: it may stop early
        if self.keep == "last" or score > self.best:
            self.best, self.best_epoch, self.stale = score, self.epoch, 0
            self.best_state = [p.detach().clone() for p in self.rows.parameters]
        else:
            self.stale += 1
            if self.stale >= hp.patience:
                self.log(f"  early stop: no better validation score for {self.stale} epochs")
                return False
        self.epoch += 1
        if self.epoch >= hp.epochs:
            return False
        self._begin_epoch()
        return True

    def result(self) -> TrainResult:
        """The rows with the kept epoch's parameters put back."""
        with torch.no_grad():
            for p, kept in zip(self.rows.parameters, self.best_state):
                p.copy_(kept)
        return TrainResult(self.rows, self.best_epoch, self.history, self.objective.extra())

    def fitted(self) -> Fitted:
        result = self.result()
        head = self.rows.head(self.n_classes, self.objective.aggregate)
        extra = {**result.extra, "best_epoch": result.best_epoch + 1, "epochs_run": len(result.history),
                 "history": result.history}
        fitted = Fitted(head, self.rows.trainable_parameters(), extra, result.learner)
        return fitted if self.finish is None else self.finish(fitted)


# --- what methods build their runs from -----------------------------------------------------------------

def prompt_rows(task: FitTask, names: list[str], hp) -> PromptRows:
    """Learned prompts with the frozen text `names`, the context initialised with the run's seed."""
    return PromptRows(PromptLearner(task.backbone, names, n_ctx=hp.n_ctx, init=hp.ctx_init, shared=hp.shared_ctx,
                                    generator=torch.Generator().manual_seed(task.seed)))


def loop_run(task: FitTask, rows, hp, objective: Objective, **kwargs) -> LoopRun:
    """A run of the loop on the task's training split, selected on its validation split."""
    return LoopRun(rows, hp, objective, task.train, task.val, task.n_classes, task.seed, log=task.log,
                   score_key=task.selection_key, **kwargs)
