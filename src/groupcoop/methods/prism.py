"""PRISM-mini: zero-shot CLIP after the image features are projected off the span of the bias
values' own text embeddings (a closed form); nothing is trained.

The projection is symmetric, so the classifier is one `Head` whose rows are the projected class
prompts (roboshot.py's helpers build it). The full PRISM (a linear map trained with its latent
debiasing loss on LLM-written sentences) is not here.
"""

from __future__ import annotations

from typing import Literal

from .base import FitTask, Fitted, Recipe, needs_phrases
from .roboshot import orthonormal_rows, phrase_features, projected_head
from .zeroshot import ZeroShotParams


class PrismMiniParams(ZeroShotParams):
    """PRISM-mini [Molahasani, Motamedi, Greenspan, Kim, Etemad, "PRISM: Reducing Spurious Implicit
    Biases in Vision-Language Models with LLM-Guided Embedding Projection", ICCV 2025], with the
    run's bias value phrases (the dataset's, `--bias-prompts`, or discovered) standing in for the
    spurious words an LLM names. P = I - V (V^T V)^-1 V^T for the text embeddings V of every value
    of every attribute (the span of the embeddings themselves, not of their differences as in
    RoboShot); images x -> P x, classified by the unprojected zero-shot class prompts (`templates`).
    `words: bare` encodes each value phrase without its class slot and without a template
    ("{} on water" -> "on water"), as the authors encode "water" and "land"; `class_mean` averages
    the template-ensembled '<class> <value phrase>' prompts over the classes (the default, chosen on
    the label-free dev suite: 54.8 vs 50.4 mean worst-group, /tmp/notes/roboshot.md). Without
    phrases (a discovery that found nothing) it is plain zero-shot."""

    words: Literal["bare", "class_mean"] = "class_mean"


def spurious_rows(task: FitTask, hp: PrismMiniParams):
    """An orthonormal basis (rows) of the span of the bias values' text embeddings."""
    import torch

    if hp.words == "bare":  # "{} on water" -> "on water"
        texts = [" ".join(v.replace("{}", " ").split()) or v for values in task.spec.phrases for v in values]
        vectors = task.backbone.text_features(texts, ("{}",)).double()
    else:
        vectors = torch.cat([f.mean(0) for f in phrase_features(task, hp.templates)])
    return orthonormal_rows(vectors)


def fit_prism_mini(task: FitTask, hp: PrismMiniParams) -> Fitted:
    from .zeroshot import fit_zeroshot

    if task.spec.phrases is None:  # only where discovery found nothing (`check` refuses the rest)
        task.log("  prism_mini: no bias value phrases (nothing kept by discovery): plain zero-shot")
        fitted = fit_zeroshot(task, hp)
        fitted.extra = {"prism_mini": {"fallback": "zeroshot", "removed_directions": 0}}
        return fitted
    q = spurious_rows(task, hp)
    task.log(f"  prism_mini: {len(q)} bias value direction(s) projected out")
    extra = {"fallback": None, "removed_directions": len(q), "phrases": [list(p) for p in task.spec.phrases]}
    return Fitted(projected_head(task, hp.templates, lambda x: x - (x @ q.T) @ q), 0, {"prism_mini": extra})


PRISM_MINI = Recipe(
    "prism_mini", "PRISM-mini: image features projected off the span of the bias values' text embeddings, "
    "then zero-shot class prompts; nothing is trained",
    "text", "class", "none", PrismMiniParams, "0", fit=fit_prism_mini,
    check=needs_phrases("prism_mini", "projects out the bias values' text"), phrases=True)
