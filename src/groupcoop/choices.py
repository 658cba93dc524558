"""Names a user chooses from, each said once: the settings validate with these types, the
command line offers these tuples, and the code that acts on a choice reads its name here.

(Group sources and pseudo-labeler variants are named by the labelers' own tables in
`labelers.py`, method names by the methods table in `methods/`.) A leaf module.
"""

from __future__ import annotations

from typing import Literal, get_args

FeatureDtype = Literal["float32", "float16"]  # how cached image features are stored
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # autocast while encoding images
Sampler = Literal["natural", "group_balanced", "reweight"]  # how a training epoch draws its examples
Aggregate = Literal["max", "logsumexp", "mean"]  # a class's score from its rows' logits

DEVICE_PATTERN = r"cpu|cuda(:\d+)?|mps"  # the torch devices a run may name (checked against the machine later)

FEATURE_DTYPES: tuple[str, ...] = get_args(FeatureDtype)
PRECISIONS: tuple[str, ...] = get_args(Precision)
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
