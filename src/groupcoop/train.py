"""The one training loop for every method with learned rows, on cached image features only.

The rows are prompts (`PromptRows`: the text encoder runs once per step for all prompts, cut
after [EOS], and the batch's cached image features are scored against them; the image
encoder never runs here) or free linear vectors (`linear.LinearRows`). The recipe's
`Objective` says how labels are used: class or group targets, the sampler, the aggregate,
and optional online GroupDRO weights; `repeats` upsamples examples (JTT). The epoch with the
best validation worst-group accuracy is kept (ties: the better average), with early
stopping; `keep="last"` keeps the last epoch instead (JTT's first run). All randomness comes
from a generator seeded with the run's seed; no global RNG is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .head import Head, class_scores
from .methods import Objective
from .metrics import group_accuracies
from .prompts import PromptLearner


@dataclass
class SplitData:
    """A split's image features (rows gathered on demand) with class labels and the group ids used."""

    feats: object  # FeatureRows, or anything with .rows(index) and .chunks()
    y: np.ndarray
    groups: np.ndarray

    def __post_init__(self):
        if isinstance(self.feats, torch.Tensor):
            from .features import Features

            self.feats = Features.from_tensor(self.feats).subset(np.arange(len(self.feats)))


class PromptRows:
    """A prompt learner as the loop's rows: normalised text features, CLIP's logit scale."""

    def __init__(self, learner: PromptLearner):
        self.learner = learner
        self.scale = learner.backbone.logit_scale

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.learner.ctx]

    @property
    def device(self) -> torch.device:
        return self.learner.ctx.device

    @property
    def n_rows(self) -> int:
        return len(self.learner.names)

    def train(self, mode: bool = True) -> None:
        self.learner.train(mode)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scale * feats @ F.normalize(self.learner(), dim=-1).T

    @torch.no_grad()
    def head(self, n_classes: int, aggregate: str) -> Head:
        return Head.from_text(self.learner(), self.scale, n_classes, aggregate)


@dataclass
class TrainResult:
    model: object  # the rows (PromptRows, LinearRows) holding the kept epoch's parameters
    best_epoch: int
    history: list[dict]
    extra: dict = field(default_factory=dict)  # what the objective adds to metrics.json (GroupDRO weights)

    @property
    def learner(self) -> PromptLearner | None:
        return getattr(self.model, "learner", None)


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


def inverse_frequency(labels: np.ndarray, n: int) -> torch.Tensor:
    """Loss weights that make every present label count equally (`sampler: reweight`)."""
    counts = np.bincount(labels, minlength=n)
    return torch.as_tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0),
                           dtype=torch.float32)


def make_optimizer(hp, params) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))


def validation_score(head: Head, val: SplitData) -> tuple[float, float]:
    """(worst-group accuracy, average accuracy) on the validation split."""
    pred = head.predict_classes(val.feats)
    acc, _ = group_accuracies(pred, val.y, val.groups, int(val.groups.max()) + 1)
    return float(np.nanmin(acc)), float(np.mean(pred == val.y))


class GroupDRO:
    """Online GroupDRO weights [Sagawa et al., ICLR 2020, Algorithm 1] over `n_groups` groups.

    q starts uniform over the groups present in training (0 for absent ones); each step,
    q_g <- q_g * exp(eta * loss_g) with loss_g the batch's mean loss on group g (groups absent
    from the batch keep their weight), then q is renormalised; the loss is sum_g q_g loss_g.
    `cumulative` sums each group's loss_g over the steps, so q is proportional to
    q_0 * exp(eta * cumulative): the weight goes to the group with the highest training loss.
    """

    def __init__(self, train_groups: np.ndarray, n_groups: int, eta: float, device=None):
        present = np.bincount(train_groups, minlength=n_groups) > 0
        self.q = torch.as_tensor(present / present.sum(), dtype=torch.float32, device=device)
        self.cumulative = torch.zeros(n_groups, dtype=torch.float64, device=device)
        self.eta = eta

    def loss(self, per_example: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        n = len(self.q)
        counts = torch.bincount(groups, minlength=n).to(per_example.dtype)
        sums = torch.zeros(n, dtype=per_example.dtype, device=per_example.device).index_add(0, groups, per_example)
        group_loss = sums / counts.clamp(min=1)
        with torch.no_grad():
            self.cumulative += group_loss.detach().double()
            q = self.q * torch.exp(self.eta * group_loss.detach())
            self.q = q / q.sum()
        return (self.q * group_loss).sum()


def train_rows(model, hp, objective: Objective, train: SplitData, val: SplitData, n_classes: int, seed: int,
               log=print, repeats: np.ndarray | None = None, keep: str = "best") -> TrainResult:
    """Fit the rows' parameters; keep the epoch with the best validation worst-group accuracy (or the last).

    `hp` gives the schedule and the optimiser (epochs, batch_size, optimizer, lr, ...),
    `objective` the use of the labels.
    """
    generator = torch.Generator().manual_seed(seed)
    group_rows = objective.targets == "group"
    targets = torch.as_tensor(train.groups if group_rows else train.y, dtype=torch.long)
    y_train = torch.as_tensor(train.y, dtype=torch.long)
    device = model.device
    loss_weight = inverse_frequency(targets.numpy(), model.n_rows).to(device) if objective.sampler == "reweight" else None
    dro = None
    if objective.groupdro_eta is not None:
        dro = GroupDRO(train.groups, int(train.groups.max()) + 1, objective.groupdro_eta, device)
        train_groups = torch.as_tensor(train.groups, dtype=torch.long)
    opt = make_optimizer(hp, model.parameters)
    epoch_size = len(targets) if repeats is None else int(np.sum(repeats))
    steps_per_epoch = math.ceil(epoch_size / hp.batch_size)
    schedule = warmup_cosine(opt, hp.warmup_epochs * steps_per_epoch, hp.epochs * steps_per_epoch)
    best, best_state, best_epoch, history, stale = (-1.0, -1.0), None, -1, [], 0
    anchor = [p.detach().clone() for p in model.parameters] if objective.anchor_weight > 0 else None
    for epoch in range(hp.epochs):
        model.train()
        order = epoch_order(objective.sampler, train.groups, generator, repeats)
        for start in range(0, len(order), hp.batch_size):
            idx = order[start:start + hp.batch_size]
            logits = model.logits(train.feats.rows(idx).to(device))
            if dro is None:
                loss = F.cross_entropy(logits, targets[idx].to(device), weight=loss_weight)
            else:
                per_example = F.cross_entropy(logits, targets[idx].to(device), weight=loss_weight, reduction="none")
                loss = dro.loss(per_example, train_groups[idx].to(device))
            if group_rows and objective.class_loss_weight > 0:
                loss = loss + objective.class_loss_weight * F.cross_entropy(
                    class_scores(logits, n_classes, objective.aggregate), y_train[idx].to(device))
            if anchor is not None:  # keeps a few-image group's prompt near its hand-written start
                loss = loss + objective.anchor_weight * sum(
                    (p - p0).pow(2).flatten(1).sum(dim=1).mean() for p, p0 in zip(model.parameters, anchor))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        model.train(False)
        head = model.head(n_classes, objective.aggregate)
        score = validation_score(head, val)
        entry = {"epoch": epoch, "loss": loss.item(), "val_worst_group_acc": score[0], "val_avg_acc": score[1]}
        if dro is not None:
            entry["groupdro_q"] = [round(float(v), 6) for v in dro.q.cpu()]
        history.append(entry)
        log(f"  epoch {epoch + 1:3d}/{hp.epochs}  loss {loss.item():.4f}  val worst-group {100 * score[0]:.1f}  "
            f"avg {100 * score[1]:.1f}")
        if keep == "last" or score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = [p.detach().clone() for p in model.parameters]
        else:
            stale += 1
            if stale >= hp.patience:
                log(f"  early stop: no better validation worst-group accuracy for {stale} epochs")
                break
    with torch.no_grad():
        for p, kept in zip(model.parameters, best_state):
            p.copy_(kept)
    extra = {"groupdro": {"eta": objective.groupdro_eta, "final_q": [float(v) for v in dro.q.cpu()],
                          "cumulative_group_loss": [float(v) for v in dro.cumulative.cpu()]}} if dro else {}
    return TrainResult(model, best_epoch, history, extra)


def train_prompts(recipe, hp, learner: PromptLearner, train: SplitData, val: SplitData, n_classes: int,
                  seed: int, log=print, repeats: np.ndarray | None = None, keep: str = "best") -> TrainResult:
    """Fit a prompt learner's context with the recipe's objective (see `train_rows`)."""
    return train_rows(PromptRows(learner), hp, hp.objective(), train, val, n_classes, seed, log=log,
                      repeats=repeats, keep=keep)
