"""What a task of the world is (`SyntheticTask`, checked when made) and the built-in tasks (`TASKS`).

A task's class is the shape family; its biases are other attributes of the world, each with the
values the task uses, and it fixes the exact number of images of every group in every split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...errors import UserError, close_matches
from .attributes import ATTRIBUTES, FAMILIES, STREAMS



@dataclass(frozen=True)
class SyntheticTask:
    """A group-robustness task: class = shape family, bias attributes of the world.

    `counts[split][g]` is the exact number of images of group g (group index convention of
    data/base.py: the first bias attribute is the least significant digit).
    `render_seed` is None for the built-in tasks (the dataset seed renders the images); a
    random task carries its own, so different random tasks render different images.
    `drawn` holds a random task's drawn parameters (see `random_task`); empty otherwise.
    A task whose attributes, values, classes or counts the world cannot produce is refused
    when it is made, with one line (`check_task`).
    """

    name: str
    description: str
    biases: tuple[tuple[str, tuple[str, ...]], ...]  # (attribute, values used)
    counts: dict[str, tuple[int, ...]]
    classes: tuple[str, ...] = ("angular", "round")
    render_seed: int | None = None
    drawn: dict = field(default_factory=dict)

    def __post_init__(self):
        check_task(self)


def check_task(task: SyntheticTask) -> None:
    """Every attribute a bias of the world (not the shape, which makes the class), values it has,
    classes that are shape families, and one whole count per group of each split."""
    where = f"synthetic task '{task.name}'"
    bias_attributes = [a for a in ATTRIBUTES if a != "shape"]
    if not task.biases:
        raise UserError(f"{where} has no bias attribute; give at least one of: {', '.join(bias_attributes)}")
    names = [attr for attr, _ in task.biases]
    for attr, values in task.biases:
        if attr not in bias_attributes:
            why = "it makes the class" if attr == "shape" else "the world has no such attribute"
            raise UserError(f"{where}: '{attr}' cannot be a bias attribute ({why}){close_matches(attr, bias_attributes)}; "
                            f"choose from: {', '.join(bias_attributes)}")
        known = ATTRIBUTES[attr]
        for value in values:
            if value not in known:
                raise UserError(f"{where}: {attr} has no value '{value}'{close_matches(str(value), known)}; "
                                f"its values are: {', '.join(known)}")
        if len(values) < 2 or len(set(values)) != len(values):
            raise UserError(f"{where}: {attr} needs two or more distinct values, got {list(values)}")
    if len(set(names)) != len(names):
        raise UserError(f"{where} names a bias attribute twice: {names}")
    if len(task.classes) < 2 or len(set(task.classes)) != len(task.classes) or not set(task.classes) <= set(FAMILIES):
        raise UserError(f"{where}: classes must be distinct shape families ({', '.join(FAMILIES)}), got {list(task.classes)}")
    n_groups = len(task.classes) * math.prod(len(v) for _, v in task.biases)
    for split, counts in task.counts.items():
        if split not in STREAMS or split in ("pretrain", "heldout", "caption"):
            raise UserError(f"{where}: unknown split '{split}'; use train, val and test")
        if len(counts) != n_groups or not all(isinstance(c, (int, np.integer)) and c >= 0 for c in counts):
            raise UserError(f"{where}: {split} needs {n_groups} whole counts >= 0 (one per group), got {list(counts)}")


def _multibias_counts(n_biases: int, aligned: int, ratio: float, minimum: int) -> tuple[int, ...]:
    """Per-group counts where each bias that disagrees with the class cuts the count by `ratio`."""
    counts = []
    for y in range(2):
        for code in range(2 ** n_biases):
            conflicts = sum(((code >> j) & 1) != y for j in range(n_biases))
            counts.append(max(minimum, round(aligned * ratio**conflicts)))
    return tuple(counts)


TASKS = {
    "synth-waterbirds": SyntheticTask(
        name="synth-waterbirds",
        description="one bias: shape family vs grass/water background, Waterbirds' exact group counts",
        biases=(("background", ("grass", "water")),),
        counts={
            "train": (3498, 184, 56, 1057),
            "val": (467, 466, 133, 133),
            "test": (2255, 2255, 642, 642),
        },
    ),
    "synth-multiceleba": SyntheticTask(
        name="synth-multiceleba",
        description="two biases (background, colour), 8 groups shaped like MultiCelebA's imbalance",
        biases=(("background", ("grass", "water")), ("colour", ("red", "yellow"))),
        # MultiCelebA's training cells scaled by about 1/10, keeping its shape: aligned cells
        # (g2, g5) dominate, the doubly-conflicting ones (g1, g6) are tiny.
        counts={
            "train": (80, 10, 1622, 80, 220, 4450, 20, 220),
            "val": (100,) * 8,
            "test": (250,) * 8,
        },
    ),
    "synth-threebias": SyntheticTask(
        name="synth-threebias",
        description="three biases (background, colour, size), 16 groups, each conflict 10x rarer",
        biases=(("background", ("grass", "water")), ("colour", ("red", "yellow")), ("size", ("small", "large"))),
        counts={
            "train": _multibias_counts(3, aligned=1500, ratio=0.1, minimum=5),
            "val": (60,) * 16,
            "test": (150,) * 16,
        },
    ),
}
