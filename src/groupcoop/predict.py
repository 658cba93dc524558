"""Use what was trained: load a run's classifier, classify images, export the head.

`GroupCoOpClassifier` pairs a run's head with its frozen backbone and classifies PIL images,
image files or preprocessed tensors. `predict_files` is what `groupcoop predict` runs: batched,
decoded in DataLoader workers, one row per image, failures recorded per image. `export_head`
writes the head with everything needed to use it with plain open_clip.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from tqdm import tqdm

from .backbone import Backbone, load_backbone
from .choices import AGGREGATES
from .errors import UserError
from .head import Head, Prediction, load_head

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_run_config(folder: Path) -> dict:
    """A run folder's config.yaml as a dict ({} when absent or unreadable)."""
    try:
        config = yaml.safe_load((Path(folder) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def load_run_head(folder: Path, backbone: str | None = None, pretrained: str | None = None, device: str = "cpu",
                  expect_classes: list[str] | None = None) -> tuple[Head, Backbone]:
    """A run's classifier and its backbone, checked against each other (and the classes, if given).

    The backbone comes from the run's config.yaml unless `backbone`/`pretrained` are given
    (`pretrained` is needed only when the run's weights were a file that has since moved).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"run folder {folder} not found; give a folder written by `groupcoop train`")
    config = read_run_config(folder)
    name = backbone or config.get("backbone")
    weights = pretrained if pretrained is not None or backbone else config.get("pretrained")
    if not isinstance(name, str) or not name:
        raise UserError(f"{folder} has no config.yaml naming its backbone; pass --backbone (and --pretrained)")
    if isinstance(weights, str) and weights not in ("random",) and ("/" in weights) and not Path(weights).exists():
        raise UserError(f"the weights file this run was trained with, {weights}, is gone; pass it with --pretrained FILE")
    if (folder / "head.safetensors").is_file():
        head = load_head(folder / "head.safetensors")
        bb = load_backbone(name, weights, device=device)
    elif (folder / "prompts.json").is_file():  # a run folder from before heads were saved
        from .prompts import load_prompts

        bb = load_backbone(name, weights, device=device)
        learner, meta = load_prompts(folder, bb)
        with torch.no_grad():
            head = Head.from_text(learner(), bb.logit_scale, len(meta.get("classes") or []) or 1,
                                  meta.get("aggregate", "max"), class_names=list(meta.get("classes") or []),
                                  row_names=list(meta.get("groups") or meta["names"]),
                                  info={"backbone": meta["backbone"], "method": meta.get("method")})
    else:
        raise UserError(f"no classifier in {folder}: expected head.safetensors from `groupcoop train`")
    if head.aggregate not in AGGREGATES:
        raise UserError(f"{folder}: aggregate rule {head.aggregate!r} is not one of {', '.join(AGGREGATES)}")
    if head.info.get("backbone") != bb.identity:
        raise UserError(f"the classifier in {folder} was trained on backbone {head.info.get('backbone')}, not "
                        f"{bb.identity}; load it with that backbone (--backbone/--pretrained) or train a new one")
    if head.weight.shape[1] != bb.embed_dim:
        raise UserError(f"{folder / 'head.safetensors'}: rows of {head.weight.shape[1]} features, but {bb.identity} "
                        f"gives {bb.embed_dim}; the file is damaged, train again")
    if expect_classes is not None and head.class_names != list(expect_classes):
        raise UserError(f"the classifier in {folder} is for classes {head.class_names}, not {list(expect_classes)}; "
                        "use a run trained on this dataset")
    return head.to(bb.device), bb


@dataclass
class GroupCoOpClassifier:
    """A trained head with its frozen backbone: classify images or image features."""

    head: Head
    backbone: Backbone

    @classmethod
    def from_run(cls, folder: str | Path, device: str = "cpu", pretrained: str | None = None) -> "GroupCoOpClassifier":
        head, backbone = load_run_head(Path(folder), pretrained=pretrained, device=device)
        return cls(head, backbone)

    @property
    def class_names(self) -> list[str]:
        return self.head.class_names

    @property
    def group_names(self) -> list[str]:
        """Name of each row (group prompt), class-major."""
        return self.head.row_names

    def predict_features(self, feats: torch.Tensor) -> Prediction:
        """Predictions for raw image features (B, D) of this backbone (normalised here)."""
        return self.head.predict(F.normalize(torch.as_tensor(feats).float(), dim=-1))

    def predict(self, images) -> Prediction:
        """Predictions for PIL images, image paths, or a preprocessed batch (B, 3, H, W)."""
        if isinstance(images, torch.Tensor):
            batch = images if images.ndim == 4 else images[None]
        else:
            items = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
            batch = torch.stack([self.backbone.preprocess(_open(x)) for x in items])
        return self.predict_features(self.backbone.encode_images(batch))


def _open(item) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    try:
        with Image.open(item) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read image {item}: {err}") from None


# --- groupcoop predict ---------------------------------------------------------------------------

def find_images(paths: list[str]) -> list[Path]:
    """Image files named directly, or found (recursively, common extensions) in the named folders."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            inside = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UserError(f"--images {p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            found.extend(inside)
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"--images {p} not found; give image files or folders")
    return found


def images_from_csv(csv_path: Path, root: Path, path_col: str) -> list[Path]:
    """Image paths listed in a CSV column, relative to `root` (they must stay inside it)."""
    import os

    from .data.metadata import read_table, require_columns

    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise UserError(f"--csv {csv_path} not found")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder; give the folder the CSV's paths are relative to")
    frame = read_table(csv_path, dtype={path_col: str})
    require_columns(frame, [path_col], csv_path)
    if frame.empty:
        raise UserError(f"--csv {csv_path} lists no images")
    out = []
    for line, raw in enumerate(frame[path_col].tolist(), start=2):
        norm = os.path.normpath(str(raw).strip()) if isinstance(raw, str) and raw.strip() else ""
        if not norm or os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
            raise UserError(f"{csv_path}, line {line}: path {raw!r} is empty or leaves --root; give paths relative to it")
        out.append(root / norm)
    return out


@dataclass(frozen=True)
class FileImages:
    """Image files by path, for `predict` (the user named them; no dataset root to stay under)."""

    paths: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Image.Image:
        from .data.base import PathImages

        return PathImages(Path("/"), (self.paths[i],), allow_outside=True).load(0)


def predict_files(classifier: GroupCoOpClassifier, paths: list[Path], batch_size: int = 256, workers: int | None = None,
                  progress: bool = True) -> tuple[list[dict], int]:
    """One row per image (path, class, group, probabilities, error) and the number of failures."""
    from .features import default_workers, image_loader

    images = FileImages(tuple(str(p.absolute()) for p in paths))
    workers = default_workers() if workers is None else workers
    rows: list[dict | None] = [None] * len(images)
    failures = 0
    bb, head = classifier.backbone, classifier.head
    bar = tqdm(total=len(images), unit="img", desc="predict", disable=not progress, dynamic_ncols=True)
    for index, batch, errors in image_loader(images, bb.preprocess, 0, len(images), batch_size, workers,
                                             pin=bb.device.type == "cuda"):
        for i, message in errors:
            rows[i] = {"path": str(paths[i]), "class": "", "group": "", **{f"p_{c}": "" for c in head.class_names},
                       "error": message}
            failures += 1
        if batch is not None:
            pred = classifier.predict_features(bb.encode_images(batch))
            for k, i in enumerate(index):
                c, g = int(pred.classes[k]), int(pred.groups[k])
                rows[i] = {"path": str(paths[i]), "class": head.class_names[c],
                           "group": head.row_names[c * head.rows_per_class + g],
                           **{f"p_{name}": f"{pred.probabilities[k, j]:.6g}" for j, name in enumerate(head.class_names)},
                           "error": ""}
        bar.update(len(index) + len(errors))
    bar.close()
    return rows, failures


def rows_to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- groupcoop export ----------------------------------------------------------------------------

def export_head(folder: Path, out: Path, pretrained: str | None = None) -> Head:
    """Write a run's head with what plain open_clip needs: model name, weights, their checksum."""
    from .backbone import weights_checksum
    from .files import atomic_write

    folder = Path(folder).expanduser()
    head, bb = load_run_head(folder, pretrained=pretrained)
    config = read_run_config(folder)
    weights = pretrained or config.get("pretrained") or bb.weights_path
    head.info.update({"model": bb.name, "pretrained": weights,
                      "weights_sha256": weights_checksum(weights) if weights and Path(str(weights)).is_file() else None})
    head.weight = head.weight.cpu()
    atomic_write(Path(out), lambda p: head.save(Path(p)))
    return head
