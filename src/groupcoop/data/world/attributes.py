"""The world's attributes and their values, its seeded random streams, and how prompts word a value.

Every image has independent attributes, each value with a name used in captions and prompts:
shape (8, in two families: round and angular), colour (6), background (5), size (2), a surface
pattern on the object (plain, striped, dotted) and a mark (none, or a small tag in a corner).
"""

from __future__ import annotations

import numpy as np

SHAPES = ["circle", "ring", "oval", "semicircle", "square", "triangle", "diamond", "cross"]
FAMILIES = {"round": ["circle", "ring", "oval", "semicircle"], "angular": ["square", "triangle", "diamond", "cross"]}
COLOURS = {
    "red": (0.85, 0.1, 0.1), "yellow": (0.95, 0.85, 0.1), "purple": (0.55, 0.15, 0.7),
    "black": (0.05, 0.05, 0.05), "white": (0.97, 0.97, 0.97), "blue": (0.1, 0.25, 0.95),
}
BACKGROUNDS = {
    "grass": (0.3, 0.62, 0.2), "water": (0.12, 0.38, 0.72), "sand": (0.86, 0.74, 0.5),
    "brick": (0.62, 0.28, 0.2), "snow": (0.86, 0.9, 0.95),
}
SIZES = {"small": 5.0, "large": 8.0}
PATTERNS = ["plain", "striped", "dotted"]  # drawn on the object's surface
MARKS = ["none", "tag"]  # a small tag in a corner of the image, unrelated to the object
ATTRIBUTES = {
    "shape": SHAPES,
    "colour": list(COLOURS),
    "background": list(BACKGROUNDS),
    "size": list(SIZES),
    "pattern": PATTERNS,
    "mark": MARKS,
}

# Each use of randomness has its own stream, so an image is rendered again from (seed, stream, index).
STREAMS = {"pretrain": 0, "train": 1, "val": 2, "test": 3, "heldout": 4, "caption": 5, "view": 6}


def family_of(shape: str) -> str:
    return next(f for f, members in FAMILIES.items() if shape in members)


def stream_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], index])


def value_phrase(attribute: str, value: str) -> str:
    """Prompt phrase for an attribute value; "{}" marks where the class name goes ("{} on water")."""
    if attribute == "background":
        return f"{{}} on {value}"
    if attribute == "mark":
        return "{} with a tag" if value == "tag" else "{} with no tag"
    return f"{value} {{}}"


def attribute_prompts(attribute: str) -> dict[str, list[str]]:
    """Zero-shot prompt ensembles for each value of a world attribute, in caption style.

    Every other attribute's prompts average over every shape noun, since captions always name
    an object; the ensemble is the usual CLIP template trick, not a peek at the labels. The
    phrases are the ones task prompts use ("a striped circle", "a circle with a tag").
    """
    if attribute == "shape":
        return {s: [f"a {s}", f"a photo of a {s}."] for s in SHAPES}
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute}")
    return {v: [f"a {value_phrase(attribute, v).format(s)}" for s in SHAPES] for v in ATTRIBUTES[attribute]}
