"""The classifier every method ends in: a linear head over L2-normalised image features.

Rows are prompts (one per class, or one per (class, group), class-major) or learned linear
vectors. Logits = scale * feats @ weight.T (+ bias); a class's score aggregates its rows'
logits (max, logsumexp or mean); probabilities are the softmax over class scores. Prompt
methods use their normalised text features as rows and CLIP's logit scale as the scale.

`check_head` is the one validator of a head, whether it was just read from a file (a run
folder's head.safetensors, an export) or built from saved prompts: finite weights, bias and
scale, shapes that fit the class count, and class and row names that are lists of distinct,
non-empty strings of the right lengths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..choices import AGGREGATES
from ..errors import UserError

FORMAT = "groupcoop-head/1"


def class_scores(logits: torch.Tensor, n_classes: int, aggregate: str) -> torch.Tensor:
    """(B, C*G) row logits -> (B, C) class scores; rows are ordered class-major."""
    per_class = logits.view(logits.shape[0], n_classes, -1)
    if aggregate == "max":
        return per_class.max(dim=-1).values
    if aggregate == "logsumexp":
        return per_class.logsumexp(dim=-1)
    return per_class.mean(dim=-1)


@dataclass
class Prediction:
    """Per image: class id, group id within the class (its best row), class probabilities."""

    classes: np.ndarray
    groups: np.ndarray
    probabilities: np.ndarray


@dataclass
class Head:
    weight: torch.Tensor  # (P, D)
    scale: float
    n_classes: int
    aggregate: str = "max"
    bias: torch.Tensor | None = None  # (P,)
    class_names: list[str] = field(default_factory=list)
    row_names: list[str] = field(default_factory=list)  # group (or class) name per row
    info: dict = field(default_factory=dict)  # backbone identity, method, ...

    @classmethod
    def from_text(cls, text: torch.Tensor, scale: float, n_classes: int, aggregate: str = "max", **kw) -> "Head":
        return cls(F.normalize(text.detach().float(), dim=-1), float(scale), n_classes, aggregate, **kw)

    @property
    def rows_per_class(self) -> int:
        return self.weight.shape[0] // self.n_classes

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.scale * feats.to(self.weight.device, torch.float32) @ self.weight.T
        return out if self.bias is None else out + self.bias

    def class_scores(self, feats: torch.Tensor) -> torch.Tensor:
        return class_scores(self.logits(feats), self.n_classes, self.aggregate)

    @torch.no_grad()
    def predict_classes(self, feats) -> np.ndarray:
        """Class ids for features (a tensor, or anything with `.chunks()`), chunk by chunk."""
        chunks = feats.chunks() if hasattr(feats, "chunks") else [feats]
        out = [self.class_scores(c).argmax(dim=1).cpu().numpy() for c in chunks]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    @torch.no_grad()
    def predict(self, feats: torch.Tensor) -> Prediction:
        logits = self.logits(feats)
        scores = class_scores(logits, self.n_classes, self.aggregate)
        classes = scores.argmax(dim=1)
        per_class = logits.view(len(logits), self.n_classes, -1)
        groups = per_class[torch.arange(len(logits)), classes].argmax(dim=1)
        return Prediction(classes.cpu().numpy(), groups.cpu().numpy(), scores.softmax(dim=1).cpu().numpy())

    def to(self, device) -> "Head":
        self.weight = self.weight.to(device)
        self.bias = None if self.bias is None else self.bias.to(device)
        return self

    # -- one file: safetensors tensors + JSON metadata; never pickle -------------------------------

    def metadata(self) -> dict:
        return {"format": FORMAT, "scale": self.scale, "n_classes": self.n_classes, "aggregate": self.aggregate,
                "class_names": self.class_names, "row_names": self.row_names, **self.info}

    def save(self, path: Path) -> None:
        tensors = {"weight": self.weight.detach().cpu().float().contiguous()}
        if self.bias is not None:
            tensors["bias"] = self.bias.detach().cpu().float().contiguous()
        save_file(tensors, str(path), metadata={"groupcoop": json.dumps(self.metadata())})


def check_names(value, what: str, count: int, where) -> list[str]:
    """`value` as a list of `count` distinct, non-empty strings, or one UserError line."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UserError(f"{where}: {what} must be a list of non-empty names, not {_shown(value)}; "
                        "the file is damaged, export or train it again")
    if len(value) != count:
        raise UserError(f"{where}: {what} has {len(value)} entries, expected {count}; the file is damaged, export or "
                        "train it again")
    seen = set()
    for name in value:
        if name in seen:
            raise UserError(f"{where}: {what} names {name!r} twice; the file is damaged, export or train it again")
        seen.add(name)
    return list(value)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) < 60 else type(value).__name__


def check_head(head: Head, where) -> Head:
    """Refuse (one line naming `where`) a head that cannot classify: see the module docstring."""
    damaged = "the file is damaged, export or train it again"
    weight = head.weight
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or 0 in weight.shape:
        raise UserError(f"{where}: weight of shape {tuple(getattr(weight, 'shape', ()))} is not a (rows, features) "
                        f"matrix; {damaged}")
    if isinstance(head.n_classes, bool) or not isinstance(head.n_classes, int) or head.n_classes < 1 \
            or weight.shape[0] % head.n_classes:
        raise UserError(f"{where}: weight of shape {tuple(weight.shape)} does not fit {head.n_classes!r} classes; "
                        f"{damaged}")
    if not torch.isfinite(weight).all():
        raise UserError(f"{where}: the weight holds NaN or infinite values; {damaged}")
    if head.bias is not None:
        if tuple(head.bias.shape) != (weight.shape[0],):
            raise UserError(f"{where}: bias of shape {tuple(head.bias.shape)} does not fit {weight.shape[0]} rows; "
                            f"{damaged}")
        if not torch.isfinite(head.bias).all():
            raise UserError(f"{where}: the bias holds NaN or infinite values; {damaged}")
    if isinstance(head.scale, bool) or not isinstance(head.scale, (int, float)) or not np.isfinite(head.scale) \
            or head.scale <= 0:
        raise UserError(f"{where}: scale {head.scale!r} is not a finite number > 0; {damaged}")
    if head.aggregate not in AGGREGATES:
        raise UserError(f"{where}: aggregate rule {head.aggregate!r} is not one of {', '.join(AGGREGATES)}; {damaged}")
    check_names(head.class_names, "class names", head.n_classes, where)
    check_names(head.row_names, "row (group) names", weight.shape[0], where)
    head.scale = float(head.scale)
    return head


def load_head(path: Path) -> Head:
    """A head written by `Head.save` (a run folder's head.safetensors or `groupcoop export`), checked
    by `check_head`."""
    from ..io.read import open_regular

    path = Path(path)
    open_regular(path, "head file", "give a head file from `groupcoop export` or a run folder").close()
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("groupcoop", "null"))
            weight = fh.get_tensor("weight")
            bias = fh.get_tensor("bias") if "bias" in fh.keys() else None
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"cannot read {path} as a groupcoop head: {str(err).splitlines()[0] if str(err) else err!r}; "
                        "export it again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a groupcoop head file; export one with `groupcoop export`")
    missing = [k for k in ("scale", "n_classes", "aggregate", "class_names", "row_names") if k not in meta]
    if missing:
        raise UserError(f"{path}: its metadata lacks {', '.join(missing)}; export it again")
    info = {k: v for k, v in meta.items() if k not in ("format", "scale", "n_classes", "aggregate",
                                                       "class_names", "row_names")}
    head = Head(weight.float(), meta["scale"], meta["n_classes"], meta["aggregate"],
                None if bias is None else bias.float(), meta["class_names"], meta["row_names"], info)
    return check_head(head, path)
