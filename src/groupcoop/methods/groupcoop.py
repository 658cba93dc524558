"""GroupCoOp: one learned prompt per (class, group), trained for group-wise classification."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field, StrictBool

from ..choices import Aggregate, Sampler
from ..schema import Int, Number
from .base import FitTask, PromptParams, Recipe, prompts_fit


class GroupCoOpParams(PromptParams):
    """GroupCoOp [Kim, Oh, Kwak, arXiv 2509.23781]: one learned prompt per (class, group),
    group-wise cross-entropy, group-balanced sampling, class score = aggregate of its group
    prompts. `n_ctx` and `lr` were chosen on the dev suite (docs/defaults.md)."""

    lr: Annotated[Number, Field(gt=0, le=10)] = 5e-4
    n_ctx: Annotated[Int, Field(ge=1, le=64)] = 4  # context vectors per prompt ("a photo of a")
    shared_ctx: StrictBool = False
    sampler: Sampler = "group_balanced"
    group_words: StrictBool = True  # the group's attribute words follow the class name in its prompt
    aggregate: Aggregate = "max"  # class score from its group prompts
    class_loss_weight: Annotated[Number, Field(ge=0, le=100)] = 0.0  # class-level term on the aggregated score
    ctx_reg: Annotated[Number, Field(ge=0, le=1e6)] = 0.0  # L2 pull of each context toward its initial value


def group_prompts(hp: GroupCoOpParams, spec) -> list[str]:
    """The frozen text after each group prompt's context: class name and the group's words."""
    if hp.group_words:
        return spec.prompt_texts()
    return [spec.class_names[y] for y in spec.class_of(np.arange(spec.n_groups))]


def start(task: FitTask, hp: GroupCoOpParams):
    from .loop import Objective, loop_run, prompt_rows

    objective = Objective("group", hp.sampler, hp.aggregate, hp.class_loss_weight, anchor_weight=hp.ctx_reg)
    return loop_run(task, prompt_rows(task, group_prompts(hp, task.spec), hp), hp, objective)


GROUPCOOP = Recipe("groupcoop", "GroupCoOp: one learned prompt per (class, group), group-wise cross-entropy, "
                   "group-balanced sampling, class score = aggregate of its group prompts",
                   "prompt", "group", "train", GroupCoOpParams, "C*G*M*W (M*W with shared_ctx=true)",
                   start=start, check=prompts_fit(group_prompts))
