"""The methods table: every method, registered by name in one place.

A method is one module here: its hyper-parameter schema (a frozen settings class whose
fields are the hyper-parameters, their types, ranges and defaults; the defaults live there and
nowhere else), its trainer, and its `Recipe` (`base.py`) naming both. A run's config may
override any default and is validated against the schema before any work starts. Adding a
method is its module plus two lines here, its import and its entry in `METHODS`
(docs/extending.md).

Method modules import no torch at module level: this table is read by `--help` and by the
settings check, which refuse bad input before anything heavy loads. Trainers import the
training code (loop.py, linear.py, prompts.py) when they run.

`needs_groups`, what a recipe needs beyond class labels (also written to metrics.json):

- "none": class labels only. Validation groups (true ones where the data has them, else the
  labeler's) serve model selection, as for every method.
- "train": groups of the training split for training. They come from `--groups`: the true
  bias labels by default, or a labeler's pseudo-groups (zeroshot, kmeans, pseudo) when the
  data has none or on request; GroupCoOp itself was made for pseudo-groups.
- "val": group labels of the validation split, which the method trains on (DFR): its true ones,
  and then `--groups` labelers are refused (pseudo-groups would silently make it another
  method); where val has none (or they are hidden), a labeler's val groups (`--groups`, pseudo
  by default). It never reads the training split's labels.
"""

from __future__ import annotations

from ..errors import UserError, close_matches
from .afr import AFR, AFRParams
from .base import NEEDS, FitTask, Fitted, LoopParams, PromptParams, Recipe, RunPlan, SplitData
from .coop import COOP, COOP_BALANCED, COOP_GROUPDRO, CoOpBalancedParams, CoOpGroupDROParams, CoOpParams
from .dfr import DFR, DFRParams
from .group_linear import GROUP_LINEAR, GroupLinearParams
from .groupcoop import GROUPCOOP, GroupCoOpParams
from .jtt import JTT, JTTParams
from .linear_probe import LINEAR_PROBE, LINEAR_PROBE_BALANCED, LinearProbeBalancedParams, LinearProbeParams
from .orth import ORTH_CALI, ORTH_PROJ, OrthCaliParams, OrthProjParams
from .prism import PRISM_MINI, PrismMiniParams
from .roboshot import ROBOSHOT, RoboShotParams
from .zeroshot import ZEROSHOT, ZEROSHOT_GROUPS, ZeroShotGroupsParams, ZeroShotParams

METHODS: dict[str, Recipe] = {recipe.name: recipe for recipe in (  # in the order `groupcoop methods` lists them
    ZEROSHOT,
    COOP,
    GROUPCOOP,
    ZEROSHOT_GROUPS,
    LINEAR_PROBE,
    LINEAR_PROBE_BALANCED,
    GROUP_LINEAR,
    DFR,
    COOP_BALANCED,
    COOP_GROUPDRO,
    JTT,
    ORTH_PROJ,
    ORTH_CALI,
    ROBOSHOT,
    PRISM_MINI,
    AFR,
)}


def get_method(name: str) -> Recipe:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'{close_matches(name, METHODS)}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = [
    "METHODS", "NEEDS", "get_method", "Recipe", "FitTask", "Fitted", "RunPlan", "SplitData", "LoopParams",
    "PromptParams", "ZeroShotParams", "ZeroShotGroupsParams", "CoOpParams", "CoOpBalancedParams",
    "CoOpGroupDROParams", "GroupCoOpParams", "GroupLinearParams", "LinearProbeParams", "LinearProbeBalancedParams",
    "DFRParams", "JTTParams",
    "OrthProjParams", "OrthCaliParams",
    "RoboShotParams", "PrismMiniParams",
    "AFRParams",
]
