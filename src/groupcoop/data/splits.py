"""Random train/val/test splits for a dataset without a split column (`val_fraction`, `test_fraction`).

scikit-learn's `train_test_split` draws them, stratified by class and, where the rows have bias
labels, by group (class x bias values; rows without a bias label form one stratum per class), so
every split keeps the data's group shares; where a group is too small to be stratified on, by
class alone. Seeded: the same rows, fractions and seed give the same splits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import SPLITS


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) row counts, as train_test_split rounds them: test first, then val from the rest."""
    n_test = math.ceil(test_fraction * n)
    rest = n - n_test
    n_val = math.ceil(val_fraction / (1 - test_fraction) * rest) if rest > 0 else 0
    return rest - n_val, n_val, n_test


def _strata(y: np.ndarray, attrs: np.ndarray) -> list[np.ndarray]:
    """What to stratify on, finest first: class x bias values (-1: no label), then class alone."""
    keys = np.column_stack([y, attrs]) if attrs.size else y[:, None]
    groups = np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)
    return [groups, y] if attrs.size else [y]


def random_splits(y: np.ndarray, attrs: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                  source: Path) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) per row, drawn by train_test_split (stratified, seeded)."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    sizes = split_sizes(n, val_fraction, test_fraction)
    if min(sizes) < 1:
        empty = [name for name, size in zip(SPLITS, sizes) if size < 1]
        raise UserError(f"{source}: val_fraction {val_fraction:g} and test_fraction {test_fraction:g} of {n} rows "
                        f"leave the {' and '.join(empty)} split empty; give fractions that leave every split rows")
    rows = np.arange(n)
    last = None
    for strata in _strata(np.asarray(y), np.asarray(attrs).reshape(n, -1)):
        try:
            rest, test = train_test_split(rows, test_size=sizes[2], random_state=seed, stratify=strata)
            train, val = train_test_split(rest, test_size=sizes[1], random_state=seed, stratify=strata[rest])
            break
        except ValueError as err:  # a stratum too small for every split: try the coarser one
            last = err
    else:
        reason = str(last).strip().splitlines()[0] if str(last).strip() else "too few rows"
        raise UserError(f"{source}: cannot split {n} rows at random with every class in every split ({reason}); "
                        "add rows, change val_fraction/test_fraction, or give a split column")
    split = np.empty(n, dtype=np.int64)
    split[train], split[val], split[test] = SPLITS["train"], SPLITS["val"], SPLITS["test"]
    return split
