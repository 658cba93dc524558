"""CelebA (Liu et al., ICCV 2015): 202,599 aligned face images with 40 binary attributes.

Layout, official form:
    img_align_celeba/000001.jpg ...
    list_attr_celeba.txt      line 1 the image count, line 2 the 40 attribute names, then
                              `000001.jpg -1  1 ...`: filename and 40 values in {-1, 1},
                              separated by one or more spaces
    list_eval_partition.txt   `000001.jpg 0`
Kaggle form (used by group_DRO and WILDS): `list_attr_celeba.csv` (header `image_id,
5_o_Clock_Shadow,...,Young`, values -1/1) and `list_eval_partition.csv` (`image_id,partition`),
images sometimes under `img_align_celeba/img_align_celeba/`. LF or CRLF line endings.

Encodings: attribute value 1 -> 1, -1 -> 0; partition 0 train / 1 val / 2 test.
Task: y = the target attribute (default Blond_Hair), biases chosen by name (default Male);
groups g = y * 2^k + a1 + 2*a2 + ..., so for Blond_Hair/Male: 0 non-blond female,
1 non-blond male, 2 blond female, 3 blond male.

Citation: Z. Liu, P. Luo, X. Wang, X. Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015.
Licence: CelebA is available for non-commercial research purposes only; do not redistribute
the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import Field

from ..errors import UserError, close_matches
from ..schema import Frozen, Text, TextList
from .base import GroupDataset, PathImages
from .metadata import (check_split_coverage, checked_image_paths, header_lines, read_table, require_columns,
                       require_file, split_codes)

class CelebAOptions(Frozen):
    target: Text = "Blond_Hair"
    biases: Annotated[TextList, Field(min_length=1)] = ["Male"]


# (value names for 0 and 1, prompt phrases for 0 and 1) where the generic wording reads badly
NICE_NAMES: dict[str, tuple[list[str], list[str]]] = {
    "Blond_Hair": (["not blond hair", "blond hair"], ["with non-blond hair", "with blond hair"]),
    "High_Cheekbones": (["low cheekbones", "high cheekbones"], ["with low cheekbones", "with high cheekbones"]),
    "Male": (["female", "male"], ["female", "male"]),
    "Young": (["old", "young"], ["old", "young"]),
    "Smiling": (["not smiling", "smiling"], ["not smiling", "smiling"]),
    "Mouth_Slightly_Open": (["mouth closed", "mouth slightly open"], ["with mouth closed", "with mouth slightly open"]),
}


def attribute_words(attribute: str) -> tuple[list[str], list[str]]:
    """Value names and prompt phrases for attribute values 0 and 1."""
    if attribute in NICE_NAMES:
        values, phrases = NICE_NAMES[attribute]
        return list(values), list(phrases)
    words = attribute.replace("_", " ").lower()
    return [f"no {words}", words], [f"without {words}", f"with {words}"]


@dataclass(frozen=True)
class CelebATables:
    """The attribute table (file order) joined with the partition, before any row selection."""

    image_ids: np.ndarray  # file names, as in the attribute file
    attributes: pd.DataFrame  # one 0/1 column per attribute, file order
    split: np.ndarray  # 0/1/2 per row
    lines: np.ndarray  # line of each row in attr_file
    attr_file: Path
    image_dir: Path
    source: str  # "official" or "kaggle"

    def column(self, name: str) -> np.ndarray:
        return self.attributes[name].to_numpy(dtype=np.int64)

    def resolve_attribute(self, name: str) -> str:
        """The attribute's exact name (case-insensitive lookup), or a UserError with close matches."""
        names = list(self.attributes.columns)
        if name in names:
            return name
        by_lower = {n.lower(): n for n in names}
        if name.lower() in by_lower:
            return by_lower[name.lower()]
        raise UserError(
            f"{self.attr_file}: no attribute {name!r}{close_matches(name, names)}; "
            f"use one of the {len(names)} names in its header (e.g. Blond_Hair, Male, Young)"
        )


def _read_official_attributes(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    with open(path, encoding="utf-8", errors="replace") as f:
        count_line, names_line = f.readline(), f.readline()
    try:
        count = int(count_line.strip())
    except ValueError:
        raise UserError(
            f"{path}, line 1: expected the image count, found {count_line.strip()[:40]!r}; "
            "use the unmodified list_attr_celeba.txt"
        ) from None
    names = names_line.split()
    frame = read_table(path, sep=r"\s+", skiprows=2, header=None, names=["image_id", *names], dtype={"image_id": str})
    if len(frame) != count:
        raise UserError(
            f"{path}, line 1: says {count} images but the file lists {len(frame)}; "
            "the file is truncated or edited, download list_attr_celeba.txt again"
        )
    return frame, header_lines(len(frame), first_line=3)


def _read_partition(root: Path, prefer_csv: bool) -> tuple[pd.DataFrame, Path]:
    txt, csv = root / "list_eval_partition.txt", root / "list_eval_partition.csv"
    candidates = (csv, txt) if prefer_csv else (txt, csv)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(
            f"{txt} not found (nor {csv.name}); put CelebA's partition file next to the attribute file"
        )
    if path.suffix == ".txt":
        frame = read_table(path, sep=r"\s+", header=None, names=["image_id", "partition"], dtype={"image_id": str})
        lines = header_lines(len(frame), first_line=1)
    else:
        frame = read_table(path, dtype={"image_id": str})
        require_columns(frame, ["image_id", "partition"], path)
        lines = header_lines(len(frame))
    frame = frame.assign(partition=split_codes(frame["partition"], path, "partition", lines))
    duplicated = frame["image_id"].duplicated().to_numpy()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated)[0])
        raise UserError(f"{path}, line {lines[i]}: {frame['image_id'].iloc[i]} is listed twice; remove the duplicate")
    return frame, path


def _find_image_dir(root: Path, first_image: str) -> Path:
    # Kaggle's zip unpacks into img_align_celeba/img_align_celeba/
    candidates = [root / "img_align_celeba" / "img_align_celeba", root / "img_align_celeba"]
    for folder in candidates:
        if (folder / first_image).is_file():
            return folder
    existing = [f for f in candidates if f.is_dir()]
    if not existing:
        raise UserError(f"image folder {candidates[1]} not found; unzip img_align_celeba.zip into {root}")
    return existing[-1]


def read_celeba(root: str | Path) -> CelebATables:
    """Read the attribute and partition files (either form); images are not touched."""
    root = Path(root)
    official, kaggle = root / "list_attr_celeba.txt", root / "list_attr_celeba.csv"
    if official.is_file():
        attr_file, (frame, lines) = official, _read_official_attributes(official)
    else:
        attr_file = require_file(
            kaggle, f"neither {official.name} nor {kaggle.name} is in {root}; point the root at the CelebA folder"
        )
        frame = read_table(kaggle, dtype={"image_id": str})
        require_columns(frame, ["image_id"], kaggle)
        lines = header_lines(len(frame))
    names = [c for c in frame.columns if c != "image_id"]
    if not names or frame.empty:
        raise UserError(f"{attr_file}: no attribute columns or no rows; use the unmodified CelebA file")

    # a damaged cell makes its column text: compare numbers, so "-1" next to an "x" still counts as -1
    values = frame[names].apply(pd.to_numeric, errors="coerce")
    bad = ~values.isin([-1, 1]).to_numpy()
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        cell = frame[names].iloc[row, col]
        raise UserError(
            f"{attr_file}, line {lines[row]}: {names[col]} is {'empty' if pd.isna(cell) else repr(str(cell))}, "
            "expected -1 or 1 (a short or damaged row); download the file again"
        )
    partition, partition_file = _read_partition(root, prefer_csv=attr_file.suffix == ".csv")
    split = frame["image_id"].map(pd.Series(partition["partition"].to_numpy(), index=partition["image_id"]))
    if split.isna().any():
        i = int(np.flatnonzero(split.isna().to_numpy())[0])
        raise UserError(
            f"{attr_file}, line {lines[i]}: {frame['image_id'].iloc[i]} has no entry in {partition_file}; "
            "use partition and attribute files from the same CelebA release"
        )
    image_ids = frame["image_id"].to_numpy(dtype=object)
    return CelebATables(
        image_ids=image_ids,
        attributes=(values == 1).astype(np.int8),
        split=split.to_numpy(dtype=np.int64),
        lines=lines,
        attr_file=attr_file,
        image_dir=_find_image_dir(root, str(image_ids[0])),
        source="official" if attr_file.suffix == ".txt" else "kaggle",
    )


def celeba_dataset(
    tables: CelebATables, rows: np.ndarray, target: str, biases: Sequence[str], name: str, info: dict
) -> GroupDataset:
    """A GroupDataset over the chosen rows (file order), checking their images exist."""
    words = [attribute_words(b) for b in biases]
    ds = GroupDataset(
        name=name,
        images=PathImages(
            tables.image_dir,
            checked_image_paths(
                tables.image_dir, tables.image_ids[rows].tolist(), tables.attr_file, "image_id", tables.lines[rows]
            ),
        ),
        y=tables.column(target)[rows],
        attrs=np.stack([tables.column(b)[rows] for b in biases], axis=1) if biases else np.zeros((len(rows), 0)),
        split=tables.split[rows],
        class_names=attribute_words(target)[0],
        attribute_names=list(biases),
        attribute_values=[w[0] for w in words],
        attribute_phrases=[w[1] for w in words],
        info={"source": tables.source, "metadata_file": str(tables.attr_file), "target": target,
              "biases": list(biases), **info},
    )
    check_split_coverage(ds, tables.attr_file)
    return ds


def load_celeba(root: str | Path, target: str = "Blond_Hair", biases: Sequence[str] | str = ("Male",)) -> GroupDataset:
    """CelebA with a chosen target attribute and bias attributes (names as in the file header)."""
    tables = read_celeba(root)
    if isinstance(biases, str):
        biases = [b.strip() for b in biases.split(",") if b.strip()]
    target = tables.resolve_attribute(target)
    biases = [tables.resolve_attribute(b) for b in biases]
    if target in biases or len(set(biases)) != len(biases):
        raise UserError(f"target {target} and biases {', '.join(biases)} must all differ; choose distinct attributes")
    return celeba_dataset(tables, np.arange(len(tables.image_ids)), target, biases, "celeba", {})
