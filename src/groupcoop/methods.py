"""The methods, each a small declarative recipe registered by name in one table.

A recipe says what kind of classifier it makes (hand-written prompts, learned prompts, or a
linear head on the image features), which rows the classifier has (one per class or one per
(class, group)), which true group labels it needs, and carries its hyper-parameter schema: a
frozen settings class whose fields are the hyper-parameters, their types, ranges and
defaults. The defaults live here and nowhere else; a run's config may override any of them
and is validated against the schema before any work starts. This module imports no torch.

`needs_groups`, what a recipe needs beyond class labels (also written to metrics.json):

- "none": class labels only. Validation groups (true ones where the data has them, else the
  labeler's) serve model selection, as for every method.
- "train": groups of the training split for training. They come from `--groups`: the true
  bias labels by default, or a labeler's pseudo-groups (zeroshot, kmeans, pseudo) when the
  data has none or on request; GroupCoOp itself was made for pseudo-groups.
- "val": TRUE group labels of the validation split, which the method trains on (DFR). Such a
  recipe is refused on data whose validation split lacks them, and refuses `--groups`
  labelers: pseudo-groups would silently make it another method. It never reads the
  training split's labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, StrictBool, field_validator

from .errors import UserError, close_matches
from .settings import Frozen, Int, Number, TextList, build

SAMPLERS = ("natural", "group_balanced", "reweight")
AGGREGATES = ("max", "logsumexp", "mean")
Sampler = Literal["natural", "group_balanced", "reweight"]
Aggregate = Literal["max", "logsumexp", "mean"]
NEEDS = ("none", "train", "val")


def _number_list(value):
    """'0.1,1' or [0.1, 1] -> [0.1, 1] (YAML reads '--set c_values=0.1,1' as one string)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


PositiveList = Annotated[list[Annotated[Number, Field(gt=0, le=1e6)]], BeforeValidator(_number_list),
                         Field(min_length=1)]


@dataclass(frozen=True)
class Objective:
    """How the one training loop (train.py) uses the labels of a learned-rows method.

    targets: "class" (one row per class, cross-entropy on the class) or "group" (one row per
    (class, group), cross-entropy on the group); sampler: how an epoch draws the training
    examples; aggregate: class score from a class's rows; class_loss_weight: a class-level
    cross-entropy on the aggregated score; groupdro_eta: online GroupDRO over the training
    groups with this step size (None: plain average loss); anchor_weight: an L2 pull of the
    learned parameters toward their initial values.
    """

    targets: Literal["class", "group"]
    sampler: str = "natural"
    aggregate: str = "max"
    class_loss_weight: float = 0.0
    groupdro_eta: float | None = None
    anchor_weight: float = 0.0  # L2 pull of the rows' parameters toward their initial values


# --- hand-written prompts ----------------------------------------------------------------------

class ZeroShotParams(Frozen):
    """Zero-shot CLIP [Radford et al., ICML 2021]: hand-written class prompts averaged over
    templates; nothing is trained."""

    templates: Annotated[TextList, Field(min_length=1)] = ["a photo of a {}.", "a {}."]

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
    in labelers.py."""

    aggregate: Aggregate = "max"


# --- the training loop's schedule and optimiser ------------------------------------------------

class LoopParams(Frozen):
    """What every method trained by train.py's loop shares: the schedule and the optimiser."""

    epochs: Annotated[Int, Field(ge=1, le=100_000)] = 20
    batch_size: Annotated[Int, Field(ge=1, le=1_000_000)] = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[Number, Field(gt=0, le=10)] = 2e-3
    weight_decay: Annotated[Number, Field(ge=0, le=10)] = 0.0
    momentum: Annotated[Number, Field(ge=0, lt=1)] = 0.9  # sgd only
    warmup_epochs: Annotated[Int, Field(ge=0, le=100_000)] = 1
    patience: Annotated[Int, Field(ge=1, le=100_000)] = 8  # epochs without a better val worst-group acc

    def objective(self) -> Objective:
        raise TypeError(f"{type(self).__name__} defines no training objective")


class PromptParams(LoopParams):
    """What every learned-prompt method shares: the loop's settings and the context."""

    n_ctx: Annotated[Int, Field(ge=1, le=64)] = 16  # context vectors per prompt
    ctx_init: Annotated[str, Field(strict=True, min_length=1)] | None = "a photo of a"  # None: random context


class CoOpParams(PromptParams):
    """CoOp [Zhou, Yang, Loy, Liu, IJCV 2022]: a learned context for the class prompts, ERM on
    the class labels."""

    shared_ctx: StrictBool = True
    sampler: Sampler = "natural"

    def objective(self) -> Objective:
        return Objective("class", self.sampler)


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

    def objective(self) -> Objective:
        return Objective("class", self.sampler, groupdro_eta=self.eta)


class JTTParams(PromptParams):
    """Just Train Twice [Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang, Finn, ICML 2021]
    on CoOp: an ERM CoOp run of `first_epochs` epochs (its last epoch is kept, no model
    selection), then a fresh CoOp run on the training set with that run's misclassified
    examples upsampled `upweight` times (JTT's lambda_up; each error appears `upweight` times
    per epoch). No group labels are used for training; model selection of the second run uses
    the validation groups like every method. JTT's grid for lambda_up is {20, 50, 100}."""

    shared_ctx: StrictBool = True
    first_epochs: Annotated[Int, Field(ge=1, le=100_000)] = 2
    upweight: Annotated[Int, Field(ge=1, le=1000)] = 20

    def objective(self) -> Objective:
        return Objective("class", "natural")


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

    def objective(self) -> Objective:
        return Objective("group", self.sampler, self.aggregate, self.class_loss_weight, anchor_weight=self.ctx_reg)


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

    def objective(self) -> Objective:
        return Objective("group", self.sampler, self.aggregate, self.class_loss_weight, anchor_weight=0.0)


# --- logistic regression on the image features (sklearn) ------------------------------------------

class LinearProbeParams(Frozen):
    """CLIP's linear probe [Radford et al., ICML 2021, sec. 3.2 / appendix A.3]: L2-regularised
    logistic regression on the frozen image features (sklearn; L-BFGS as CLIP, Newton-Cholesky
    for two classes), ERM on the training split.
    CLIP sweeps C on a validation split; we fit every C of `c_values` and keep the one with the
    best validation worst-group accuracy (ties: better average, then smaller C), the selection
    rule of every method here. `standardize` fits on standardised features (folded back into
    the head's weights and bias)."""

    c_values: PositiveList = [0.01, 0.1, 1.0, 10.0, 100.0]
    standardize: StrictBool = True
    max_iter: Annotated[Int, Field(ge=10, le=100_000)] = 1000


class LinearProbeBalancedParams(LinearProbeParams):
    """The linear probe with a group-balanced loss: each training example weighted by the
    inverse frequency of its group, n / (G * n_g) (G = groups present), so every group
    carries the same total weight [the reweighting baseline of Sagawa et al., ICLR 2020;
    Idrissi et al., CLeaR 2022]."""


class DFRParams(Frozen):
    """Deep Feature Reweighting [Kirichenko, Izmailov, Wilson, ICLR 2023], DFR^Val on the frozen
    CLIP features, as in their `dfr_evaluate_spurious.py`: L1 logistic regression (liblinear)
    on group-balanced subsamples of the validation split. Tuning: `tune_repeats` times, split
    val in two random halves, fit on a group-balanced subsample of one half for every C of
    `c_values`, score worst-group accuracy on the other; the C with the best mean wins.
    Final: `repeats` group-balanced subsamples of the whole val split, one fit each with that
    C, coefficients and intercepts averaged. Features standardised (fit on val; the original
    fits the final scaler on the training split's features, we keep DFR on val alone).
    The original tunes on one half-split (`tune_repeats: 1`); we average five."""

    c_values: PositiveList = [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01]
    tune_repeats: Annotated[Int, Field(ge=1, le=1000)] = 5
    repeats: Annotated[Int, Field(ge=1, le=1000)] = 20
    standardize: StrictBool = True
    max_iter: Annotated[Int, Field(ge=10, le=100_000)] = 1000


# --- the table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    kind: Literal["text", "prompt", "linear"]  # hand-written prompts / learned prompts (train.py) / linear head (linear.py)
    prompts: Literal["class", "group"]  # the classifier's rows: one per class, or one per (class, group)
    needs_groups: Literal["none", "train", "val"]  # see the module docstring
    schema: type[Frozen]
    trainable: str  # trainable parameter count, as a formula (C classes, G groups per class, D feature width,
    #                 M context vectors of width W)

    @property
    def learned(self) -> bool:
        return self.kind != "text"

    @property
    def labels(self) -> str:
        """What labels the recipe needs, in words (for `groupcoop methods`)."""
        if self.kind == "text":
            return "none (group value phrases)" if self.prompts == "group" else "none"
        return {"none": "class", "train": "class + train groups (gt or --groups)",
                "val": "class + true val groups"}[self.needs_groups]

    def params(self, values: dict | None = None) -> Frozen:
        """The typed hyper-parameters: defaults overridden by `values`, validated."""
        return build(self.schema, values or {}, f"method {self.name} hyper-parameters")

    def defaults(self) -> dict:
        return self.schema().model_dump()


def _recipes(*recipes: Recipe) -> dict[str, Recipe]:
    return {r.name: r for r in recipes}


LOGREG_PARAMS = "C*D + C (D + 1 for 2 classes)"

METHODS = _recipes(
    Recipe("zeroshot", "hand-written class prompts, averaged over templates; nothing is trained",
           "text", "class", "none", ZeroShotParams, "0"),
    Recipe("coop", "CoOp: learned context for class prompts, ERM on the class labels",
           "prompt", "class", "none", CoOpParams, "M*W (C*M*W with shared_ctx=false)"),
    Recipe("groupcoop", "GroupCoOp: one learned prompt per (class, group), group-wise cross-entropy, "
           "group-balanced sampling, class score = aggregate of its group prompts",
           "prompt", "group", "train", GroupCoOpParams, "C*G*M*W (M*W with shared_ctx=true)"),
    Recipe("zeroshot_groups", "hand-written prompts per (class, group) ('a photo of a <class> <value phrase>'), "
           "class score = max over its groups; nothing is trained",
           "text", "group", "none", ZeroShotGroupsParams, "0"),
    Recipe("linear_probe", "CLIP linear probe: logistic regression on the image features, ERM (C chosen on val)",
           "linear", "class", "none", LinearProbeParams, LOGREG_PARAMS),
    Recipe("linear_probe_balanced", "linear probe with a group-balanced loss (inverse group frequency weights)",
           "linear", "class", "train", LinearProbeBalancedParams, LOGREG_PARAMS),
    Recipe("group_linear", "one linear vector per (class, group) trained like GroupCoOp (no text encoder)",
           "linear", "group", "train", GroupLinearParams, "C*G*D (+ C*G with bias=true)"),
    Recipe("dfr", "DFR: group-balanced L1 logistic regression retrained on the val split's true groups",
           "linear", "class", "val", DFRParams, LOGREG_PARAMS),
    Recipe("coop_balanced", "CoOp with group-balanced sampling",
           "prompt", "class", "train", CoOpBalancedParams, "M*W"),
    Recipe("coop_groupdro", "CoOp's class prompts trained with online GroupDRO group weights",
           "prompt", "class", "train", CoOpGroupDROParams, "M*W"),
    Recipe("jtt", "Just Train Twice on CoOp: an ERM run's training errors upsampled in a second run",
           "prompt", "class", "none", JTTParams, "M*W (per run; 2 runs)"),
)


def get_method(name: str) -> Recipe:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'{close_matches(name, METHODS)}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
