"""Names a user chooses from, each said once: the settings validate with these types, the
command line offers these tuples, and the code that acts on a choice reads its name here.

(Group sources and pseudo-labeler variants are named by their own tables in
`grouping/labelers.py` and `grouping/pseudo.py`, method names by the methods table in `methods/`.) A leaf module.
"""

from __future__ import annotations

from typing import Literal, get_args

FeatureDtype = Literal["float32", "float16"]  # how cached image features are stored
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # autocast while encoding images
Sampler = Literal["natural", "group_balanced", "reweight"]  # how a training epoch draws its examples
Aggregate = Literal["max", "logsumexp", "mean"]  # a class's score from its rows' logits
# how the validation split selects a model (epoch, C, ...): `auto` = its true groups when it has them,
# else labelfree.SELECTION_FALLBACK; `labeler` = the labeler's val groups even where true ones exist;
# `worst_class` = worst per-class accuracy (no group labels); `average` = average accuracy
Selection = Literal["auto", "labeler", "worst_class", "average"]
HideableSplit = Literal["train", "val"]  # splits whose bias labels a run may drop (test always reports true groups)
DiscoveryScore = Literal["cramers_v", "nmi", "error_concentration"]  # how bias discovery ranks an attribute
AUTO = "auto"  # `bias_prompts: auto`: the labeler's attributes come from bias discovery
DEFAULT_METHOD = "groupcoop"  # the method of `groupcoop train` without --method

DEVICE_PATTERN = r"cpu|cuda(:\d+)?|mps"  # the torch devices a run may name (checked against the machine later)

FEATURE_DTYPES: tuple[str, ...] = get_args(FeatureDtype)
PRECISIONS: tuple[str, ...] = get_args(Precision)
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
SELECTIONS: tuple[str, ...] = get_args(Selection)
HIDEABLE_SPLITS: tuple[str, ...] = get_args(HideableSplit)
DISCOVERY_SCORES: tuple[str, ...] = get_args(DiscoveryScore)
