"""The image renderer: one object of the world on a textured background, 32 x 32 RGB.

Rendering is deterministic given (seed, stream, index), so a dataset is a table of scenes plus
a seed (`SyntheticImages`), and any image can be rendered again, byte for byte, in any process.
The background fills most of the image and the object is small: the background is the easy,
spurious cue and the shape the hard, causal one. A tenth of the backgrounds are tinted towards
another background's colour (their texture stays), so zero-shot recognition of the background
is good but not perfect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from .attributes import ATTRIBUTES, BACKGROUNDS, COLOURS, SIZES, stream_rng

TINT_PROBABILITY = 0.1
IMAGE_SIZE = 32


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
        return render(*attrs, stream_rng(seed, self.stream, self.index), self.shore)


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


def heldout_renders(n: int, seed: int = 12345) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n images with uniformly random attributes from a stream pretraining never sees."""
    images, labels = [], {a: [] for a in ATTRIBUTES}
    for i in range(n):
        rng = stream_rng(seed, "heldout", i)
        factors = [str(rng.choice(values)) for values in ATTRIBUTES.values()]
        images.append(render(*factors, rng))
        for a, f in zip(ATTRIBUTES, factors):
            labels[a].append(ATTRIBUTES[a].index(f))
    return np.stack(images), {a: np.array(v) for a, v in labels.items()}
