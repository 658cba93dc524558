"""Reading dataset metadata files, with the checks every loader shares.

So that every format reports bad input the same way: one line naming the file, the line of
the offending row, and the fix. Line numbers are the file's own (a CSV header is line 1).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError, close_matches, quoted
from .base import SPLITS, GroupDataset


def require_file(path: Path, fix: str) -> Path:
    from ..io.read import not_regular

    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file; {fix}")
    if not_regular(path):
        raise UserError(f"{path} is {not_regular(path)}, not a regular file; {fix}")
    if not path.is_file():
        raise UserError(f"{path} not found; {fix}")
    return path


def read_table(path: Path, **read_csv_options) -> pd.DataFrame:
    """pandas.read_csv of a regular file (never a FIFO or a device), parse errors as one-line UserErrors."""
    from ..io.read import open_regular

    try:
        with open_regular(path, "table", "give the CSV file itself") as fh:
            if read_csv_options.get("header", "infer") == "infer":  # pandas renames a repeated column 'x.1'
                _distinct_columns(pd.read_csv(fh, encoding="utf-8-sig", header=None, nrows=1, dtype=str,
                                              sep=read_csv_options.get("sep", ",")), path)
                fh.seek(0)
            frame = pd.read_csv(fh, encoding="utf-8-sig", **read_csv_options)
    except UnicodeDecodeError as err:
        raise UserError(f"cannot parse {path}: it is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot parse {path}: {reason}; check that it is an unmodified copy of the file") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _distinct_columns(header: pd.DataFrame, path: Path) -> None:
    """Refuse a header naming a column twice, spaces around a name not counting (' label' is 'label')."""
    seen: dict[str, int] = {}
    for k, cell in enumerate(header.iloc[0].tolist() if len(header) else []):
        name = "" if pd.isna(cell) else str(cell).strip()
        if name and name in seen:
            raise UserError(f"{path}: the header names column {quoted(name)} twice (columns {seen[name] + 1} and "
                            f"{k + 1}, spaces around names not counting); rename or remove one")
        seen.setdefault(name, k)


def require_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hint = close_matches(missing[0], frame.columns)
        found = ", ".join(list(frame.columns)[:10]) + (", ..." if len(frame.columns) > 10 else "")
        raise UserError(
            f"{path}: missing column {', '.join(missing)}{hint}; expected columns "
            f"{', '.join(columns)} (found: {found}); rename the header or pass the right column names"
        )


def header_lines(n_rows: int, first_line: int = 2) -> np.ndarray:
    """The file line of each data row (the header is line 1, so data starts on line 2)."""
    return np.arange(first_line, first_line + n_rows)


def integer_codes(
    values: pd.Series,
    path: Path,
    column: str,
    lines: np.ndarray,
    n_values: int | None = None,
    allow_missing: bool = False,
) -> np.ndarray:
    """Integer codes in [0, n_values); empty cells (and -1) become -1 when allowed. Without `n_values`,
    the codes must be 0..K-1 for the K distinct values present (a stray 1e12 is refused, not K = 10^12)."""
    given = n_values is not None
    numeric = pd.to_numeric(values, errors="coerce")
    empty = values.isna().to_numpy(copy=True)
    if allow_missing:
        empty |= (numeric == -1).to_numpy()
    bad = numeric.isna().to_numpy() & ~empty
    as_float = numeric.to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad |= ~empty & (~np.isfinite(as_float) | (as_float != np.round(as_float)) | (as_float < 0))
        if n_values is None:  # names are made per value: as many as the distinct values present, never max + 1
            n_values = max(1, len(np.unique(as_float[~empty & ~bad])))
        bad |= ~empty & (as_float >= n_values)
    if empty.any() and not allow_missing:
        i = int(np.flatnonzero(empty)[0])
        raise UserError(f"{path}, line {lines[i]}: empty value in column {column}; fill it in or remove the row")
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        counted = "" if given else f" (codes count up from 0: {n_values} distinct values)"
        raise UserError(f"{path}, line {lines[i]}: column {column} holds {quoted(str(values.iloc[i]))}, expected "
                        f"0..{n_values - 1}{counted}; fix the value")
    return np.where(empty, -1, np.nan_to_num(as_float, nan=-1)).astype(np.int64)


def split_codes(
    values: pd.Series, path: Path, column: str, lines: np.ndarray, set_aside: Sequence[str] = ()
) -> np.ndarray:
    """0/1/2 from 0/1/2 or train/val/test; values named in `set_aside` become -1 (caller drops them)."""
    known = {**{str(c): c for c in SPLITS.values()}, **SPLITS, **{str(s).lower(): -1 for s in set_aside}}
    # a split column with empty cells is read as float: 1.0 means 1
    keys = values.astype(str).str.strip().str.lower().str.replace(r"\.0$", "", regex=True)
    codes = keys.map(known)
    if codes.isna().any():
        i = int(np.flatnonzero(codes.isna().to_numpy())[0])
        what = "empty split" if pd.isna(values.iloc[i]) else f"unknown split {quoted(str(values.iloc[i]))}"
        raise UserError(f"{path}, line {lines[i]}: {what} in column {column}; use 0/1/2 or train/val/test")
    return codes.to_numpy(dtype=np.int64)


def inside_root(base: str, base_real: str, raw: str) -> str | None:
    """`raw` as a normalised path relative to base, or None when it leaves base.

    Absolute paths are accepted only when they lie inside base: SubpopBench writes absolute
    paths into its metadata, so a root that contains them must still work.
    """
    norm = os.path.normpath(raw.strip())
    if os.path.isabs(norm):
        for b in (base, base_real):
            if norm.startswith(b.rstrip(os.sep) + os.sep):
                norm = norm[len(b.rstrip(os.sep)) + 1 :]
                break
        else:
            return None
    if norm in (".", "..") or norm.startswith(".." + os.sep):
        return None
    return Path(norm).as_posix()


def _missing_files(base: Path, rel_paths: Sequence[str]) -> list[int]:
    """Indices of paths with no file, using one directory listing per folder."""
    by_folder: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(rel_paths):
        by_folder[os.path.dirname(p)].append(i)
    missing = []
    for folder, indices in by_folder.items():
        try:
            with os.scandir(base / folder) as entries:
                files = {e.name for e in entries if e.is_file()}
        except OSError:
            files = set()
        missing.extend(i for i in indices if os.path.basename(rel_paths[i]) not in files)
    return sorted(missing)


def checked_image_paths(
    base: Path, paths: Sequence, source: Path, column: str, lines: np.ndarray
) -> tuple[str, ...]:
    """Relative image paths under `base`, each checked to exist (never decoded)."""
    base_abs = os.path.abspath(base)
    base_real = os.path.realpath(base)
    cleaned = []
    for raw, line in zip(paths, lines):
        if not isinstance(raw, str) or not raw.strip():
            raise UserError(f"{source}, line {line}: empty image path in column {column}; fill it in or remove the row")
        rel = inside_root(base_abs, base_real, raw)
        if rel is None:
            raise UserError(
                f"{source}, line {line}: image path {quoted(raw)} in column {column} points outside {base}; "
                "give paths relative to that folder (no '..', no absolute paths elsewhere)"
            )
        cleaned.append(rel)
    missing = _missing_files(Path(base_abs), cleaned)
    if missing:
        i = missing[0]
        if (Path(base_abs) / cleaned[i]).is_dir():
            raise UserError(f"{source}, line {lines[i]}: image {Path(base) / cleaned[i]} is a folder, not an image "
                            f"file; fix the path in column {column} or remove the row")
        more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
        raise UserError(
            f"{source}, line {lines[i]}: image {Path(base) / cleaned[i]} not found{more}; "
            "restore the images or point the root at the folder they are in"
        )
    return tuple(cleaned)


def check_split_coverage(ds: GroupDataset, source: Path) -> None:
    """Every split has rows of every class, and of every value of an attribute it has labels of (a
    split with none of an attribute's labels is label-free for it: pseudo-groups stand in)."""
    for split, code in SPLITS.items():
        rows = ds.split == code
        if not rows.any():
            raise UserError(f"{source}: split {split} has no rows; every split (train, val, test) needs rows")
        for c, class_name in enumerate(ds.class_names):
            if not (ds.y[rows] == c).any():
                raise UserError(
                    f"{source}: split {split} has no rows with class={class_name}; "
                    "every split needs every class; check the split and label columns"
                )
        for j, (attr, values) in enumerate(zip(ds.attribute_names, ds.attribute_values)):
            present = set(np.unique(ds.attrs[rows, j]).tolist()) - {-1}
            if not present:
                continue  # no labels of this attribute in this split: nothing to compare
            for v, value in enumerate(values):
                if v not in present:
                    raise UserError(
                        f"{source}: split {split} has no rows with {attr}={value}; "
                        "every split needs every attribute value; check the split column or choose another attribute"
                    )
