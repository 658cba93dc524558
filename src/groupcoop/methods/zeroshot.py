"""Zero-shot classifiers from hand-written prompts: one per class, or one per (class, group)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from ..choices import Aggregate
from ..errors import UserError
from ..schema import Frozen, TextList
from ..templates import TEMPLATES
from .base import FitTask, Fitted, Recipe, RunPlan


class ZeroShotParams(Frozen):
    """Zero-shot CLIP [Radford et al., ICML 2021]: hand-written class prompts averaged over
    templates; nothing is trained."""

    templates: Annotated[TextList, Field(min_length=1)] = list(TEMPLATES)

    @field_validator("templates")
    @classmethod
    def _placeholder(cls, value):
        for t in value:
            if "{}" not in t:
                raise ValueError(f"template {t!r} has no {{}} where the class name goes")
        return value


class ZeroShotGroupsParams(ZeroShotParams):
    """Zero-shot group prompts: "a photo of a <class> <value phrase>." for every (class, group),
    the value phrases coming from the dataset or `--bias-prompts` (the same text GroupCoOp's
    group prompts carry), averaged over templates; a class scores the max over its group
    prompts. Nothing is trained. The zero-shot classifier of the group-prompt idea in
    GroupCoOp [Kim, Oh, Kwak, arXiv 2509.23781]; the same prompts name the zero-shot groups
    in grouping/labelers.py."""

    aggregate: Aggregate = "max"


def _head(task: FitTask, texts: list[str], templates, aggregate: str) -> Fitted:
    from .head import Head

    bb = task.backbone
    return Fitted(Head.from_text(bb.text_features(texts, templates), bb.logit_scale, task.n_classes, aggregate,
                                 bias=bb.row_bias(len(texts))), 0)


def fit_zeroshot(task: FitTask, hp: ZeroShotParams) -> Fitted:
    return _head(task, list(task.dataset.class_names), hp.templates, "max")


def fit_zeroshot_groups(task: FitTask, hp: ZeroShotGroupsParams) -> Fitted:
    return _head(task, task.spec.prompt_texts(), hp.templates, hp.aggregate)


def check_named_groups(plan: RunPlan, hp: ZeroShotGroupsParams) -> None:
    """One prompt per group is written from the groups' value phrases: the groups need names."""
    from ..grouping.labelers import why_no_phrases

    if plan.spec.phrases is None:
        why = why_no_phrases(plan.grouping.source, plan.dataset.name)
        raise UserError(f"--method zeroshot_groups writes one prompt per group from the groups' value phrases, and "
                        f"{why}; pass --bias-prompts \"on land,on water\" (one phrase per value) and --groups "
                        "zeroshot, pseudo or gt")


ZEROSHOT = Recipe("zeroshot", "hand-written class prompts, averaged over templates; nothing is trained",
                  "text", "class", "none", ZeroShotParams, "0", fit=fit_zeroshot)
ZEROSHOT_GROUPS = Recipe(
    "zeroshot_groups", "hand-written prompts per (class, group) ('a photo of a <class> <value phrase>'), "
    "class score = max over its groups; nothing is trained",
    "text", "group", "none", ZeroShotGroupsParams, "0", fit=fit_zeroshot_groups, check=check_named_groups)
