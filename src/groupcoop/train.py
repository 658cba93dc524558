"""The one training loop for every prompt method, on cached image features only.

Each step runs the text encoder once for all prompts (cut after [EOS]) and scores a batch of
cached image features against them; the image encoder never runs here. The epoch with the
best validation worst-group accuracy is kept (ties: the better average), with early stopping.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import group_accuracies
from .prompts import PromptLearner


@dataclass
class SplitData:
    """Normalised image features with class labels and the group ids used for this split."""

    feats: torch.Tensor
    y: np.ndarray
    groups: np.ndarray


@dataclass
class TrainResult:
    learner: PromptLearner
    best_epoch: int
    history: list[dict]


def class_scores(logits: torch.Tensor, n_classes: int, aggregate: str) -> torch.Tensor:
    """(B, C*G) prompt logits -> (B, C) class scores; prompts are ordered class-major."""
    per_class = logits.view(logits.shape[0], n_classes, -1)
    if aggregate == "max":
        return per_class.max(dim=-1).values
    if aggregate == "logsumexp":
        return per_class.logsumexp(dim=-1)
    return per_class.mean(dim=-1)


@torch.no_grad()
def predict(text_feats: torch.Tensor, feats: torch.Tensor, n_classes: int, aggregate: str = "max") -> np.ndarray:
    text = F.normalize(text_feats.float(), dim=-1)
    return class_scores(feats @ text.T, n_classes, aggregate).argmax(dim=1).cpu().numpy()


def _epoch_order(hp: dict, groups: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    n = len(groups)
    if hp.get("sampler") == "group_balanced":
        counts = np.bincount(groups)
        weights = torch.as_tensor(1.0 / counts[groups], dtype=torch.float64)
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator)


def _optimizer(hp: dict, params) -> torch.optim.Optimizer:
    if hp["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
    return torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])


def train_prompts(recipe, hp: dict, learner: PromptLearner, train: SplitData, val: SplitData, n_classes: int,
                  seed: int, log=print) -> TrainResult:
    """Fit the learner's context; keep the epoch with the best validation worst-group accuracy."""
    generator = torch.Generator().manual_seed(seed)
    group_prompts = recipe.prompts == "group"
    aggregate = hp.get("aggregate", "max")
    targets = torch.as_tensor(train.groups if group_prompts else train.y, dtype=torch.long)
    y_train = torch.as_tensor(train.y, dtype=torch.long)
    loss_weight = None
    if hp.get("sampler") == "reweight":
        counts = np.bincount(targets.numpy(), minlength=len(learner.names) if group_prompts else n_classes)
        loss_weight = torch.as_tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(counts), 0.0),
                                      dtype=torch.float32)
    scale = learner.backbone.logit_scale
    opt = _optimizer(hp, [learner.ctx])
    steps_per_epoch = math.ceil(len(targets) / hp["batch_size"])
    total, warmup = hp["epochs"] * steps_per_epoch, hp["warmup_epochs"] * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    n_val_groups = int(val.groups.max()) + 1
    best = (-1.0, -1.0)
    best_state, best_epoch, history, stale = None, -1, [], 0
    device = learner.ctx.device
    for epoch in range(hp["epochs"]):
        learner.train()
        order = _epoch_order(hp, train.groups, generator)
        for start in range(0, len(order), hp["batch_size"]):
            idx = order[start:start + hp["batch_size"]]
            text = F.normalize(learner(), dim=-1)
            logits = scale * train.feats[idx].to(device) @ text.T
            loss = F.cross_entropy(logits, targets[idx].to(device), weight=loss_weight)
            if group_prompts and hp.get("class_loss_weight", 0.0) > 0:
                loss = loss + hp["class_loss_weight"] * F.cross_entropy(
                    class_scores(logits, n_classes, aggregate), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        learner.eval()
        with torch.no_grad():
            pred = predict(learner(), val.feats.to(device), n_classes, aggregate)
        acc, _ = group_accuracies(pred, val.y, val.groups, n_val_groups)
        score = (float(np.nanmin(acc)), float(np.mean(pred == val.y)))
        history.append({"epoch": epoch, "loss": loss.item(), "val_worst_group_acc": score[0], "val_avg_acc": score[1]})
        log(f"  epoch {epoch + 1:3d}/{hp['epochs']}  loss {loss.item():.4f}  val worst-group {100 * score[0]:.1f}  "
            f"avg {100 * score[1]:.1f}")
        if score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(learner.ctx.detach())
        else:
            stale += 1
            if stale >= hp["patience"]:
                log(f"  early stop: no better validation worst-group accuracy for {stale} epochs")
                break
    with torch.no_grad():
        learner.ctx.copy_(best_state)
    return TrainResult(learner, best_epoch, history)
