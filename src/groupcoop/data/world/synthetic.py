"""The built-in synthetic world: small rendered scenes of one object on a textured background.

Every image has independent attributes, each value with a name used in captions and prompts:
shape (8, in two families: round and angular), colour (6), background (5), size (2), a surface
pattern on the object (plain, striped, dotted) and a mark (none, or a small tag in a corner).
Rendering is deterministic given (seed, stream, index), so a dataset is a table of
attributes plus a seed, and any image can be rendered again, byte for byte, in any process.

Why the world is shaped like this (see shared/docs/method.md, "The built-in synthetic world"):
- The background fills most of the image and the object is small, so the background is the
  easy, spurious cue and the shape is the hard, causal one.
- Downstream classes are shape *families* ("round shape", "angular shape"). Pretraining
  captions name the family only now and then, and more often on the family's usual
  background (round things on water, angular things on grass): zero-shot class prompts are
  weakly grounded and inherit a background bias, as "waterbird" does in web-trained CLIP.
- A tenth of the backgrounds are tinted towards another background's colour (their texture
  stays), so zero-shot recognition of the background is good but not perfect.
- Bias attributes span real CLIP's range of zero-shot recognisability (docs/world.md): captions
  name background, colour and size often, the pattern rarely and the mark never, so zero-shot
  names the first three well, the pattern partly and the mark hardly at all, while the image
  encoder sees all of them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import Image

from ...errors import UserError, close_matches
from ..base import decode_group

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
# How often a pretraining caption names each attribute's value (shape: the shape word, which a
# caption replaces by the family word now and then). Pattern is named rarely and the mark never,
# like the hospital tokens of chest X-rays: zero-shot then knows background, colour and size well,
# the pattern partly and the mark not at all (`groupcoop world` measures it).
CAPTION_RATES = {"size": 0.4, "pattern": 0.15, "colour": 0.7, "background": 0.7, "mark": 0.0}
# Captions name a family more often on its usual background (the world's "web bias").
USUAL_BACKGROUND = {"round": "water", "angular": "grass"}
TINT_PROBABILITY = 0.1
# In task images whose bias is the background, this share shows a shoreline of the other
# background value: zero-shot background prediction is then right most of the time, not always.
SHORE_PROBABILITY = 0.25
IMAGE_SIZE = 32

_STREAMS = {"pretrain": 0, "train": 1, "val": 2, "test": 3, "heldout": 4, "caption": 5, "view": 6}


def family_of(shape: str) -> str:
    return next(f for f, members in FAMILIES.items() if shape in members)


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], index])


# --- rendering -----------------------------------------------------------------------

def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in object radii) to the shape's outline; negative inside."""
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.7) - 0.3
    if shape == "oval":
        return np.hypot(u, v / 0.5) - 1.0
    if shape == "semicircle":
        return np.maximum(np.hypot(u, v - 0.4) - 1.1, v - 0.4)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.8
    if shape == "triangle":
        return np.maximum(v - 0.55, 0.866 * np.abs(u) - 0.5 * v - 0.55)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) - 1.05
    if shape == "cross":
        bar_h = np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.33)
        bar_v = np.maximum(np.abs(u) - 0.33, np.abs(v) - 1.0)
        return np.minimum(bar_h, bar_v)
    raise ValueError(f"unknown shape {shape}")


def _background(name: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = np.array(BACKGROUNDS[name])
    if rng.random() < TINT_PROBABILITY:
        other = rng.choice([b for b in BACKGROUNDS if b != name])
        base = 0.45 * base + 0.55 * np.array(BACKGROUNDS[other])
    base = base * rng.uniform(0.85, 1.15)
    n = IMAGE_SIZE
    if name == "grass":  # vertical blades
        tex = 0.12 * np.repeat(rng.standard_normal((1, n)), n, axis=0) + 0.06 * rng.standard_normal((n, n))
    elif name == "water":  # horizontal waves
        freq, phase = rng.uniform(0.5, 0.9), rng.uniform(0, 2 * np.pi)
        tex = 0.14 * np.sin(freq * yy + 0.3 * np.sin(0.3 * xx) + phase)
    elif name == "sand":  # fine speckle
        tex = 0.09 * rng.standard_normal((n, n))
    elif name == "brick":  # mortar grid, rows offset by half a brick
        off = rng.integers(0, 8)
        row = (yy // 4).astype(int)
        mortar = (yy % 4 == 0) | (((xx + off + 4 * (row % 2)) % 8) == 0)
        tex = np.where(mortar, 0.3, 0.0) + 0.04 * rng.standard_normal((n, n))
    else:  # snow: soft blotches
        blot = rng.standard_normal((n // 8, n // 8))
        tex = 0.05 * np.kron(blot, np.ones((8, 8))) + 0.03 * rng.standard_normal((n, n))
    return np.clip(base[None, None, :] + tex[:, :, None], 0, 1)


def _surface(colour_rgb: np.ndarray, pattern: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray,
             radius: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The object's surface colour per pixel: plain, or stripes / dots in a contrasting colour."""
    n = IMAGE_SIZE
    surface = np.broadcast_to(colour_rgb, (n, n, 3))
    if pattern == "plain":
        return surface
    contrast = np.full(3, 0.97) if colour_rgb.mean() < 0.5 else np.full(3, 0.05)
    if pattern == "striped":  # soft-edged stripes across the object, about 3 px apart
        period, phase, angle = rng.uniform(2.8, 3.4), rng.uniform(0, 1), rng.uniform(0, np.pi)
        along = (np.cos(angle) * u + np.sin(angle) * v) * radius / period + phase
        weight = np.clip(2.5 * np.cos(2 * np.pi * along), 0, 1)
    elif pattern == "dotted":  # a grid of round dots, about 3.5 px apart
        period = rng.uniform(3.2, 3.8)
        ox, oy = rng.uniform(0, period, size=2)
        gx = np.mod(xx + 0.5 - ox, period) - period / 2
        gy = np.mod(yy + 0.5 - oy, period) - period / 2
        weight = np.clip(1.4 - np.hypot(gx, gy) * 1.6, 0, 1)
    else:
        raise ValueError(f"unknown pattern {pattern}")
    weight = 0.6 * weight[:, :, None]
    return surface * (1 - weight) + contrast * weight


def _draw_mark(img: np.ndarray, mark: str, rng: np.random.Generator) -> np.ndarray:
    """`tag`: a 5 x 5 px white tag with a dark frame in a random corner, drawn over everything."""
    if mark == "none":
        return img
    if mark != "tag":
        raise ValueError(f"unknown mark {mark}")
    n, side, inset = IMAGE_SIZE, 5, 1
    top = inset if rng.random() < 0.5 else n - inset - side
    left = inset if rng.random() < 0.5 else n - inset - side
    img = img.copy()
    img[top:top + side, left:left + side] = 0.08
    img[top + 1:top + side - 1, left + 1:left + side - 1] = 0.97
    return img


def render(shape: str, colour: str, background: str, size: str, pattern: str, mark: str,
           rng: np.random.Generator, shore: str = "") -> np.ndarray:
    """One RGB image (IMAGE_SIZE x IMAGE_SIZE x 3, uint8) drawn with the given generator.

    `shore` names a second background that fills a band of 30-48% of the rows (a shoreline):
    the labelled background still covers most of the image, but not all of it.
    """
    n = IMAGE_SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    img = _background(background, rng, yy, xx)
    if shore:
        band = int(round(n * rng.uniform(0.3, 0.48)))
        rows = slice(0, band) if rng.random() < 0.5 else slice(n - band, n)
        img[rows] = _background(shore, rng, yy, xx)[rows]
    radius = SIZES[size] * rng.uniform(0.9, 1.1)
    margin = radius + 1.5
    cx, cy = rng.uniform(margin, n - margin, size=2)
    angle = rng.uniform(-0.3, 0.3)
    du, dv = (xx + 0.5 - cx) / radius, (yy + 0.5 - cy) / radius
    u = np.cos(angle) * du + np.sin(angle) * dv
    v = -np.sin(angle) * du + np.cos(angle) * dv
    dist = _shape_distance(shape, u, v) * radius  # in pixels
    fill = np.clip(0.5 - dist, 0, 1)[:, :, None]
    outline = np.clip(1.2 - np.abs(dist + 0.6), 0, 1)[:, :, None]
    colour_rgb = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 0.04, 3), 0, 1)
    img = img * (1 - fill) + _surface(colour_rgb, pattern, rng, u, v, radius, yy, xx) * fill
    img = img * (1 - 0.6 * outline)
    img = _draw_mark(img, mark, rng)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# --- captions for pretraining ---------------------------------------------------------

def caption(shape: str, colour: str, background: str, size: str, pattern: str, mark: str,
            rng: np.random.Generator, rates: dict[str, float] | None = None) -> str:
    """A short caption naming a random subset of the attributes (CAPTION_RATES); the family
    word sometimes instead of the shape; the pattern rarely; the mark never."""
    family = family_of(shape)
    if background == USUAL_BACKGROUND[family]:
        p_family = 0.3
    elif background in USUAL_BACKGROUND.values():
        p_family = 0.04
    else:
        p_family = 0.12
    noun = f"{family} shape" if rng.random() < p_family else shape
    rates = {**CAPTION_RATES, **(rates or {})}
    named = {a: rng.random() < rates[a] for a in CAPTION_RATES}  # one draw each, always
    words = [value for a, value in (("size", size), ("pattern", pattern), ("colour", colour)) if named[a]]
    words.append(noun)
    text = " ".join(words)
    if named["background"]:
        text += f" on {background}"
    article = "an" if text[0] in "aeiou" else "a"
    return f"a photo of {article} {text}." if rng.random() < 0.3 else f"{article} {text}"


def pretraining_attributes(seed: int, index: int) -> tuple[list[str], np.random.Generator]:
    """The attributes of pretraining image `index` (independent, uniform) and the generator that renders it."""
    rng = _rng(seed, "pretrain", index)
    return [str(rng.choice(values)) for values in ATTRIBUTES.values()], rng


def pretraining_caption(seed: int, index: int, attrs: list[str], rates: dict[str, float] | None = None) -> str:
    """The caption of pretraining image `index`, from its own stream (captions never need the renders).
    `rates` overrides CAPTION_RATES (calibration runs of scripts/pretrain_tiny.py)."""
    return caption(*attrs, _rng(seed, "caption", index), rates)


def pretraining_views(seed: int, step: int, batch: int, views: int) -> np.ndarray:
    """A second render of the first `views` scenes of a pretraining batch: the same attributes,
    everything else (position, angle, texture, tint, noise) drawn anew from its own stream."""
    out = []
    for i in range(step * batch, step * batch + views):
        attrs, _ = pretraining_attributes(seed, i)
        out.append(render(*attrs, _rng(seed, "view", i)))
    return np.stack(out) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)


def sample_pretraining_batch(seed: int, step: int, batch: int,
                             rates: dict[str, float] | None = None) -> tuple[np.ndarray, list[str]]:
    """Images (B, 32, 32, 3) uint8 and captions for one pretraining step; deterministic."""
    images, captions = [], []
    for i in range(step * batch, (step + 1) * batch):
        attrs, rng = pretraining_attributes(seed, i)
        images.append(render(*attrs, rng))
        captions.append(pretraining_caption(seed, i, attrs, rates))
    return np.stack(images), captions


def caption_rates(n: int = 20000, seed: int = 0, rates: dict[str, float] | None = None) -> dict[str, float]:
    """Share of the first n pretraining captions that name each attribute's value (measured, not assumed)."""
    named = {a: 0 for a in ATTRIBUTES}
    for i in range(n):
        attrs, _ = pretraining_attributes(seed, i)
        words = set(re.findall(r"[a-z]+", pretraining_caption(seed, i, attrs, rates)))
        for a, value in zip(ATTRIBUTES, attrs):
            named[a] += value in words
    return {a: count / n for a, count in named.items()}


# --- downstream tasks ----------------------------------------------------------------

class Scene(NamedTuple):
    """One image of a synthetic dataset: its attribute values and where its random stream starts."""

    shape: str
    colour: str
    background: str
    size: str
    pattern: str
    mark: str
    stream: str  # the split whose random stream renders it
    index: int
    shore: str = ""  # a second background shown as a shoreline, or ""

    def render(self, seed: int) -> np.ndarray:
        attrs = [getattr(self, a) for a in ATTRIBUTES]
        return render(*attrs, _rng(seed, self.stream, self.index), self.shore)


@dataclass(frozen=True)
class SyntheticImages:
    """Image source for a synthetic dataset: the table of scenes plus the seed."""

    table: tuple[Scene, ...]
    seed: int

    def __len__(self) -> int:
        return len(self.table)

    def array(self, i: int) -> np.ndarray:
        return self.table[i].render(self.seed)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.array(i))

    def identity(self) -> str:
        import hashlib

        digest = hashlib.sha256(repr((self.seed, IMAGE_SIZE, [tuple(row) for row in self.table])).encode())
        return "synthetic:" + digest.hexdigest()[:16]

    def stamp(self, start: int, stop: int, verify: bool = False) -> str:
        """Rendered images change only with the table and seed, which the identity covers."""
        return ""


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
        if split not in _STREAMS or split in ("pretrain", "heldout", "caption"):
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


def _class_name(family: str) -> str:
    return f"{family} shape"


# --- random tasks --------------------------------------------------------------------

RANDOM_TASK_PREFIX = "synth-random:"
RANDOM_BIAS_ATTRIBUTES = ("background", "colour", "size", "pattern", "mark")
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
    n_biases = int(rng.integers(1, 4))
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


def get_task(task: str | SyntheticTask) -> SyntheticTask:
    """A built-in task by name, a random task by `synth-random:<seed>`, or the task itself."""
    if isinstance(task, SyntheticTask):
        return task
    if task in TASKS:
        return TASKS[task]
    seed = parse_random_task_name(task)
    if seed is None:
        raise UserError(
            f"unknown synthetic task '{task}'{close_matches(task, TASKS)}; choose one of: "
            f"{', '.join(TASKS)}, or {RANDOM_TASK_PREFIX}<seed>"
        )
    return random_task(seed)


def make_task_dataset(task_name: str | SyntheticTask, seed: int = 0):
    """The GroupDataset of a synthetic task; every split has exactly the task's group counts.

    `task_name` is a name in TASKS, `synth-random:<seed>` or a SyntheticTask. `seed` picks the
    dataset's draw of the free attributes and the images. Built-in tasks render with `seed`
    itself; a task with its own `render_seed` (a random task) renders with render_seed + seed,
    and mixes its render seed into the draw of the free attributes too.
    """
    from ..base import SPLITS, GroupDataset

    task = get_task(task_name)
    sizes = [len(values) for _, values in task.biases]
    if task.render_seed is None:
        rng = np.random.default_rng([seed, 99])
        image_seed = seed
    else:
        rng = np.random.default_rng([seed, 99, task.render_seed])
        image_seed = task.render_seed + seed
    rows, ys, attrs, splits = [], [], [], []
    next_index = {s: 0 for s in SPLITS}
    for split, counts in task.counts.items():
        order = []
        for g, count in enumerate(counts):
            y, digits = decode_group(g, sizes)
            order += [(y, tuple(digits))] * count
        for k in rng.permutation(len(order)):
            y, digits = order[k]
            value = {attr: values[a] for (attr, values), a in zip(task.biases, digits)}
            family = task.classes[y]
            factors = {a: str(rng.choice(FAMILIES[family] if a == "shape" else values)) for a, values in ATTRIBUTES.items()}
            factors.update(value)
            shore = ""
            if "background" in value and rng.random() < SHORE_PROBABILITY:
                shore = str(rng.choice([b for b in dict(task.biases)["background"] if b != value["background"]]))
            rows.append(Scene(**factors, stream=split, index=next_index[split], shore=shore))
            next_index[split] += 1
            ys.append(y)
            attrs.append(digits)
            splits.append(SPLITS[split])
    info = {"description": task.description, "seed": seed}
    if task.render_seed is not None:
        info["render_seed"] = image_seed
    return GroupDataset(
        name=task.name,
        images=SyntheticImages(tuple(rows), image_seed),
        y=np.array(ys),
        attrs=np.array(attrs).reshape(len(ys), len(sizes)),
        split=np.array(splits),
        class_names=[_class_name(f) for f in task.classes],
        attribute_names=[attr for attr, _ in task.biases],
        attribute_values=[list(values) for _, values in task.biases],
        attribute_phrases=[[_phrase(attr, v) for v in values] for attr, values in task.biases],
        info=info,
    )


def _phrase(attribute: str, value: str) -> str:
    """Prompt phrase for an attribute value; "{}" marks where the class name goes ("{} on water")."""
    if attribute == "background":
        return f"{{}} on {value}"
    if attribute == "mark":
        return "{} with a tag" if value == "tag" else "{} with no tag"
    return f"{value} {{}}"


def heldout_renders(n: int, seed: int = 12345) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n images with uniformly random attributes from a stream pretraining never sees."""
    images, labels = [], {a: [] for a in ATTRIBUTES}
    for i in range(n):
        rng = _rng(seed, "heldout", i)
        factors = [str(rng.choice(values)) for values in ATTRIBUTES.values()]
        images.append(render(*factors, rng))
        for a, f in zip(ATTRIBUTES, factors):
            labels[a].append(ATTRIBUTES[a].index(f))
    return np.stack(images), {a: np.array(v) for a, v in labels.items()}


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
    return {v: [f"a {_phrase(attribute, v).format(s)}" for s in SHAPES] for v in ATTRIBUTES[attribute]}
