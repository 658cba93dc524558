"""The built-in synthetic world: small rendered scenes of one object on a textured background.

Every image has independent attributes, each value with a name used in captions and prompts:
shape (8, in two families: round and angular), colour (6), background (5) and size (2).
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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

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
ATTRIBUTES = {
    "shape": SHAPES,
    "colour": list(COLOURS),
    "background": list(BACKGROUNDS),
    "size": list(SIZES),
}
# Captions name a family more often on its usual background (the world's "web bias").
USUAL_BACKGROUND = {"round": "water", "angular": "grass"}
TINT_PROBABILITY = 0.1
# In task images whose bias is the background, this share shows a shoreline of the other
# background value: zero-shot background prediction is then right most of the time, not always.
SHORE_PROBABILITY = 0.25
IMAGE_SIZE = 32

_STREAMS = {"pretrain": 0, "train": 1, "val": 2, "test": 3, "heldout": 4}


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


def render(shape: str, colour: str, background: str, size: str, rng: np.random.Generator,
           shore: str = "") -> np.ndarray:
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
    img = img * (1 - fill) + colour_rgb * fill
    img = img * (1 - 0.6 * outline)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# --- captions for pretraining ---------------------------------------------------------

def caption(shape: str, colour: str, background: str, size: str, rng: np.random.Generator) -> str:
    """A short caption naming a random subset of the attributes; the family word sometimes."""
    family = family_of(shape)
    if background == USUAL_BACKGROUND[family]:
        p_family = 0.3
    elif background in USUAL_BACKGROUND.values():
        p_family = 0.04
    else:
        p_family = 0.12
    noun = f"{family} shape" if rng.random() < p_family else shape
    words = []
    if rng.random() < 0.4:
        words.append(size)
    if rng.random() < 0.7:
        words.append(colour)
    words.append(noun)
    text = " ".join(words)
    if rng.random() < 0.7:
        text += f" on {background}"
    article = "an" if text[0] in "aeiou" else "a"
    return f"a photo of {article} {text}." if rng.random() < 0.3 else f"{article} {text}"


def sample_pretraining_batch(seed: int, step: int, batch: int) -> tuple[np.ndarray, list[str]]:
    """Images (B, 32, 32, 3) uint8 and captions for one pretraining step; deterministic."""
    images, captions = [], []
    for i in range(batch):
        rng = _rng(seed, "pretrain", step * batch + i)
        attrs = [rng.choice(values) for values in ATTRIBUTES.values()]
        images.append(render(*attrs, rng))
        captions.append(caption(*attrs, rng))
    return np.stack(images), captions


# --- downstream tasks ----------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticImages:
    """Image source for a synthetic dataset: the attribute table plus the seed."""

    table: tuple[tuple, ...]  # (shape, colour, background, size, stream, index, shore background or "")
    seed: int

    def __len__(self) -> int:
        return len(self.table)

    def array(self, i: int) -> np.ndarray:
        shape, colour, background, size, stream, index, shore = self.table[i]
        return render(shape, colour, background, size, _rng(self.seed, stream, index), shore)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.array(i))

    def identity(self) -> str:
        import hashlib

        digest = hashlib.sha256(repr((self.seed, IMAGE_SIZE, self.table)).encode())
        return "synthetic:" + digest.hexdigest()[:16]


@dataclass(frozen=True)
class SyntheticTask:
    """A group-robustness task: class = shape family, bias attributes with two values each.

    `counts[split][g]` is the exact number of images of group g (group index convention of
    data/base.py: the first bias attribute is the least significant digit).
    """

    name: str
    description: str
    biases: tuple[tuple[str, tuple[str, ...]], ...]  # (attribute, values used)
    counts: dict[str, tuple[int, ...]]
    classes: tuple[str, ...] = ("angular", "round")
    fixed: dict = field(default_factory=dict)


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


def make_task_dataset(task_name: str, seed: int = 0):
    """The GroupDataset of a synthetic task; every split has exactly the task's group counts."""
    from .base import SPLITS, GroupDataset

    task = TASKS[task_name]
    sizes = [len(values) for _, values in task.biases]
    n_codes = int(np.prod(sizes))
    rng = np.random.default_rng([seed, 99])
    rows, ys, attrs, splits = [], [], [], []
    next_index = {s: 0 for s in SPLITS}
    for split, counts in task.counts.items():
        order = []
        for g, count in enumerate(counts):
            y, code = divmod(g, n_codes)
            digits = []
            for size in sizes:
                code, a = divmod(code, size)
                digits.append(a)
            order += [(y, tuple(digits))] * count
        for k in rng.permutation(len(order)):
            y, digits = order[k]
            value = {attr: values[a] for (attr, values), a in zip(task.biases, digits)}
            family = task.classes[y]
            factors = {
                "shape": rng.choice(FAMILIES[family]),
                "colour": rng.choice(list(COLOURS)),
                "background": rng.choice(list(BACKGROUNDS)),
                "size": rng.choice(list(SIZES)),
            }
            factors.update(value)
            shore = ""
            if "background" in value and rng.random() < SHORE_PROBABILITY:
                shore = str(rng.choice([b for b in dict(task.biases)["background"] if b != value["background"]]))
            rows.append((*[str(factors[a]) for a in ATTRIBUTES], split, next_index[split], shore))
            next_index[split] += 1
            ys.append(y)
            attrs.append(digits)
            splits.append(SPLITS[split])
    return GroupDataset(
        name=task_name,
        images=SyntheticImages(tuple(rows), seed),
        y=np.array(ys),
        attrs=np.array(attrs).reshape(len(ys), len(sizes)),
        split=np.array(splits),
        class_names=[_class_name(f) for f in task.classes],
        attribute_names=[attr for attr, _ in task.biases],
        attribute_values=[list(values) for _, values in task.biases],
        attribute_phrases=[[_phrase(attr, v) for v in values] for attr, values in task.biases],
        info={"description": task.description, "seed": seed},
    )


def _phrase(attribute: str, value: str) -> str:
    """Prompt phrase for an attribute value; "{}" marks where the class name goes ("{} on water")."""
    return f"{{}} on {value}" if attribute == "background" else f"{value} {{}}"


def heldout_renders(n: int, seed: int = 12345) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n images with uniformly random attributes from a stream pretraining never sees."""
    images, labels = [], {a: [] for a in ATTRIBUTES}
    for i in range(n):
        rng = _rng(seed, "heldout", i)
        factors = [rng.choice(values) for values in ATTRIBUTES.values()]
        images.append(render(*factors, rng))
        for a, f in zip(ATTRIBUTES, factors):
            labels[a].append(ATTRIBUTES[a].index(f))
    return np.stack(images), {a: np.array(v) for a, v in labels.items()}


def attribute_prompts(attribute: str) -> dict[str, list[str]]:
    """Zero-shot prompt ensembles for each value of a world attribute, in caption style.

    Colour and background prompts average over every shape noun, since captions always name
    an object; the ensemble is the usual CLIP template trick, not a peek at the labels.
    """
    if attribute == "shape":
        return {s: [f"a {s}", f"a photo of a {s}."] for s in SHAPES}
    if attribute == "colour":
        return {c: [f"a {c} {s}" for s in SHAPES] for c in COLOURS}
    if attribute == "background":
        return {b: [f"a {s} on {b}" for s in SHAPES] for b in BACKGROUNDS}
    if attribute == "size":
        return {z: [f"a {z} {s}" for s in SHAPES] for z in SIZES}
    raise ValueError(f"unknown attribute {attribute}")
