"""The methods, each a small declarative recipe registered by name in one table.

A recipe says which prompts exist (one per class or one per group), whether they are
learned, which loss and sampler train them and how class scores are formed. All
hyper-parameters and their defaults live here; a run's config may override any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError, close_matches

COMMON_DEFAULTS = {
    "epochs": 20,
    "batch_size": 128,
    "optimizer": "adamw",  # or sgd
    "lr": 2e-3,
    "weight_decay": 0.0,
    "momentum": 0.9,  # sgd only
    "warmup_epochs": 1,
    "patience": 8,  # epochs without a better validation worst-group accuracy before stopping
    "n_ctx": 16,
    "ctx_init": "a photo of a",  # null for random context
}


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    prompts: str  # "class": one prompt per class; "group": one per (class, group)
    learned: bool
    defaults: dict = field(default_factory=dict)

    def hyperparameters(self, overrides: dict | None = None) -> dict:
        hp = dict(self.defaults)
        for key, value in (overrides or {}).items():
            if key not in hp:
                raise UserError(f"method {self.name} has no hyper-parameter '{key}'{close_matches(key, hp)}; "
                                f"valid: {', '.join(sorted(hp))}")
            hp[key] = value
        return hp


METHODS = {
    "zeroshot": Recipe(
        "zeroshot", "hand-written class prompts, averaged over templates; nothing is trained", "class", False,
        {"templates": ["a photo of a {}.", "a {}."]},
    ),
    "coop": Recipe(
        "coop", "CoOp: learned context for class prompts, ERM on the class labels", "class", True,
        {**COMMON_DEFAULTS, "shared_ctx": True, "sampler": "natural"},
    ),
    "groupcoop": Recipe(
        "groupcoop", "GroupCoOp: one learned prompt per (class, group), group-wise cross-entropy, "
        "group-balanced sampling, class score = aggregate of its group prompts", "group", True,
        {**COMMON_DEFAULTS, "shared_ctx": False, "sampler": "group_balanced", "group_words": True,
         "aggregate": "max", "class_loss_weight": 0.0},
    ),
}

SAMPLERS = ("natural", "group_balanced", "reweight")
AGGREGATES = ("max", "logsumexp", "mean")


def get_method(name: str) -> Recipe:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'{close_matches(name, METHODS)}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def check_hyperparameters(recipe: Recipe, hp: dict) -> None:
    """Reject values the training loop cannot use, with the valid choices."""
    if hp.get("sampler", "natural") not in SAMPLERS:
        raise UserError(f"sampler '{hp['sampler']}' is not one of {', '.join(SAMPLERS)}")
    if hp.get("aggregate", "max") not in AGGREGATES:
        raise UserError(f"aggregate '{hp['aggregate']}' is not one of {', '.join(AGGREGATES)}")
    if recipe.learned and hp["optimizer"] not in ("adamw", "sgd"):
        raise UserError(f"optimizer '{hp['optimizer']}' is not one of adamw, sgd")
    for key in ("epochs", "batch_size", "n_ctx"):
        if key in hp and (not isinstance(hp[key], int) or hp[key] < 1):
            raise UserError(f"{key} must be a positive integer, got {hp[key]!r}")
