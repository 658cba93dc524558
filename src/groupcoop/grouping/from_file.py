"""Training groups read from a file (`--groups file:groups.csv`), matched to the dataset's rows by image path.

The file is what `groupcoop groups` writes, or any CSV with its columns: `path` (the image's path as
the dataset lists it, relative to the dataset folder; `<dataset>:<row>` for a dataset made in memory)
and the group, by name (`group_name`, "<class>, <value>"; the class part may be left out) or, without
names, by id (`group`: the ids of one class's rows are its groups, in id order). An optional `y`
(class code or name) is checked against the dataset's class. Every training image needs one row and
every row one training image; anything else is one error line. The groups' values have no prompt
phrases: prompts carry the class name alone, as for k-means clusters.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.base import GroupDataset, GroupSpec, PathImages
from ..errors import UserError, quoted
from ..schema import MAX_VALUES

FIX = "pass --groups file:FILE, a groups.csv written by `groupcoop groups` on the same data"


def image_keys(ds: GroupDataset) -> list[str]:
    """What names each row's image in groups.csv: its path under the dataset folder, or `<dataset>:<row>`."""
    if isinstance(ds.images, PathImages):
        return list(ds.images.paths)
    return [f"{ds.name}:{i}" for i in range(len(ds.images))]


def _key(cell: str) -> str:
    from ..io.csv_safe import read_back

    text = read_back(cell).strip()
    return Path(os.path.normpath(text)).as_posix() if text else ""


def _class_of(cell: str, ds: GroupDataset) -> int | None:
    """A `y` cell as a class code (a code or a class name); None when empty."""
    from ..io.csv_safe import read_back

    text = read_back(cell).strip()
    if not text:
        return None
    if text in ds.class_names:
        return ds.class_names.index(text)
    try:
        return int(float(text))
    except ValueError:
        return -1


def _value(cell: str, by: str, y: int, ds: GroupDataset) -> str | int | None:
    """A row's group within its class: the name after "<class>, ", or an integer id; None when it names
    another class's group."""
    from ..io.csv_safe import read_back

    text = read_back(cell).strip()
    if by == "group":
        try:
            return int(float(text))
        except ValueError:
            return text or ""
    own = ds.class_names[y] + ", "
    if text.startswith(own):
        return text[len(own):].strip()
    if any(text.startswith(c + ", ") for c in ds.class_names):
        return None
    return text


def read_group_file(ds: GroupDataset, path: str | Path) -> tuple[GroupSpec, np.ndarray]:
    """(the groups' spec, the group id of each training row, in split order) from a groups file."""
    from ..data.metadata import header_lines, read_table, require_file

    path = require_file(Path(path).expanduser(), FIX)
    frame = read_table(path, dtype=str, keep_default_na=False)
    by = next((c for c in ("group_name", "group") if c in frame.columns), None)
    if "path" not in frame.columns or by is None:
        need = "path" if "path" not in frame.columns else "group_name (or group)"
        raise UserError(f"{path}: no {need} column; a groups file has a path column (the image) and a group_name "
                        f"or group column; {FIX}")
    keys = image_keys(ds)
    train = ds.split_indices("train")
    position = {keys[r]: k for k, r in enumerate(train)}
    line_of = np.zeros(len(train), dtype=np.int64)  # the file line of each training row (0: none yet)
    values: list = [None] * len(train)
    classes = frame["y"].tolist() if "y" in frame.columns else [""] * len(frame)
    for line, cell, group, y_cell in zip(header_lines(len(frame)), frame["path"], frame[by], classes):
        key = _key(cell)
        k = position.get(key)
        if k is None:
            where = "is not in the training split of" if key in set(keys) else "is no image of"
            raise UserError(f"{path}, line {line}: {quoted(key)} {where} {ds.name}; give one row per training image "
                            "(matched by path)")
        if line_of[k]:
            raise UserError(f"{path}, line {line}: {quoted(key)} is listed twice (first on line {line_of[k]}); "
                            "give each image one group")
        line_of[k] = line
        y = int(ds.y[train[k]])
        given = _class_of(y_cell, ds)
        if given is not None and given != y:
            raise UserError(f"{path}, line {line}: {quoted(key)} has class {quoted(y_cell)} there, "
                            f"{ds.class_names[y]} in {ds.name}; {FIX}")
        values[k] = _value(group, by, y, ds)
        if values[k] is None or values[k] == "":
            what = "another class's group" if values[k] is None else "no group"
            raise UserError(f"{path}, line {line}: {quoted(key)} ({ds.class_names[y]}) has {what} in column {by}; "
                            "give each image a group of its own class")
    missing = np.flatnonzero(line_of == 0)
    if len(missing):
        raise UserError(f"{path}: {len(missing)} training images of {ds.name} have no row (first: "
                        f"{quoted(keys[train[missing[0]]])}); {FIX} (the same dataset options and --seed)")
    return _numbered(ds, train, values, by, path)


def _numbered(ds: GroupDataset, train: np.ndarray, values: list, by: str, path: Path) -> tuple[GroupSpec, np.ndarray]:
    """Value names and group ids: names in sorted order; ids ranked within each class ("group 0", ...)."""
    y = ds.y[train]
    if by == "group_name":
        names = sorted(set(values))
        index = {name: v for v, name in enumerate(names)}
        codes = np.array([index[v] for v in values], dtype=np.int64)
    else:
        codes = np.zeros(len(values), dtype=np.int64)
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            ranked = {v: k for k, v in enumerate(sorted({values[i] for i in rows}, key=lambda v: (str(type(v)), v)))}
            codes[rows] = [ranked[values[i]] for i in rows]
        names = [f"group {k}" for k in range(int(codes.max(initial=0)) + 1)]
    if len(names) > MAX_VALUES:
        raise UserError(f"{path}: {len(names)} groups per class, more than the {MAX_VALUES} a run takes; merge some")
    spec = GroupSpec(tuple(ds.class_names), (tuple(names),), None)
    return spec, y * len(names) + codes
