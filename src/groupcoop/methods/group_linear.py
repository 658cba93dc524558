"""group_linear: GroupCoOp's training on free linear vectors instead of prompts."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool

from ..choices import Aggregate, Sampler
from ..schema import Number
from .base import FitTask, LoopParams, Recipe


class GroupLinearParams(LoopParams):
    """GroupCoOp [Kim, Oh, Kwak, arXiv 2509.23781] without the text encoder: one free linear
    vector per (class, group) on the image features, trained like GroupCoOp (group-wise
    cross-entropy, group-balanced sampling, the same loop, model selection and aggregate).
    The ablation that isolates what the text encoder adds. Weights start at zero; logits are feats @ W.T (+ b), no logit scale.
    C x G x D weights, plus C x G biases with `bias: true`."""

    lr: Annotated[Number, Field(gt=0, le=10)] = 1e-2
    sampler: Sampler = "group_balanced"
    aggregate: Aggregate = "max"
    class_loss_weight: Annotated[Number, Field(ge=0, le=100)] = 0.0
    bias: StrictBool = False


def start(task: FitTask, hp: GroupLinearParams):
    from .loop import LinearRows, Objective, loop_run

    rows = LinearRows(task.spec.n_groups, task.feats.dim, hp.bias, task.backbone.device)
    return loop_run(task, rows, hp, Objective("group", hp.sampler, hp.aggregate, hp.class_loss_weight))


GROUP_LINEAR = Recipe("group_linear", "one linear vector per (class, group) trained like GroupCoOp (no text encoder)",
                      "linear", "group", "train", GroupLinearParams, "C*G*D (+ C*G with bias=true)", start=start)
