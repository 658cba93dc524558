"""The pretraining stream of the bundled tiny CLIP: captioned renders, and how often captions name each attribute.

Why captions are shaped like this (see shared/docs/method.md, "The built-in synthetic world"):
- Downstream classes are shape *families* ("round shape", "angular shape"). Captions name the
  family only now and then, and more often on the family's usual background (round things on
  water, angular things on grass): zero-shot class prompts are weakly grounded and inherit a
  background bias, as "waterbird" does in web-trained CLIP.
- Bias attributes span real CLIP's range of zero-shot recognisability (docs/world.md): captions
  name background, colour and size often, the pattern rarely and the mark never, so zero-shot
  names the first three well, the pattern partly and the mark hardly at all, while the image
  encoder sees all of them.
"""

from __future__ import annotations

import re

import numpy as np

from .attributes import ATTRIBUTES, family_of, stream_rng
from .render import IMAGE_SIZE, render

# How often a pretraining caption names each attribute's value (shape: the shape word, which a
# caption replaces by the family word now and then). Pattern is named rarely and the mark never,
# like the hospital tokens of chest X-rays: zero-shot then knows background, colour and size well,
# the pattern partly and the mark not at all (`groupcoop world` measures it).
CAPTION_RATES = {"size": 0.4, "pattern": 0.15, "colour": 0.7, "background": 0.7, "mark": 0.0}
# Captions name a family more often on its usual background (the world's "web bias").
USUAL_BACKGROUND = {"round": "water", "angular": "grass"}


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
    rng = stream_rng(seed, "pretrain", index)
    return [str(rng.choice(values)) for values in ATTRIBUTES.values()], rng


def pretraining_caption(seed: int, index: int, attrs: list[str], rates: dict[str, float] | None = None) -> str:
    """The caption of pretraining image `index`, from its own stream (captions never need the renders).
    `rates` overrides CAPTION_RATES (calibration runs of scripts/pretrain_tiny.py)."""
    return caption(*attrs, stream_rng(seed, "caption", index), rates)


def pretraining_views(seed: int, step: int, batch: int, views: int) -> np.ndarray:
    """A second render of the first `views` scenes of a pretraining batch: the same attributes,
    everything else (position, angle, texture, tint, noise) drawn anew from its own stream."""
    out = []
    for i in range(step * batch, step * batch + views):
        attrs, _ = pretraining_attributes(seed, i)
        out.append(render(*attrs, stream_rng(seed, "view", i)))
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
