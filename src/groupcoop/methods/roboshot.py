"""RoboShot: zero-shot CLIP after the image features are moved off the directions between bias
value phrases (harmful) and along class contrasts (helpful); nothing is trained.

The transform T of the image features is linear, so the classifier is one `Head` whose rows are
T^T w_c for the class prompts w_c: the same argmax as classifying the transformed (renormalised)
images. The helpers here (the phrases' text features, Gram-Schmidt, the head, the check) also
serve PRISM-mini (prism.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from ..schema import Number
from .base import FitTask, Fitted, Recipe, needs_phrases
from .zeroshot import ZeroShotParams

if TYPE_CHECKING:  # type hints only: importing torch here would slow `--help`
    import torch

TOL = 1e-6  # a direction whose Gram-Schmidt residual is below this fraction of its norm adds nothing new


class RoboShotParams(ZeroShotParams):
    """RoboShot [Adila, Shin, Cai, Sala, "Zero-Shot Robustification of Zero-Shot Models", ICLR 2024],
    with the bias value phrases of the run (the dataset's, `--bias-prompts`, or discovered ones with
    `--bias-prompts auto`) standing in for the language model's insights. Harmful directions: per
    attribute, the differences between the text features of its values' prompts ("a photo of a
    <class> on water." minus "... on land."), averaged over classes first (`harmful: class_mean`)
    or one per class (`per_class`). Helpful directions: the class contrasts within each value
    ("<class 1> on water" minus "<class 0> on water"); plain class-prompt differences would be
    useless here, as boosting along them never changes a linear zero-shot argmax. Both sets are
    orthonormalised (QR / Gram-Schmidt, as the authors' code), the helpful ones also against the
    harmful ones, so the boost cannot bring a removed direction back. An image x becomes
    x - sum_s (x.s) s + boost * sum_a (x.a) a (`boost` 1 is the authors' rule, 0 rejection only;
    the defaults class_mean and 1 were chosen on the label-free dev suite, /tmp/notes/roboshot.md).
    Classification is the zero-shot one with `templates`; its probabilities differ from
    RoboShot's by a per-image temperature (the norm of the transformed image), the argmax does
    not. Without phrases (a discovery that found nothing) it is plain zero-shot."""

    harmful: Literal["class_mean", "per_class"] = "class_mean"
    boost: Annotated[Number, Field(ge=0, le=10)] = 1.0


# --- shared with prism.py -----------------------------------------------------------------------------

def phrase_features(task: FitTask, templates) -> list[torch.Tensor]:
    """Per bias attribute, the (C, V, D) text features of '<class> <value phrase>' prompts
    (template-ensembled, normalised per text)."""
    from ..data.base import apply_phrase

    classes, bb = list(task.dataset.class_names), task.backbone
    out = []
    for values in task.spec.phrases:
        texts = [apply_phrase(v, c) for c in classes for v in values]
        out.append(bb.text_features(texts, templates).double().view(len(classes), len(values), -1))
    return out


def orthonormal_rows(vectors: torch.Tensor, against: torch.Tensor | None = None, tol: float = TOL) -> torch.Tensor:
    """An orthonormal basis (rows, float64) of the span of `vectors`' rows, orthogonal to the
    orthonormal rows of `against`: Gram-Schmidt run twice per vector (stable in float64), dropping a
    vector whose residual is below `tol` of its norm (a repeated or dependent direction)."""
    import torch

    basis = [] if against is None else list(against.double())
    kept = []
    for v in vectors.double():
        norm = float(v.norm())
        for _ in range(2):
            for b in basis:
                v = v - (v @ b) * b
        if norm > 0 and float(v.norm()) > tol * norm:
            v = v / v.norm()
            basis.append(v)
            kept.append(v)
    width = vectors.shape[-1]
    return torch.stack(kept) if kept else torch.zeros((0, width), dtype=torch.float64, device=vectors.device)


def projected_head(task: FitTask, templates, transform) -> Any:
    """The zero-shot head of the class prompts with rows `transform(w_c)`, a symmetric linear map
    of the features: logits scale * x . T w_c = scale * (T x) . w_c. Rows are not renormalised."""
    from .head import Head

    bb = task.backbone
    text = bb.text_features(list(task.dataset.class_names), templates).double()
    return Head(transform(text).float(), float(bb.logit_scale), task.n_classes, "max",
                bias=bb.row_bias(task.n_classes))


# --- RoboShot -------------------------------------------------------------------------------------------

@dataclass
class Directions:
    """RoboShot's transform: orthonormal harmful rows (removed) and helpful rows orthogonal to them
    (boosted). Linear and symmetric, so it serves the images and the class prompts alike."""

    harmful: torch.Tensor  # (r_s, D) float64
    helpful: torch.Tensor  # (r_a, D) float64, orthogonal to `harmful`
    boost: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        x = x - (x @ self.harmful.T) @ self.harmful
        return x + self.boost * (x @ self.helpful.T) @ self.helpful


def directions(task: FitTask, hp: RoboShotParams) -> Directions:
    """The harmful and helpful directions of the run's phrases (see `RoboShotParams`)."""
    import torch

    feats = phrase_features(task, hp.templates)
    if hp.harmful == "class_mean":  # one difference per value after the first, on class-averaged text
        harm = [f.mean(0)[1:] - f.mean(0)[:1] for f in feats]
    else:
        harm = [(f[:, 1:] - f[:, :1]).reshape(-1, f.shape[-1]) for f in feats]
    helpful = [(f[1:] - f[:1]).reshape(-1, f.shape[-1]) for f in feats]  # class contrasts within each value
    harmful = orthonormal_rows(torch.cat(harm))
    return Directions(harmful, orthonormal_rows(torch.cat(helpful), against=harmful), hp.boost)


def fit_roboshot(task: FitTask, hp: RoboShotParams) -> Fitted:
    from .zeroshot import fit_zeroshot

    if task.spec.phrases is None:  # only where discovery found nothing (`check` refuses the rest)
        task.log("  roboshot: no bias value phrases (nothing kept by discovery): plain zero-shot")
        fitted = fit_zeroshot(task, hp)
        fitted.extra = {"roboshot": {"fallback": "zeroshot", "harmful_directions": 0, "helpful_directions": 0}}
        return fitted
    d = directions(task, hp)
    task.log(f"  roboshot: {len(d.harmful)} harmful direction(s) removed, {len(d.helpful)} helpful boosted "
             f"x{1 + hp.boost:g}")
    extra = {"fallback": None, "harmful_directions": len(d.harmful), "helpful_directions": len(d.helpful),
             "phrases": [list(p) for p in task.spec.phrases]}
    return Fitted(projected_head(task, hp.templates, d.apply), 0, {"roboshot": extra})


ROBOSHOT = Recipe(
    "roboshot", "RoboShot: image features moved off the directions between bias value phrases and along "
    "class contrasts, then zero-shot class prompts; nothing is trained",
    "text", "class", "none", RoboShotParams, "0", fit=fit_roboshot,
    check=needs_phrases("roboshot", "removes the directions between bias values"), phrases=True)
