"""SubpopBench metadata CSVs (Yang et al., ICML 2023): one generic form for many datasets.

Layout: a dataset folder (the root) holding the images and one metadata CSV with columns
`id,filename,split,y,a` or `filename,y,a,split` (extra columns are ignored). `filename` is
relative to the root, or to a known subfolder of it (Waterbirds, CelebA); SubpopBench's own
scripts write absolute paths for MetaShift, ImageNet-BG, NICO++ and CheXpert, which are
accepted when they lie inside the root.

Encodings: split 0 train / 1 val / 2 test (ImageNet-BG writes names, and adds evaluation-only
splits mixed_rand / only_fg / no_fg, which are set aside and counted in `info`); y the class
index; a the attribute index. Known datasets (see `KNOWN`) get class and attribute names:
MetaShift y 1 cat / 0 dog, a 1 indoor / 0 outdoor; CheXpert and MIMIC-CXR no-finding
y 1 = "no finding", a = sex x race in SubpopBench's order (white male, white female, black
male, black female, other male, other female); ImageNet-BG 9 classes, `a` may be absent
(attributes unknown, -1). Unknown datasets get class_k / attr_k names.

Groups: g = n_a * y + a (SubpopBench's own convention, identical to `base.group_index`).

Citation: Y. Yang, H. Zhang, D. Katabi, M. Ghassemi, "Change is Hard: A Closer Look at
Subpopulation Shift", ICML 2023.
Licence: each dataset keeps its own terms (e.g. CheXpert's and MIMIC-CXR's research-use
agreements, ImageNet's non-commercial terms); check them before sharing anything derived.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..schema import Frozen, Text
from .base import GroupDataset, PathImages
from .metadata import (check_split_coverage, checked_image_paths, header_lines, integer_codes, read_table,
                       require_columns, require_file, split_codes)


class SubpopBenchOptions(Frozen):
    name: Text | None = None
    metadata: Text | None = None


class KnownSubpopOptions(Frozen):
    """A named SubpopBench dataset (`metashift`, ...): its metadata file may be given."""

    metadata: Text | None = None


@dataclass(frozen=True)
class SubpopDataset:
    """What SubpopBench's metadata for one dataset means."""

    metadata: str  # default metadata file, relative to the root
    attribute_name: str
    attribute_values: tuple[str, ...]
    attribute_phrases: tuple[str, ...]
    class_names: tuple[str, ...] | None = None  # None: from class_names_file or class_k
    class_names_file: str | None = None  # JSON {class name: index} next to the metadata
    image_dir: str = ""  # filenames are relative to root/image_dir
    attribute_optional: bool = False  # True: a missing `a` column means attributes unknown
    set_aside_splits: tuple[str, ...] = ()  # evaluation-only splits we do not load


SEX_RACE = ("white male", "white female", "black male", "black female", "other male", "other female")

KNOWN: dict[str, SubpopDataset] = {
    "waterbirds": SubpopDataset(
        "metadata_waterbirds.csv", "place", ("land", "water"), ("on land", "on water"),
        class_names=("landbird", "waterbird"), image_dir="waterbird_complete95_forest2water2",
    ),
    "celeba": SubpopDataset(
        "metadata_celeba.csv", "Male", ("female", "male"), ("female", "male"),
        class_names=("not blond hair", "blond hair"), image_dir="img_align_celeba",
    ),
    "metashift": SubpopDataset(
        "metadata_metashift.csv", "context", ("outdoor", "indoor"), ("outdoors", "indoors"), class_names=("dog", "cat"),
    ),
    "imagenetbg": SubpopDataset(
        "metadata.csv", "background", ("any background",), ("on any background",),
        class_names=("dog", "bird", "wheeled vehicle", "reptile", "carnivore", "insect", "musical instrument",
                     "primate", "fish"),
        attribute_optional=True, set_aside_splits=("mixed_rand", "only_fg", "no_fg"),
    ),
    "nicopp": SubpopDataset(
        "metadata.csv", "context", ("autumn", "dim", "grass", "outdoor", "rock", "water"),
        ("in autumn", "in dim light", "on grass", "outdoors", "on rocks", "in water"),
        class_names_file="dg_label_id_mapping.json",
    ),
    "chexpert": SubpopDataset(
        "subpop_bench_meta/metadata_no_finding.csv", "sex and race", SEX_RACE,
        tuple(f"of a {v} patient" for v in SEX_RACE), class_names=("finding", "no finding"),
    ),
    "mimicnofinding": SubpopDataset(
        "subpop_bench_meta/metadata_no_finding.csv", "sex and race", SEX_RACE,
        tuple(f"of a {v} patient" for v in SEX_RACE), class_names=("finding", "no finding"),
    ),
}
ALIASES = {"chexpertnofinding": "chexpert", "imagenetbackgrounds": "imagenetbg"}


def known_key(name: str) -> str | None:
    """`NICO++`, `ImagenetBG`, `CheXpertNoFinding`... -> the KNOWN key, or None."""
    key = name.lower().replace("+", "p").replace("-", "").replace("_", "").replace(" ", "")
    key = ALIASES.get(key, key)
    return key if key in KNOWN else None


def _metadata_file(root: Path, spec: SubpopDataset | None, metadata: str | Path | None) -> Path:
    if metadata is not None:
        path = Path(metadata).expanduser()
        return require_file(path if path.is_absolute() or path.is_file() else root / path, "pass metadata=PATH of an existing CSV")
    if spec is not None:
        return require_file(
            root / spec.metadata, "generate it with SubpopBench's scripts/download.py, or pass metadata=PATH"
        )
    found = sorted(root.glob("metadata*.csv")) + sorted(root.glob("subpop_bench_meta/metadata*.csv"))
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) if found else "none"
        raise UserError(
            f"{root / 'metadata*.csv'}: expected one SubpopBench metadata CSV, found {listed}; pass metadata=PATH"
        )
    return found[0]


def _class_names(root: Path, spec: SubpopDataset | None, y: np.ndarray) -> list[str]:
    if spec is not None and spec.class_names is not None:
        return list(spec.class_names)
    names_file = root / spec.class_names_file if spec is not None and spec.class_names_file else None
    if names_file is not None and names_file.is_file():
        try:
            by_index = {int(i): str(n) for n, i in json.loads(names_file.read_text()).items()}
        except (ValueError, TypeError, AttributeError):
            raise UserError(
                f"{names_file}: expected a JSON object {{class name: index}}; restore the original file"
            ) from None
        if sorted(by_index) == list(range(len(by_index))):
            return [by_index[i] for i in range(len(by_index))]
    return [f"class_{k}" for k in range(int(y.max(initial=0)) + 1)]


def load_subpopbench(root: str | Path, name: str | None = None, metadata: str | Path | None = None) -> GroupDataset:
    """A dataset from SubpopBench's metadata CSV; `name` picks known class/attribute names."""
    root = Path(root)
    key = known_key(name) if name else None
    spec = KNOWN.get(key) if key else None
    path = _metadata_file(root, spec, metadata)
    header = read_table(path, nrows=0)
    has_a = "a" in header.columns or not (spec is None or spec.attribute_optional)
    needed = ["filename", "split", "y", *(["a"] if has_a else [])]
    require_columns(header, needed, path)
    # only the needed columns: CheXpert's metadata carries dozens of mixed-type ones
    frame = read_table(path, usecols=needed, dtype={"filename": str})[needed]
    lines = header_lines(len(frame))

    split = split_codes(frame["split"], path, "split", lines, spec.set_aside_splits if spec else ())
    kept = split >= 0
    set_aside = frame.loc[~kept, "split"].astype(str).value_counts().to_dict()
    frame, lines, split = frame[kept], lines[kept], split[kept]

    n_classes = len(spec.class_names) if spec and spec.class_names else None
    y = integer_codes(frame["y"], path, "y", lines, n_values=n_classes)
    if has_a:
        a = integer_codes(frame["a"], path, "a", lines, n_values=len(spec.attribute_values) if spec else None,
                          allow_missing=True)
    else:
        a = np.full(len(frame), -1, dtype=np.int64)
    if spec is not None:
        attribute_name, values, phrases = spec.attribute_name, list(spec.attribute_values), list(spec.attribute_phrases)
    elif has_a:
        attribute_name = "attribute"
        values = phrases = [f"attr_{k}" for k in range(int(a.max(initial=0)) + 1)]
    else:
        attribute_name, values, phrases = "attribute", ["attr_0"], ["attr_0"]

    image_root = root / spec.image_dir if spec else root
    ds = GroupDataset(
        name=key or name or "subpopbench",
        images=PathImages(
            image_root, checked_image_paths(image_root, frame["filename"].tolist(), path, "filename", lines)
        ),
        y=y,
        attrs=a[:, None],
        split=split,
        class_names=_class_names(root, spec, y),
        attribute_names=[attribute_name],
        attribute_values=[values],
        attribute_phrases=[list(phrases)],
        info={"source": "subpopbench", "metadata_file": str(path), "known_dataset": spec is not None,
              "set_aside_splits": set_aside},
    )
    check_split_coverage(ds, path)
    return ds
