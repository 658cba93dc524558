"""Random tasks of the world, `synth-random:<seed>`: biases, value pairs, conflict shares and sizes drawn from the seed."""

from __future__ import annotations

import math
import re

import numpy as np

from ...errors import UserError
from ..base import decode_group
from .attributes import ATTRIBUTES
from .pretraining import USUAL_BACKGROUND
from .tasks import SyntheticTask

RANDOM_TASK_PREFIX = "synth-random:"
RANDOM_BIAS_ATTRIBUTES = ("background", "colour", "size", "pattern", "mark")
RANDOM_BIAS_COUNT = (1, 3)  # biases per task, drawn uniformly (both ends included)
_RANDOM_TASK_KEY = 7_170_331  # fixed second seed word: random tasks' draws are their own stream
RANDOM_CONFLICT_RANGE = (0.01, 0.20)  # bias-conflicting share per bias, drawn log-uniformly
RANDOM_MAJOR_CLASS_RANGE = (0.5, 0.75)  # share of the larger class
RANDOM_TRAIN_RANGE = (2000, 10000)  # training images before rounding and the per-group minimum
RANDOM_MIN_GROUP = 5
RANDOM_VAL_TOTAL, RANDOM_TEST_TOTAL = 1200, 3000  # balanced: ceil(total / groups) per group


def parse_random_task_name(name: str) -> int | None:
    """The seed of a name `synth-random:<seed>`; None when the name is not of that form."""
    if not name.startswith(RANDOM_TASK_PREFIX):
        return None
    text = name[len(RANDOM_TASK_PREFIX):]
    if not re.fullmatch(r"[0-9]+", text):
        raise UserError(
            f"bad random task name '{name}': after '{RANDOM_TASK_PREFIX}' give a whole number >= 0 "
            f"as the seed, e.g. {RANDOM_TASK_PREFIX}7"
        )
    return int(text)


def describe_random_tasks() -> str:
    """What a `synth-random:<seed>` task is, in one line, from the constants `random_task` draws with."""
    low, high = RANDOM_BIAS_COUNT
    attributes = ", ".join(RANDOM_BIAS_ATTRIBUTES[:-1]) + " and " + RANDOM_BIAS_ATTRIBUTES[-1]
    conflict = "-".join(f"{100 * p:g}" for p in RANDOM_CONFLICT_RANGE)
    train = "-".join(f"{n // 1000}k" if n % 1000 == 0 else str(n) for n in RANDOM_TRAIN_RANGE)
    return (f"{low}-{high} biases among {attributes}, random value pairs and orientations, {conflict}% conflicting "
            f"per bias, {train} train images")


def caption_orientation(pair: tuple[str, str]) -> str:
    """Whether a background pair's majority orientation agrees with the captions' bias.

    Value 0 of the pair is the angular majority, value 1 the round one. Captions name
    "angular shape" most on grass and "round shape" most on water (USUAL_BACKGROUND), and
    least on the other family's usual background. So angular-on-grass or round-on-water is
    "with" the captions, angular-on-water or round-on-grass "against"; a pair with only one
    of grass/water still leans one way ("with" or "against"; the two rules never disagree
    since the values differ), and a pair with neither is "n/a".
    """
    usual = USUAL_BACKGROUND
    if pair[0] == usual["angular"] or pair[1] == usual["round"]:
        return "with"
    if pair[0] == usual["round"] or pair[1] == usual["angular"]:
        return "against"
    return "n/a"


def _group_digits(g: int, n_biases: int) -> tuple[int, tuple[int, ...]]:
    y, digits = decode_group(g, [2] * n_biases)
    return y, tuple(digits)


def _conflicts(g: int, n_biases: int, j: int) -> bool:
    """Whether bias j's value in group g is the other class's majority value."""
    y, digits = _group_digits(g, n_biases)
    return digits[j] != y


def random_task(seed: int) -> SyntheticTask:
    """A random two-valued multi-bias task of the built-in world, deterministic in `seed`.

    Draws 1-3 bias attributes (uniform count) without replacement from background, colour,
    size, pattern and mark, in random order; for each an ordered pair of two of its world values (value 0
    is the majority value of class 0, "angular shape", value 1 that of "round shape", so the
    order is a random majority orientation, with or against the captions' background bias);
    a bias-conflicting share p_j per bias, log-uniform in [0.01, 0.20]; the larger class's
    share, uniform in [0.5, 0.75], and which class it is; a training size N uniform in
    [2000, 10000]. Training group (y, values) gets
    round(N * share_y * prod_j (p_j if value_j conflicts with y else 1 - p_j)) images, at
    least 5; val and test are balanced, ceil(1200 / groups) and ceil(3000 / groups) per group.
    In the description "background water/sand" reads "angular mostly on water, round mostly
    on sand"; the percentages and sizes there are those of the realised training split.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"a random task's seed must be a whole number >= 0, not {seed!r}")
    seed = int(seed)
    rng = np.random.default_rng([seed, _RANDOM_TASK_KEY])
    n_biases = int(rng.integers(RANDOM_BIAS_COUNT[0], RANDOM_BIAS_COUNT[1] + 1))
    attributes = [str(a) for a in rng.choice(RANDOM_BIAS_ATTRIBUTES, size=n_biases, replace=False)]
    biases = tuple(
        (attr, tuple(str(v) for v in rng.choice(ATTRIBUTES[attr], size=2, replace=False))) for attr in attributes
    )
    low, high = RANDOM_CONFLICT_RANGE
    conflicting = tuple(float(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(n_biases))
    major_share = float(rng.uniform(*RANDOM_MAJOR_CLASS_RANGE))
    major_class = int(rng.integers(2))
    class_shares = (major_share, 1 - major_share) if major_class == 0 else (1 - major_share, major_share)
    train_size = int(rng.integers(RANDOM_TRAIN_RANGE[0], RANDOM_TRAIN_RANGE[1] + 1))
    render_seed = int(np.random.default_rng([seed, _RANDOM_TASK_KEY, 1]).integers(1 << 32, 1 << 62))

    n_groups = 2 ** (n_biases + 1)
    train = []
    for g in range(n_groups):
        y, digits = _group_digits(g, n_biases)
        share = class_shares[y]
        for a, p in zip(digits, conflicting):
            share *= p if a != y else 1 - p
        train.append(max(RANDOM_MIN_GROUP, int(round(train_size * share))))
    counts = {
        "train": tuple(train),
        "val": (math.ceil(RANDOM_VAL_TOTAL / n_groups),) * n_groups,
        "test": (math.ceil(RANDOM_TEST_TOTAL / n_groups),) * n_groups,
    }

    total = sum(train)
    parts = []
    for j, (attr, pair) in enumerate(biases):
        realised = sum(c for g, c in enumerate(train) if _conflicts(g, n_biases, j))
        note = f"conflicting {realised / total:.1%}"
        if attr == "background":
            orientation = caption_orientation(pair)
            note += ", captions n/a" if orientation == "n/a" else f", {orientation} captions"
        parts.append(f"{attr} {pair[0]}/{pair[1]} ({note})")
    angular = sum(train[: n_groups // 2]) / total
    description = (
        f"{n_biases} bias{'es' if n_biases > 1 else ''}: {', '.join(parts)}; angular {angular:.0%}; "
        f"{total} train images; smallest group {min(train)}"
    )
    return SyntheticTask(
        name=f"{RANDOM_TASK_PREFIX}{seed}",
        description=description,
        biases=biases,
        counts=counts,
        render_seed=render_seed,
        drawn={"conflicting": conflicting, "class_shares": class_shares, "train_size": train_size},
    )
