"""The methods, each a small declarative recipe registered by name in one table.

A recipe says which prompts exist (one per class or one per group), whether they are
learned, and carries its hyper-parameter schema: a frozen settings class whose fields are
the hyper-parameters, their types, ranges and defaults. The defaults live here and nowhere
else; a run's config may override any of them and is validated against the schema before
any work starts. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, StrictBool, field_validator

from .errors import UserError, close_matches
from .settings import Frozen, Int, Number, TextList, build

SAMPLERS = ("natural", "group_balanced", "reweight")
AGGREGATES = ("max", "logsumexp", "mean")
Sampler = Literal["natural", "group_balanced", "reweight"]
Aggregate = Literal["max", "logsumexp", "mean"]


class ZeroShotParams(Frozen):
    """Hand-written prompts: nothing is trained."""

    templates: Annotated[TextList, Field(min_length=1)] = ["a photo of a {}.", "a {}."]

    @field_validator("templates")
    @classmethod
    def _placeholder(cls, value):
        for t in value:
            if "{}" not in t:
                raise ValueError(f"template {t!r} has no {{}} where the class name goes")
        return value


class PromptParams(Frozen):
    """What every learned-prompt method shares: the schedule, the optimiser and the context."""

    epochs: Annotated[Int, Field(ge=1, le=100_000)] = 20
    batch_size: Annotated[Int, Field(ge=1, le=1_000_000)] = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[Number, Field(gt=0, le=10)] = 2e-3
    weight_decay: Annotated[Number, Field(ge=0, le=10)] = 0.0
    momentum: Annotated[Number, Field(ge=0, lt=1)] = 0.9  # sgd only
    warmup_epochs: Annotated[Int, Field(ge=0, le=100_000)] = 1
    patience: Annotated[Int, Field(ge=1, le=100_000)] = 8  # epochs without a better val worst-group acc
    n_ctx: Annotated[Int, Field(ge=1, le=64)] = 16  # context vectors per prompt
    ctx_init: Annotated[str, Field(strict=True, min_length=1)] | None = "a photo of a"  # None: random context


class CoOpParams(PromptParams):
    shared_ctx: StrictBool = True
    sampler: Sampler = "natural"


class GroupCoOpParams(PromptParams):
    shared_ctx: StrictBool = False
    sampler: Sampler = "group_balanced"
    group_words: StrictBool = True  # the group's attribute words follow the class name in its prompt
    aggregate: Aggregate = "max"  # class score from its group prompts
    class_loss_weight: Annotated[Number, Field(ge=0, le=100)] = 0.0  # class-level term on the aggregated score
    ctx_reg: Annotated[Number, Field(ge=0, le=1e6)] = 0.0  # L2 pull of each context toward its initial value


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    prompts: str  # "class": one prompt per class; "group": one per (class, group)
    learned: bool
    schema: type[Frozen]

    def params(self, values: dict | None = None) -> Frozen:
        """The typed hyper-parameters: defaults overridden by `values`, validated."""
        return build(self.schema, values or {}, f"method {self.name} hyper-parameters")

    def defaults(self) -> dict:
        return self.schema().model_dump()


METHODS = {
    "zeroshot": Recipe("zeroshot", "hand-written class prompts, averaged over templates; nothing is trained",
                       "class", False, ZeroShotParams),
    "coop": Recipe("coop", "CoOp: learned context for class prompts, ERM on the class labels", "class", True,
                   CoOpParams),
    "groupcoop": Recipe("groupcoop", "GroupCoOp: one learned prompt per (class, group), group-wise cross-entropy, "
                        "group-balanced sampling, class score = aggregate of its group prompts", "group", True,
                        GroupCoOpParams),
}


def get_method(name: str) -> Recipe:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'{close_matches(name, METHODS)}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
