"""MultiCelebA (Kim et al., ICML 2024): CelebA with two spurious attributes at once.

Layout: a CelebA folder, official or Kaggle form (see `celeba.py`); nothing else is needed.

Construction (exact): target High_Cheekbones, biases Young and Male (optionally a third,
Mouth_Slightly_Open). Bias code c = Young + 2*Male, group g = 4*y + c (8 groups; with the
third bias g = 8*y + Young + 2*Male + 4*Mouth_Slightly_Open). Training set: from the official
train partition, for each (y, Young, Male) cell the FIRST `TRAIN_CELL_SIZES[g]` rows in file
order (None = all rows); a cell with fewer rows gives all it has, recorded in
`info["short_train_cells"]`. Validation and test: the full official partitions. With the third
bias the training rows are chosen by the same two-bias cells.

Metrics (declared in `info["extra_metrics"]`, two biases only: `metrics.multiceleba_metrics`):
WORST, UNBIASED, InDist (train-weighted), and the pair averages GG = mean(g2, g5),
GC = mean(g3, g4), CG = mean(g0, g7), CC = mean(g1, g6).

Citation: N. Kim et al., "Improving Robustness to Multiple Spurious Correlations by
Multi-Objective Optimization", ICML 2024; CelebA: Liu et al., ICCV 2015.
Licence: CelebA's, non-commercial research only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import StrictBool

from ..schema import Frozen
from .base import GroupDataset
from .celeba import celeba_dataset, read_celeba


class MultiCelebAOptions(Frozen):
    mouth_slightly_open: StrictBool = False


TARGET = "High_Cheekbones"
BIASES = ("Young", "Male")
THIRD_BIAS = "Mouth_Slightly_Open"

# rows taken from each train cell g = 4*y + Young + 2*Male, in file order; None = all (~44.5k)
TRAIN_CELL_SIZES: dict[int, int | None] = {0: 800, 1: 40, 2: 16220, 3: 800, 4: 2200, 5: None, 6: 110, 7: 2200}


def select_train_rows(
    y: np.ndarray, young: np.ndarray, male: np.ndarray, is_train: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Mask of the chosen train rows, and the cells that had fewer rows than asked for."""
    cell = 4 * y + young + 2 * male
    chosen = np.zeros(len(y), dtype=bool)
    short = {}
    for g, wanted in TRAIN_CELL_SIZES.items():
        in_cell = np.flatnonzero(is_train & (cell == g))  # file order
        chosen[in_cell if wanted is None else in_cell[:wanted]] = True
        if wanted is not None and len(in_cell) < wanted:
            short[g] = {"wanted": wanted, "available": len(in_cell)}
    return chosen, short


def load_multiceleba(root: str | Path, mouth_slightly_open: bool = False) -> GroupDataset:
    """MultiCelebA from a CelebA folder; `mouth_slightly_open` adds the third bias."""
    tables = read_celeba(root)
    target = tables.resolve_attribute(TARGET)
    biases = [tables.resolve_attribute(b) for b in (*BIASES, *((THIRD_BIAS,) if mouth_slightly_open else ()))]
    chosen, short = select_train_rows(
        tables.column(target), tables.column(biases[0]), tables.column(biases[1]), tables.split == 0
    )
    rows = np.flatnonzero(chosen | (tables.split != 0))
    info = {
        "extra_metrics": [] if mouth_slightly_open else ["multiceleba"],  # its pairs are of the 8 two-bias groups
        "train_cell_sizes": dict(TRAIN_CELL_SIZES),
        "short_train_cells": short,
    }
    return celeba_dataset(tables, rows, target, biases, "multiceleba", info)
