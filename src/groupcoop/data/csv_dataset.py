"""Custom CSV datasets.

Layout: any folder of images plus one CSV with a header. One column holds image paths
relative to the folder (`path_col`), one the target label (`label_col`), zero or more the
bias attributes (`attr_cols`), and one the split (`split_col`, default `split`). Without a split
column, `val_fraction` and `test_fraction` split the rows at random (splits.py: stratified by class
and group, seeded by `split_seed`, which a run sets to its seed); a split column and fractions
together are refused. The full schema, with an example: docs/datasets.md.

Encodings: split values 0/1/2 or train/val/test (any case). Labels and attribute values are
integers 0..k-1 or strings; strings map to codes in sorted order, unless names are given, in
which case a string maps to its position in the given list. An empty attribute cell means
"unknown" (-1); an empty label or path is an error. A bias column empty in every row of a split
(the training split, say) is the label-free case for that split: it loads, and a labeler
(`--groups pseudo`) makes the groups there; a column empty in every row and without given names
(attr_values / attr_phrases) is left out.

Groups: g = y * prod(attribute sizes) + mixed-radix(a1, a2, ...), a1 least significant
(see `base.group_index`).

Citation / licence: none of its own; the user's images keep their own licence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from ..errors import UserError, close_matches, quoted
from ..schema import Frozen, Number, PhraseLists, Seed, Text, TextList
from .base import GroupDataset, PathImages
from .metadata import (check_split_coverage, checked_image_paths, header_lines, integer_codes, read_table,
                       require_columns, require_file, split_codes)
from .splits import random_splits


class CsvOptions(Frozen):
    csv_path: Text
    path_col: Text
    label_col: Text
    attr_cols: TextList = []
    class_names: Annotated[TextList, Field(min_length=2)] | None = None
    attr_values: PhraseLists | None = None
    attr_phrases: PhraseLists | None = None
    split_col: Text = "split"
    val_fraction: Annotated[Number, Field(gt=0, lt=1)] | None = None  # without a split column: random splits
    test_fraction: Annotated[Number, Field(gt=0, lt=1)] | None = None
    split_seed: Seed | None = None  # the random splits' seed (a run's: its --seed)

    @model_validator(mode="after")
    def _fractions(self):
        """Both fractions or neither, leaving train rows (a UserError passes through pydantic as it is)."""
        given = (self.val_fraction is not None, self.test_fraction is not None)
        if any(given) and not all(given):
            empty = "test" if given[0] else "val"
            raise UserError(f"--val-fraction and --test-fraction go together (train gets the rest): without "
                            f"--{empty}-fraction the {empty} split is empty")
        if all(given) and self.val_fraction + self.test_fraction >= 1:
            raise UserError(f"--val-fraction {self.val_fraction:g} and --test-fraction {self.test_fraction:g} leave "
                            "the train split empty; their sum must be below 1")
        return self


def encode_labels(
    values: pd.Series, names: Sequence[str] | None, path: Path, column: str, lines: np.ndarray, allow_missing: bool
) -> tuple[np.ndarray, list[str] | None]:
    """Codes and value names for a label or attribute column (integers or strings).

    Returns names=None for integer columns without given names (the caller picks defaults).
    """
    present = values.dropna()
    numeric = pd.to_numeric(present, errors="coerce")
    if present.empty or not numeric.isna().any():
        n = len(names) if names is not None else None
        return integer_codes(values, path, column, lines, n, allow_missing), (list(names) if names else None)
    text = values.map(lambda v: v if pd.isna(v) else str(v).strip())
    names = list(names) if names is not None else sorted(set(text.dropna()))
    index = {name: k for k, name in enumerate(names)}
    codes = np.empty(len(text), dtype=np.int64)
    for i, v in enumerate(text.tolist()):
        if pd.isna(v):
            if not allow_missing:
                raise UserError(
                    f"{path}, line {lines[i]}: empty value in column {column}; fill it in or remove the row"
                )
            codes[i] = -1
        elif v in index:
            codes[i] = index[v]
        else:
            raise UserError(
                f"{path}, line {lines[i]}: column {column} holds {quoted(v)}, not one of the given names "
                f"{', '.join(names)}{close_matches(v, names)}; fix the value or the names"
            )
    return codes, names


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _resolve_csv(root: Path, csv_path: str | Path) -> Path:
    path = Path(csv_path).expanduser()
    if path.is_absolute() or path.is_file():
        return path
    return root / path


def _check_split_column(frame: pd.DataFrame, split_col: str, drawn: bool, path: Path) -> None:
    """A split column, or random splits: exactly one of the two."""
    if drawn and split_col in frame.columns:
        raise UserError(f"{path} has a split column ({split_col}), and --val-fraction/--test-fraction would split it "
                        "again at random; drop the fractions to use the column, or remove the column")
    if not drawn and split_col not in frame.columns:
        raise UserError(f"{path}: missing split column {split_col}{close_matches(split_col, frame.columns)}; add one "
                        "(train/val/test or 0/1/2), name it with --option split_col=NAME, or split at random with "
                        "--val-fraction F --test-fraction F")


def load_csv(
    root: str | Path,
    csv_path: str | Path,
    path_col: str,
    label_col: str,
    attr_cols: Sequence[str] | str = (),
    class_names: Sequence[str] | None = None,
    attr_values: Sequence[Sequence[str]] | None = None,
    attr_phrases: Sequence[Sequence[str]] | None = None,
    split_col: str = "split",
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    split_seed: int | None = None,
) -> GroupDataset:
    """A dataset described by one CSV (paths relative to `root`; csv_path relative to cwd or root);
    without a split column, split at random by `val_fraction` and `test_fraction` (seed `split_seed`)."""
    root = Path(root)
    attr_cols = _as_list(attr_cols)
    for given, what in ((attr_values, "attr_values"), (attr_phrases, "attr_phrases")):
        if given is not None and len(given) != len(attr_cols):
            raise UserError(
                f"{what} has {len(given)} lists but attr_cols names {len(attr_cols)} columns; give one list per column"
            )
    path = require_file(_resolve_csv(root, csv_path), "pass the CSV that lists the images with --option csv_path=FILE")
    frame = read_table(path, dtype={path_col: str})
    drawn = val_fraction is not None or test_fraction is not None
    _check_split_column(frame, split_col, drawn, path)
    require_columns(frame, [path_col, label_col, *attr_cols, *([] if drawn else [split_col])], path)
    lines = header_lines(len(frame))

    y, found_classes = encode_labels(frame[label_col], class_names, path, label_col, lines, allow_missing=False)
    class_names = found_classes or [f"class_{k}" for k in range(int(y.max(initial=0)) + 1)]  # 0..K-1: K present
    kept, attrs, values, phrases, unlabelled = [], [], [], [], []
    for j, col in enumerate(attr_cols):
        given = attr_values[j] if attr_values is not None else None
        phrase = list(attr_phrases[j]) if attr_phrases is not None else None
        codes, names = encode_labels(frame[col], given, path, col, lines, allow_missing=True)
        if (codes < 0).all():  # no label in any row: the label-free case, not an error
            unlabelled.append(col)
            names = names or phrase
            if names is None:
                continue  # nothing names its values: as if the column were not there (--bias-prompts names them)
        names = names or [f"{col}={k}" for k in range(int(codes.max(initial=0)) + 1)]
        if phrase is not None and len(phrase) != len(names):
            raise UserError(
                f"attr_phrases for {col} has {len(phrase)} entries but the column has {len(names)} values; "
                "give one phrase per value"
            )
        kept.append(col)
        attrs.append(codes)
        values.append(names)
        phrases.append(phrase or list(names))

    attrs = np.stack(attrs, axis=1) if attrs else np.zeros((len(frame), 0), dtype=np.int64)
    if drawn:
        split = random_splits(y, attrs, val_fraction, test_fraction, split_seed or 0, path)
    else:
        split = split_codes(frame[split_col], path, split_col, lines)
    ds = GroupDataset(
        name="csv",
        images=PathImages(root, checked_image_paths(root, frame[path_col].tolist(), path, path_col, lines)),
        y=y,
        attrs=attrs,
        split=split,
        class_names=list(class_names),
        attribute_names=kept,
        attribute_values=values,
        attribute_phrases=phrases,
        info={"metadata_file": str(path), **({"unlabelled_columns": unlabelled} if unlabelled else {}),
              **({"random_splits": {"val_fraction": val_fraction, "test_fraction": test_fraction,
                                    "seed": split_seed or 0}} if drawn else {})},
    )
    check_split_coverage(ds, path)
    return ds
