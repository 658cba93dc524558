"""The value every dataset loader returns, and the group-index convention.

Group index (group_DRO, WILDS and SubpopBench agree): with bias attributes a1..ak of sizes
s1..sk, g = y * (s1*...*sk) + a1 + s1*a2 + s1*s2*a3 + ...  (a1 is the least significant
digit, as in MultiCelebA's c = Young + 2*Male).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..errors import UserError

SPLITS = {"train": 0, "val": 1, "test": 2}


class ImageSource(Protocol):
    """Gives image number i as an RGB PIL image; picklable so DataLoader workers can use it."""

    def __len__(self) -> int: ...

    def load(self, i: int) -> Image.Image: ...

    def identity(self) -> str:
        """A string that changes whenever the images could change (for the feature cache)."""
        ...


@dataclass(frozen=True)
class PathImages:
    """Images stored as files under a root folder."""

    root: Path
    paths: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Image.Image:
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as err:
            raise UserError(
                f"cannot read image {path}: {err}; check the file or remove its row from the metadata"
            ) from None

    def identity(self) -> str:
        digest = hashlib.sha256(str(self.root.resolve()).encode())
        for p in self.paths:
            digest.update(p.encode() + b"\0")
        return "paths:" + digest.hexdigest()[:16]


def group_index(y: np.ndarray, attrs: np.ndarray, attr_sizes: list[int]) -> np.ndarray:
    """g = y * prod(sizes) + mixed-radix(a1, a2, ...), a1 least significant."""
    y = np.asarray(y, dtype=np.int64)
    attrs = np.asarray(attrs, dtype=np.int64).reshape(len(y), len(attr_sizes))
    code = np.zeros(len(y), dtype=np.int64)
    radix = 1
    for j, size in enumerate(attr_sizes):
        code += attrs[:, j] * radix
        radix *= size
    return y * radix + code


@dataclass
class GroupDataset:
    """Images with a target class, bias attributes and a split for each.

    `attrs` holds -1 where a bias label is unknown; `has_group_labels` says whether every
    row is labelled. `attribute_phrases[j][v]` is the text used in prompts for value v of
    attribute j ("on land"); `attribute_values[j][v]` is its short name ("land").
    """

    name: str
    images: ImageSource
    y: np.ndarray
    attrs: np.ndarray
    split: np.ndarray
    class_names: list[str]
    attribute_names: list[str]
    attribute_values: list[list[str]]
    attribute_phrases: list[list[str]] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        self.split = np.asarray(self.split, dtype=np.int64)
        self.attrs = np.asarray(self.attrs, dtype=np.int64).reshape(len(self.y), len(self.attribute_names))
        if not (len(self.images) == len(self.y) == len(self.split)):
            raise ValueError("images, y and split must have the same length")

    @property
    def attr_sizes(self) -> list[int]:
        return [len(v) for v in self.attribute_values]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_groups(self) -> int:
        return self.n_classes * int(np.prod(self.attr_sizes, dtype=np.int64))

    @property
    def has_group_labels(self) -> bool:
        return len(self.attribute_names) > 0 and bool((self.attrs >= 0).all())

    @property
    def groups(self) -> np.ndarray:
        """Group index per row (-1 where a bias label is missing)."""
        g = group_index(self.y, np.maximum(self.attrs, 0), self.attr_sizes)
        return np.where((self.attrs >= 0).all(axis=1), g, -1)

    def group_names(self) -> list[str]:
        """Readable names: 'waterbird, water' style, in group-index order."""
        names = []
        for g in range(self.n_groups):
            y, code = divmod(g, int(np.prod(self.attr_sizes, dtype=np.int64)))
            parts = [self.class_names[y]]
            for values in self.attribute_values:
                code, a = divmod(code, len(values))
                parts.append(values[a])
            names.append(", ".join(parts))
        return names

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS[split])

    def group_counts(self, split: str) -> np.ndarray:
        g = self.groups[self.split_indices(split)]
        return np.bincount(g[g >= 0], minlength=self.n_groups)

    def manifest_digest(self) -> str:
        """Content identity of images, labels and splits (part of the feature-cache key)."""
        digest = hashlib.sha256(self.images.identity().encode())
        for arr in (self.y, self.attrs, self.split):
            digest.update(np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()[:16]
