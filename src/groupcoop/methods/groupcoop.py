"""GroupCoOp: one learned prompt per (class, group), trained for group-wise classification."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StrictBool

from ..choices import Aggregate, Sampler
from ..schema import Int, Number
from .base import FitTask, Fitted, PromptParams, Recipe, prompts_fit


class GroupCoOpParams(PromptParams):
    """GroupCoOp [Kim, Oh, Kwak, arXiv 2509.23781]: one learned prompt per (class, group),
    group-wise cross-entropy, group-balanced sampling, class score = aggregate of its group
    prompts. `n_ctx` and `lr` were chosen on the dev suite (docs/defaults.md). Without bias labels on
    val (`last_layer: auto`), a DFR last layer on the labeler's val groups is fitted over the image
    features and the group prompts' logits, also chosen on the dev suite."""

    lr: Annotated[Number, Field(gt=0, le=10)] = 5e-4
    n_ctx: Annotated[Int, Field(ge=1, le=64)] = 4  # context vectors per prompt ("a photo of a")
    shared_ctx: StrictBool = False
    sampler: Sampler = "group_balanced"
    group_words: StrictBool = True  # the group's attribute words follow the class name in its prompt
    aggregate: Aggregate = "max"  # class score from its group prompts
    class_loss_weight: Annotated[Number, Field(ge=0, le=100)] = 0.0  # class-level term on the aggregated score
    ctx_reg: Annotated[Number, Field(ge=0, le=1e6)] = 0.0  # L2 pull of each context toward its initial value
    # after training, a DFR last layer on val's groups (true, else the labeler's) over the group prompts'
    # logits ("dfr_prompts") or over those and the image features ("dfr"); `reweighted_last_layer`.
    # auto: "dfr" where val has no bias labels (the labeler's val groups), else "none" (docs/defaults.md)
    last_layer: Literal["auto", "none", "dfr", "dfr_prompts"] = "auto"


def group_prompts(hp: GroupCoOpParams, spec) -> list[str]:
    """The frozen text after each group prompt's context: class name and the group's words."""
    if hp.group_words:
        return spec.prompt_texts()
    return [spec.class_names[y] for y in spec.class_of(np.arange(spec.n_groups))]


def last_layer(task: FitTask, hp: GroupCoOpParams) -> str:
    """The last layer a run gets: `hp.last_layer`, with auto resolved by whether val has true groups."""
    if hp.last_layer != "auto":
        return hp.last_layer
    return "none" if task.plan.report["val"][1] else "dfr"


def reweighted_last_layer(task: FitTask, hp: GroupCoOpParams, fitted: Fitted) -> Fitted:
    """DFR [Kirichenko et al. 2023] on top of the trained group prompts: a group-balanced L1 logistic
    regression on val's groups whose inputs are the C*G group-prompt logits (`dfr_prompts`), or those
    and the image features (`dfr`). Both inputs are linear in the image features, so the result is
    one linear row per class on them, like any head; its group rows are gone (predict names no group)."""
    from ..errors import UserError
    from .dfr import DFRParams, dfr_regression
    from .linear import Scaler, head_from_logreg, logreg_parameters

    val, head = task.val_groups, fitted.head
    x = val.feats.numpy().astype(np.float64)
    rows = head.scale * head.weight.detach().cpu().double().numpy()  # (C*G, D): logits = x @ rows.T + bias
    shift = np.zeros(len(rows)) if head.bias is None else head.bias.detach().cpu().double().numpy()
    lift = rows if hp.last_layer == "dfr_prompts" else np.concatenate([np.eye(x.shape[1]), rows])
    offset = shift if hp.last_layer == "dfr_prompts" else np.concatenate([np.zeros(x.shape[1]), shift])
    inputs = "the group-prompt logits" if hp.last_layer == "dfr_prompts" else "the image features and group-prompt logits"
    task.log(f"  last layer: DFR on val's groups over {inputs}")
    try:
        coef, intercept, scaler, details = dfr_regression(x @ lift.T + offset, val.y, val.groups, task.n_classes,
                                                          DFRParams(), task.seed, task.log)
    except UserError as err:  # too small a val split to regress on (a class missing from a half): keep the prompts
        task.log(f"  last layer left out: {err}")
        return Fitted(fitted.head, fitted.trainable, {**fitted.extra, "last_layer": {"kind": "none", "why": str(err)}},
                      fitted.learner)
    scaled = coef / scaler.scale  # score = scaled . (lift x + offset - mean) + intercept
    weight = scaled @ lift
    bias = intercept + scaled @ (offset - scaler.mean)
    linear = head_from_logreg(weight, bias, Scaler.fit(x, False), task.n_classes)
    extra = {**fitted.extra, "last_layer": {"kind": hp.last_layer, **details}}
    return Fitted(linear, fitted.trainable + logreg_parameters(task.n_classes, lift.shape[0]), extra, fitted.learner)


def start(task: FitTask, hp: GroupCoOpParams):
    from .loop import Objective, loop_run, prompt_rows

    objective = Objective("group", hp.sampler, hp.aggregate, hp.class_loss_weight, anchor_weight=hp.ctx_reg)
    kind = last_layer(task, hp)
    finish = None if kind == "none" else \
        (lambda fitted: reweighted_last_layer(task, hp.model_copy(update={"last_layer": kind}), fitted))
    return loop_run(task, prompt_rows(task, group_prompts(hp, task.spec), hp), hp, objective, finish=finish)


GROUPCOOP = Recipe("groupcoop", "GroupCoOp: one learned prompt per (class, group), group-wise cross-entropy, "
                   "group-balanced sampling, class score = aggregate of its group prompts",
                   "prompt", "group", "train", GroupCoOpParams, "C*G*M*W (M*W with shared_ctx=true)",
                   start=start, check=prompts_fit(group_prompts))
