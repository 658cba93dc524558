"""CoOp and its group-aware variants: one learned context for the class prompts."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool

from ..choices import Sampler
from ..schema import Number
from .base import FitTask, PromptParams, Recipe, prompts_fit


class CoOpParams(PromptParams):
    """CoOp [Zhou, Yang, Loy, Liu, IJCV 2022]: a learned context for the class prompts, ERM on
    the class labels."""

    shared_ctx: StrictBool = True
    sampler: Sampler = "natural"


class CoOpBalancedParams(CoOpParams):
    """CoOp trained with group-balanced sampling: every training group is drawn equally often
    (the sampler of GroupCoOp, without its group prompts) [cf. Idrissi et al., CLeaR 2022,
    subsampling/reweighting baselines]."""

    sampler: Sampler = "group_balanced"


class CoOpGroupDROParams(CoOpParams):
    """CoOp's class prompts trained with online GroupDRO [Sagawa, Koh, Hashimoto, Liang,
    ICLR 2020, Algorithm 1]: per step, with loss_g the batch's mean loss on group g,
    q_g <- q_g * exp(eta * loss_g), q normalised, loss = sum_g q_g loss_g. q starts uniform
    over the training groups present. The sampler defaults to group-balanced as in the
    paper's released Waterbirds command (`--reweight_groups --robust`); no generalisation
    adjustment (their C = 0)."""

    sampler: Sampler = "group_balanced"
    eta: Annotated[Number, Field(gt=0, le=100)] = 0.01  # their robust_step_size


def class_prompts(hp, spec) -> list[str]:
    """The frozen text after the context: the class names."""
    return list(spec.class_names)


def start_coop(task: FitTask, hp: CoOpParams):
    from .loop import Objective, loop_run, prompt_rows

    return loop_run(task, prompt_rows(task, class_prompts(hp, task.spec), hp), hp, Objective("class", hp.sampler))


def start_coop_groupdro(task: FitTask, hp: CoOpGroupDROParams):
    from .loop import GroupDROObjective, loop_run, prompt_rows

    objective = GroupDROObjective("class", hp.sampler, eta=hp.eta, group_names=task.spec.names())
    return loop_run(task, prompt_rows(task, class_prompts(hp, task.spec), hp), hp, objective)


COOP = Recipe("coop", "CoOp: learned context for class prompts, ERM on the class labels",
              "prompt", "class", "none", CoOpParams, "M*W (C*M*W with shared_ctx=false)",
              start=start_coop, check=prompts_fit(class_prompts))
COOP_BALANCED = Recipe("coop_balanced", "CoOp with group-balanced sampling",
                       "prompt", "class", "train", CoOpBalancedParams, "M*W",
                       start=start_coop, check=prompts_fit(class_prompts))
COOP_GROUPDRO = Recipe("coop_groupdro", "CoOp's class prompts trained with online GroupDRO group weights",
                       "prompt", "class", "train", CoOpGroupDROParams, "M*W",
                       start=start_coop_groupdro, check=prompts_fit(class_prompts))
