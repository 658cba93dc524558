"""How strongly two labellings of the same images go together: what discovery's tests and the image
side both measure (a leaf module, so discovery.py and unnamed.py need not import each other)."""

from __future__ import annotations

import numpy as np


def cramers_v(y: np.ndarray, values: np.ndarray) -> float:
    """Cramér's V of the class x value contingency table (no continuity correction)."""
    from scipy.stats.contingency import association, crosstab

    table = crosstab(y, values).count
    if min(table.shape) < 2:
        return 0.0
    return float(association(table, method="cramer", correction=False))


def read_off(y: np.ndarray, values: np.ndarray, kept: list[dict]) -> float:
    """How much `values` are read off a kept candidate beyond what the class explains: the largest, over
    the `kept` candidates, of Cramér's V of the two within each class, weighted by class size (0 with
    nothing kept). A proxy (weather read off the background) scores high; a second bias drawn apart
    from the first within each class, low."""
    best = 0.0
    for c in kept:
        within = sum((y == k).sum() * cramers_v(c["assigned"][y == k], values[y == k]) for k in np.unique(y))
        best = max(best, within / len(y))
    return float(best)
