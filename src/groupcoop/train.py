"""The one training loop for every prompt method, on cached image features only.

Each step runs the text encoder once for all prompts (cut after [EOS]) and scores a batch of
cached image features against them; the image encoder never runs here. The epoch with the
best validation worst-group accuracy is kept (ties: the better average), with early stopping.
All randomness comes from a generator seeded with the run's seed; no global RNG is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .head import Head, class_scores
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


@dataclass
class TrainResult:
    learner: PromptLearner
    best_epoch: int
    history: list[dict]


def epoch_order(sampler: str, groups: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """One epoch's sample order: a permutation, or group-balanced draws with replacement."""
    n = len(groups)
    if sampler == "group_balanced":  # weight 1/|group| per row (the per-group division first: one float64 per row)
        per_group = torch.from_numpy(1.0 / np.maximum(np.bincount(groups), 1))
        return torch.multinomial(per_group[torch.as_tensor(groups)], n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator)


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


def train_prompts(recipe, hp, learner: PromptLearner, train: SplitData, val: SplitData, n_classes: int,
                  seed: int, log=print) -> TrainResult:
    """Fit the learner's context; keep the epoch with the best validation worst-group accuracy."""
    generator = torch.Generator().manual_seed(seed)
    group_prompts = recipe.prompts == "group"
    aggregate = hp.aggregate if group_prompts else "max"  # one prompt per class: every rule is the identity
    targets = torch.as_tensor(train.groups if group_prompts else train.y, dtype=torch.long)
    y_train = torch.as_tensor(train.y, dtype=torch.long)
    n_rows = len(learner.names)
    loss_weight = inverse_frequency(targets.numpy(), n_rows) if hp.sampler == "reweight" else None
    scale = learner.backbone.logit_scale
    opt = make_optimizer(hp, [learner.ctx])
    steps_per_epoch = math.ceil(len(targets) / hp.batch_size)
    schedule = warmup_cosine(opt, hp.warmup_epochs * steps_per_epoch, hp.epochs * steps_per_epoch)
    device = learner.ctx.device
    if loss_weight is not None:
        loss_weight = loss_weight.to(device)
    best, best_state, best_epoch, history, stale = (-1.0, -1.0), None, -1, [], 0
    for epoch in range(hp.epochs):
        learner.train()
        order = epoch_order(hp.sampler, train.groups, generator)
        for start in range(0, len(order), hp.batch_size):
            idx = order[start:start + hp.batch_size]
            text = F.normalize(learner(), dim=-1)
            logits = scale * train.feats.rows(idx).to(device) @ text.T
            loss = F.cross_entropy(logits, targets[idx].to(device), weight=loss_weight)
            if group_prompts and hp.class_loss_weight > 0:
                loss = loss + hp.class_loss_weight * F.cross_entropy(
                    class_scores(logits, n_classes, aggregate), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        learner.eval()
        with torch.no_grad():
            head = Head.from_text(learner(), scale, n_classes, aggregate)
        score = validation_score(head, val)
        history.append({"epoch": epoch, "loss": loss.item(), "val_worst_group_acc": score[0], "val_avg_acc": score[1]})
        log(f"  epoch {epoch + 1:3d}/{hp.epochs}  loss {loss.item():.4f}  val worst-group {100 * score[0]:.1f}  "
            f"avg {100 * score[1]:.1f}")
        if score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = learner.ctx.detach().clone()
        else:
            stale += 1
            if stale >= hp.patience:
                log(f"  early stop: no better validation worst-group accuracy for {stale} epochs")
                break
    with torch.no_grad():
        learner.ctx.copy_(best_state)
    return TrainResult(learner, best_epoch, history)
