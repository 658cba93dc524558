"""Use what was trained: load a run's classifier, classify images, export the head.

`Classifier` pairs any run's head (zero-shot, linear, learned prompts) with its frozen backbone
and classifies PIL images, image files or preprocessed tensors (`GroupCoOpClassifier` is its
older name). `predict_files` is what `groupcoop predict` runs: batched,
decoded in DataLoader workers, one row per image, failures recorded per image. `export_head`
writes the head with everything needed to use it with plain open_clip (or plain transformers,
for a `transformers:` backbone). A run folder and an
exported classifier folder load the same way (`load_run_head`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..backbones.families import load_backbone, load_export_backbone
from ..backbones.protocol import Backbone
from ..data.base import PathImages
from ..errors import UserError, quoted
from ..methods.head import Head, Prediction, load_head
from .folder import read_run_config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HEAD_FILE = "head.safetensors"


def is_export(folder: Path) -> bool:
    """Whether `folder` was written by `groupcoop export`: its manifest says so or, when the manifest
    was lost in a copy, a head with export metadata and no run config."""
    from ..io.folders import read_manifest

    manifest = read_manifest(folder)
    if manifest is not None:
        return manifest.get("kind") == "export"
    if os.path.lexists(folder / "config.yaml") or not os.path.lexists(folder / HEAD_FILE):
        return False
    return "trained_with" in load_head(folder / HEAD_FILE).info


def load_run_head(folder: Path, backbone: str | None = None, pretrained: str | None = None, device: str = "cpu",
                  expect_classes: list[str] | None = None, backbone_flag: bool = False) -> tuple[Head, Backbone]:
    """A run's (or an exported classifier's) head and its backbone, checked against each other.

    The backbone comes from the run's config.yaml unless `backbone`/`pretrained` are given
    (`pretrained` is needed only when the run's weights were a file that has since moved). An
    export folder brings its own: its weights are checked against the checksum recorded at export.
    `backbone_flag`: the command has --backbone (evaluate), so its error lines may suggest it.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"run folder {folder} not found; give a folder written by `groupcoop train` or `groupcoop export`")
    if is_export(folder) and backbone is None:
        head, bb = _load_export(folder, device)
    else:
        head, bb = _load_run(folder, backbone, pretrained, device, backbone_flag)
    if head.info.get("backbone") != bb.identity:
        fix = "load it with that backbone (--backbone/--pretrained)" if backbone_flag else \
            "pass the weights file it was trained with (--pretrained FILE)"
        raise UserError(f"the classifier in {folder} was trained on backbone {head.info.get('backbone')}, not "
                        f"{bb.identity}; {fix} or train a new one")
    if head.weight.shape[1] != bb.embed_dim:
        raise UserError(f"{folder / HEAD_FILE}: rows of {head.weight.shape[1]} features, but {bb.identity} "
                        f"gives {bb.embed_dim}; the file is damaged, train again")
    if expect_classes is not None and head.class_names != list(expect_classes):
        raise UserError(f"the classifier in {folder} is for classes {head.class_names}, not {list(expect_classes)}; "
                        "use a run trained on this dataset")
    return head.to(bb.device), bb


def _load_run(folder: Path, backbone: str | None, pretrained: str | None, device: str,
              backbone_flag: bool = False) -> tuple[Head, Backbone]:
    config = read_run_config(folder)
    name = backbone or config.get("backbone")
    weights = pretrained if pretrained is not None or backbone else config.get("pretrained")
    if not isinstance(name, str) or not name:
        fix = "pass --backbone (and --pretrained)" if backbone_flag else \
            "give the whole run folder (its config.yaml names the backbone)"
        raise UserError(f"{folder} has no config.yaml naming its backbone; {fix}")
    if isinstance(weights, str) and weights not in ("random",) and ("/" in weights) and not Path(weights).exists():
        raise UserError(f"the weights file this run was trained with, {weights}, is gone; pass it with --pretrained FILE")
    if os.path.lexists(folder / HEAD_FILE):
        head = load_head(folder / HEAD_FILE)
        return head, load_backbone(name, weights, device=device)
    raise UserError(f"no classifier in {folder}: expected {HEAD_FILE} from `groupcoop train`")


def _load_export(folder: Path, device: str) -> tuple[Head, Backbone]:
    """An exported classifier: the head, and the backbone it names or carries (checksum checked)."""
    head = load_head(folder / HEAD_FILE)
    if head.info.get("weights") is None:  # a model open_clip fetches by its name and tag
        return head, load_backbone(head.info.get("model"), head.info.get("pretrained"), device=device)
    bb = load_export_backbone(folder, head.info, device=device)
    head.info["backbone"] = bb.identity  # the same weights, checked by their checksum
    return head, bb


@dataclass
class Classifier:
    """The classifier of any run (zero-shot, linear, learned prompts): its head with its frozen
    backbone; classifies images or image features."""

    head: Head
    backbone: Backbone

    @classmethod
    def from_run(cls, folder: str | Path, device: str = "cpu", pretrained: str | None = None) -> "Classifier":
        """The classifier of a run folder (`groupcoop train`, `Run.save`) or an export folder (`groupcoop export`)."""
        return cls._from_folder("Classifier.from_run()", folder, device, pretrained)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", pretrained: str | None = None) -> "Classifier":
        """An exported classifier (`groupcoop export`) in one call: what the README's plain-library
        block does (every file checked against its sha256, the backbone built, the head read), a run
        folder too. `predict` then gives the block's probabilities."""
        return cls._from_folder("Classifier.from_pretrained()", folder, device, pretrained)

    @classmethod
    def _from_folder(cls, where: str, folder, device: str, pretrained: str | None) -> "Classifier":
        from .arguments import check

        given = check(where, folder=folder, pretrained=pretrained, device=device)
        if given["folder"] is None:
            raise UserError(f"{where} needs a run or export folder")
        head, backbone = load_run_head(given["folder"], pretrained=pretrained, device=device)
        return cls(head, backbone)

    @property
    def class_names(self) -> list[str]:
        return self.head.class_names

    @property
    def group_names(self) -> list[str]:
        """Name of each row (group prompt), class-major."""
        return self.head.row_names

    def predict_features(self, feats) -> Prediction:
        """Predictions for raw image features (B, D) of this backbone (normalised here)."""
        try:
            feats = torch.as_tensor(feats)
        except (TypeError, ValueError, RuntimeError) as err:
            raise UserError(f"predict_features() needs a (batch, {self.head.weight.shape[1]}) array of numbers: "
                            f"{err}") from None
        width = self.head.weight.shape[1]
        if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] != width:
            raise UserError(f"predict_features() needs features of shape (batch >= 1, {width}) for this backbone, "
                            f"got {tuple(feats.shape)}")
        if not (feats.is_floating_point() or feats.dtype in (torch.int32, torch.int64)):
            raise UserError(f"predict_features() needs numbers, got a tensor of {feats.dtype}")
        feats = feats.float()
        if not torch.isfinite(feats).all():
            raise UserError("predict_features(): the features hold NaN or infinite values; check the images or "
                            "the encoder that made them")
        return self.head.predict(F.normalize(feats, dim=-1))

    def predict(self, images) -> Prediction:
        """Predictions for PIL images, image paths, or a preprocessed batch (B, 3, H, W) of the dtype the
        backbone's preprocess makes (float32; raw uint8 pixels or float64 are refused, `arguments.check_batch`)."""
        from .arguments import check_batch

        if isinstance(images, torch.Tensor):
            batch = check_batch(images, self.backbone.preprocess(Image.new("RGB", (8, 8))))
        else:
            items = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
            if not items:
                raise UserError("predict() got no images; give PIL images, image paths or a preprocessed batch")
            batch = torch.stack([self.backbone.preprocess(_open(x, i)) for i, x in enumerate(items)])
        return self.predict_features(self.backbone.encode_images(batch))


GroupCoOpClassifier = Classifier  # its older name


def _open(item, index: int = 0) -> Image.Image:
    from .arguments import check_image_size

    if isinstance(item, Image.Image):
        check_image_size(item, index)
        return item.convert("RGB")
    if not isinstance(item, (str, Path)):
        raise UserError(f"predict() takes PIL images or image paths, not {type(item).__name__}")
    image = PathImages(Path("."), (str(item),), allow_outside=True).load(0)
    check_image_size(image, index)
    return image


# --- groupcoop predict ---------------------------------------------------------------------------

def find_images(paths: list[str]) -> PathImages:
    """Image files named directly, or found (recursively, common extensions) in the named folders.

    The user named them, so no root confines them; only regular files are read (a FIFO or a
    device in a folder is passed over, one named directly is refused).
    """
    from ..io.read import not_regular

    found: list[str] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            inside = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UserError(f"--images {p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            found.extend(str(q) for q in inside)
        elif p.is_file():
            found.append(str(p))
        elif not_regular(p):
            raise UserError(f"--images {p} is {not_regular(p)}, not an image file; give image files or folders")
        else:
            raise UserError(f"--images {p} not found; give image files or folders")
    return PathImages(Path("."), tuple(found), allow_outside=True)


def images_from_csv(csv_path: Path, root: Path, path_col: str, allow_symlinks_outside: bool = False) -> PathImages:
    """Image paths listed in a CSV column, relative to `root`; they, and the files their symlinks
    lead to, must stay inside it (as for a dataset) unless `allow_symlinks_outside`."""
    from ..data.metadata import inside_root, read_table, require_columns

    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder; give the folder the CSV's paths are relative to")
    frame = read_table(Path(csv_path).expanduser(), dtype={path_col: str})
    require_columns(frame, [path_col], csv_path)
    if frame.empty:
        raise UserError(f"--csv {csv_path} lists no images")
    base, base_real = os.path.abspath(root), os.path.realpath(root)
    out = []
    for line, raw in enumerate(frame[path_col].tolist(), start=2):
        rel = inside_root(base, base_real, raw) if isinstance(raw, str) and raw.strip() else None
        if rel is None:
            raise UserError(f"{csv_path}, line {line}: path {quoted(raw)} is empty or leaves --root; give paths relative to it")
        out.append(rel)
    images = PathImages(root, tuple(out), allow_outside=allow_symlinks_outside)
    images.check_confined()
    return images


def shown_path(images: PathImages, i: int) -> str:
    return str(images.root / images.paths[i])


def predict_files(classifier: Classifier, images: PathImages | list, batch_size: int = 256,
                  workers: int | None = None, progress: bool = True) -> tuple[list[dict], int]:
    """One row per image (path, class, group, probabilities, error) and the number of failures.

    `images` is a PathImages (`find_images`, `images_from_csv`) or a list of image paths."""
    from ..features.decode import default_workers, image_loader

    if not isinstance(images, PathImages):
        images = PathImages(Path("."), tuple(str(p) for p in images), allow_outside=True)
    workers = default_workers() if workers is None else workers
    rows: list[dict | None] = [None] * len(images)
    failures = 0
    bb, head = classifier.backbone, classifier.head
    bar = tqdm(total=len(images), unit="img", desc="predict", disable=not progress, dynamic_ncols=True)
    for index, batch, errors in image_loader(images, bb.preprocess, 0, len(images), batch_size, workers,
                                             pin=bb.device.type == "cuda"):
        for i, message in errors:
            rows[i] = {"path": shown_path(images, i), "class": "", "group": "",
                       **{f"p_{c}": "" for c in head.class_names}, "error": message}
            failures += 1
        if batch is not None:
            pred = classifier.predict_features(bb.encode_images(batch))
            for k, i in enumerate(index):
                c, g = int(pred.classes[k]), int(pred.groups[k])
                rows[i] = {"path": shown_path(images, i), "class": head.class_names[c],
                           "group": head.row_names[c * head.rows_per_class + g],
                           **{f"p_{name}": float(f"{pred.probabilities[k, j]:.6g}")
                              for j, name in enumerate(head.class_names)},
                           "error": ""}
        bar.update(len(index) + len(errors))
    bar.close()
    return rows, failures


def rows_to_csv(rows: list[dict]) -> str:
    from ..io.csv_safe import csv_text

    return csv_text(rows)


# --- groupcoop export ----------------------------------------------------------------------------

def export_head(folder: Path, out: Path, pretrained: str | None = None) -> Head:
    """Write a run's classifier into the folder `out`: head.safetensors (the head, with what the
    backbone's own library needs as JSON metadata: `Backbone.export_model`) and, when that
    library cannot fetch the model by name, the model's files beside it (their sha256 recorded)."""
    from ..io.folders import atomic_folder

    folder = Path(folder).expanduser()
    head, bb = load_run_head(folder, pretrained=pretrained)
    with atomic_folder(Path(out), kind="export") as tmp:
        head.info.update({**bb.export_model(tmp), "trained_with": {"backbone": bb.name, "pretrained": bb.pretrained}})
        head.weight = head.weight.cpu()
        head.bias = None if head.bias is None else head.bias.cpu()
        head.save(tmp / HEAD_FILE)
    return head
