"""CoOp and its group-aware variants: one learned context for the class prompts, and
coop_groupdro's online GroupDRO weights (the loop's `Objective` takes them as its weighting).
Torch is imported where it runs, never at module level (the methods table stays light)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
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


class GroupDRO:
    """Online GroupDRO weights [Sagawa et al., ICLR 2020, Algorithm 1] over `n_groups` groups.

    q starts uniform over the groups present in training (0 for absent ones); each step,
    q_g <- q_g * exp(eta * loss_g) with loss_g the batch's mean loss on group g (groups absent
    from the batch keep their weight), then q is renormalised; the loss is sum_g q_g loss_g.
    `cumulative` sums each group's loss_g over the steps, so q is proportional to
    q_0 * exp(eta * cumulative): the weight goes to the group with the highest training loss.
    """

    def __init__(self, train_groups: np.ndarray, n_groups: int, eta: float, device=None):
        import torch

        present = np.bincount(train_groups, minlength=n_groups) > 0
        self.q = torch.as_tensor(present / present.sum(), dtype=torch.float32, device=device)
        self.cumulative = torch.zeros(n_groups, dtype=torch.float64, device=device)
        self.eta = eta

    def loss(self, per_example, groups):
        import torch

        n = len(self.q)
        counts = torch.bincount(groups, minlength=n).to(per_example.dtype)
        sums = torch.zeros(n, dtype=per_example.dtype, device=per_example.device).index_add(0, groups, per_example)
        group_loss = sums / counts.clamp(min=1)
        with torch.no_grad():
            self.cumulative += group_loss.detach().double()
            q = self.q * torch.exp(self.eta * group_loss.detach())
            self.q = q / q.sum()
        return (self.q * group_loss).sum()


class GroupDROWeights:
    """coop_groupdro's weighting of the loop's per-example losses (`loop.Objective`'s `weighting`):
    averaged with online GroupDRO weights over the training groups (`GroupDRO`) instead of
    uniformly; each epoch's history gets q, metrics.json the final weights by group name."""

    def __init__(self, eta: float, group_names: list[str]):
        self.eta, self.group_names = eta, list(group_names)

    def start(self, run) -> None:
        import torch

        groups = run.train.groups
        self.device = run.rows.device
        self.dro = GroupDRO(groups, int(groups.max()) + 1, self.eta, self.device)
        self.groups = torch.as_tensor(groups, dtype=torch.long)

    def loss(self, per_example, idx):
        return self.dro.loss(per_example, self.groups[idx].to(self.device))

    def epoch_entry(self) -> dict:
        return {"groupdro_q": [round(float(v), 6) for v in self.dro.q.cpu()]}

    def extra(self) -> dict:
        """Per group, by name (groups after the last one present in training: 0)."""
        def by_name(values) -> dict:
            values = [float(v) for v in values.cpu()]
            return {name: (values[g] if g < len(values) else 0.0) for g, name in enumerate(self.group_names)}

        return {"groupdro": {"eta": self.eta, "final_q": by_name(self.dro.q),
                             "cumulative_group_loss": by_name(self.dro.cumulative)}}


def start_coop_groupdro(task: FitTask, hp: CoOpGroupDROParams):
    from .loop import Objective, loop_run, prompt_rows

    objective = Objective("class", hp.sampler, weighting=GroupDROWeights(hp.eta, task.spec.names()))
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
