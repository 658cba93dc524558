"""The value every dataset loader returns, and the group-index convention.

Group index (group_DRO, WILDS and SubpopBench agree): with bias attributes a1..ak of sizes
s1..sk, g = y * (s1*...*sk) + a1 + s1*a2 + s1*s2*a3 + ...  (a1 is the least significant
digit, as in MultiCelebA's c = Young + 2*Male).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..errors import UserError
from ..limits import DEFAULT_MAX_PIXELS, MAX_ASPECT

SPLITS = {"train": 0, "val": 1, "test": 2}


class ImageSource(Protocol):
    """Gives image number i as an RGB PIL image; picklable so DataLoader workers can use it."""

    def __len__(self) -> int: ...

    def load(self, i: int) -> Image.Image: ...

    def identity(self) -> str:
        """A string naming the list of images (part of the feature-cache key)."""
        ...

    def stamp(self, start: int, stop: int, verify: bool = False) -> str:
        """A string that changes whenever images [start, stop) could have changed."""
        ...


MAX_PIXELS_ENV = "GROUPCOOP_MAX_IMAGE_PIXELS"


def pixel_limit() -> int | None:
    """The most pixels an image may have: $GROUPCOOP_MAX_IMAGE_PIXELS (0: no limit), by default
    Pillow's own default. Read per image; Pillow's process-wide setting is never changed."""
    from ..io.environment import value

    if not os.environ.get(MAX_PIXELS_ENV, "").strip():
        return DEFAULT_MAX_PIXELS
    return value(MAX_PIXELS_ENV)


def check_image_size(size: tuple[int, int], shown, limit: int | None) -> None:
    """Refuse, from the header's size alone, an image too large or too thin to decode and resize
    (a 1 KB PNG of 400000 x 1 pixels resizes to 224 x 89.6M)."""
    width, height = size
    if limit is not None and width * height > limit:
        raise UserError(f"image {shown} has {width}x{height} = {width * height} pixels, more than the limit of "
                        f"{limit} pixels that guards against decompression bombs; shrink it, or raise the limit "
                        f"with {MAX_PIXELS_ENV}=<pixels> (0: no limit)")
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise UserError(f"image {shown} is {width}x{height} pixels, one side more than {MAX_ASPECT} times the "
                        "other; crop it, or remove its row from the metadata")


def _open_image(fh, shown) -> Image.Image:
    """Image.open (lazy: it reads the header) with Pillow's process-wide bomb warning silenced, as our
    per-image check (`check_image_size`) decides; past Pillow's own hard limit it refuses, in one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fh)
    except Image.DecompressionBombError:
        raise UserError(f"image {shown} has more than {2 * Image.MAX_IMAGE_PIXELS} pixels, more than Pillow "
                        "opens at all; shrink it") from None


@dataclass(frozen=True)
class PathImages:
    """Images stored as files under a root folder.

    Every path must resolve (symlinks followed) to a file under the resolved root, unless
    `allow_outside` is set: a symlink in a dataset folder cannot make us read other files.
    """

    root: Path
    paths: tuple[str, ...]
    allow_outside: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def _resolved(self, i: int) -> Path:
        path = self.root / self.paths[i]
        real = Path(os.path.realpath(path))
        if not self.allow_outside and not real.is_relative_to(os.path.realpath(self.root)):
            raise UserError(f"image {path} links to {real}, outside the dataset folder {self.root}; "
                            "copy the file into the folder, or pass --allow-symlinks-outside if you trust the link")
        return real

    def check_confined(self) -> None:
        """Refuse (one line) a dataset with a path that resolves outside the root."""
        if self.allow_outside:
            return
        root = os.path.realpath(self.root)
        inside = lambda real: real == root or real.startswith(root.rstrip(os.sep) + os.sep)  # noqa: E731
        folders: dict[str, bool] = {}
        for i, p in enumerate(self.paths):
            path = os.path.join(self.root, p)
            folder = os.path.dirname(path)
            if folder not in folders:
                folders[folder] = inside(os.path.realpath(folder))
            if not folders[folder] or (os.path.islink(path) and not inside(os.path.realpath(path))):
                self._resolved(i)

    def load(self, i: int) -> Image.Image:
        from ..io.read import open_regular

        path = self._resolved(i)
        shown = self.root / self.paths[i]
        if path.is_dir():
            raise UserError(f"image {shown} is a folder, not an image file; fix its row in the metadata")
        limit = pixel_limit()
        if not path.exists():
            raise UserError(f"image {shown} not found; restore it or remove its row from the metadata")
        try:
            # a regular file only: a FIFO or a device among the images never blocks the read
            with open_regular(path, "image", "replace it with an image file or remove its row",
                              name=shown) as fh, _open_image(fh, shown) as img:
                check_image_size(img.size, shown, limit)  # the header's size, before any decode
                return img.convert("RGB")
        except FileNotFoundError:
            raise UserError(f"image {shown} not found; restore it or remove its row from the metadata") from None
        except (OSError, ValueError, SyntaxError) as err:
            raise UserError(
                f"cannot read image {shown}: {err}; check the file or remove its row from the metadata"
            ) from None

    def identity(self) -> str:
        digest = hashlib.sha256(str(self.root.resolve()).encode())
        for p in self.paths:
            digest.update(p.encode() + b"\0")
        return "paths:" + digest.hexdigest()[:16]

    def stamp(self, start: int, stop: int, verify: bool = False) -> str:
        """Size, modification and change time and inode of each file (and its content hash with `verify`).

        The change time and inode catch a file replaced by one of the same size and mtime
        (`cp -p`, `mv`, `rsync -t` keep the mtime); nothing but the content hash catches an edit
        that also resets the change time, which needs root.
        """
        from ..io.read import open_regular

        digest = hashlib.sha256()
        for p in self.paths[start:stop]:
            path = self.root / p
            try:
                st = path.stat()
                digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0".encode())
                if verify:
                    with open_regular(path, "image") as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            digest.update(chunk)
            except (OSError, UserError):
                digest.update(f"{p}\0missing\0".encode())
        return digest.hexdigest()[:24]


def apply_phrase(phrase: str, text: str) -> str:
    """'{} on water' + 'round shape' -> 'round shape on water'; a phrase without {} is appended."""
    return phrase.replace("{}", text) if "{}" in phrase else f"{text} {phrase}"


@dataclass(frozen=True)
class GroupSpec:
    """How groups are numbered, named and put into prompt text: class x product of the bias
    attributes, g = y * prod(sizes) + mixed-radix(a1, a2, ...), a1 least significant.

    `phrases[j][v]` is the prompt text of value v of attribute j ("{} on water"); None for
    groups without names (K-means clusters), whose prompts are the class name alone.
    """

    class_names: tuple[str, ...]
    value_names: tuple[tuple[str, ...], ...]
    phrases: tuple[tuple[str, ...], ...] | None = None

    @property
    def sizes(self) -> list[int]:
        return [len(v) for v in self.value_names]

    @property
    def n_codes(self) -> int:
        return int(np.prod(self.sizes, dtype=np.int64))

    @property
    def n_groups(self) -> int:
        return len(self.class_names) * self.n_codes

    def encode(self, y: np.ndarray, attrs: np.ndarray) -> np.ndarray:
        return group_index(y, attrs, self.sizes)

    def decode(self, g: int) -> tuple[int, list[int]]:
        """Group id -> (class, value index per attribute)."""
        return decode_group(g, self.sizes)

    def class_of(self, groups: np.ndarray) -> np.ndarray:
        return np.asarray(groups) // self.n_codes

    def names(self) -> list[str]:
        """'round shape, water' per group, in group-id order."""
        out = []
        for g in range(self.n_groups):
            y, digits = self.decode(g)
            out.append(", ".join([self.class_names[y], *(self.value_names[j][a] for j, a in enumerate(digits))]))
        return out

    def prompt_texts(self) -> list[str]:
        """The text after a group prompt's context: 'round shape on water' (class name alone when unnamed)."""
        out = []
        for g in range(self.n_groups):
            y, digits = self.decode(g)
            text = self.class_names[y]
            if self.phrases is not None:
                for j, a in enumerate(digits):
                    text = apply_phrase(self.phrases[j][a], text)
            out.append(text)
        return out


def decode_group(g: int, attr_sizes: list[int]) -> tuple[int, list[int]]:
    """The inverse of `group_index` for one id: (class, value index per attribute)."""
    y, code = divmod(int(g), int(np.prod(attr_sizes, dtype=np.int64)))
    digits = []
    for size in attr_sizes:
        code, a = divmod(code, size)
        digits.append(a)
    return y, digits


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
    def group_spec(self) -> GroupSpec:
        return GroupSpec(tuple(self.class_names), tuple(tuple(v) for v in self.attribute_values),
                         tuple(tuple(p) for p in self.attribute_phrases) if self.attribute_phrases else None)

    @property
    def n_groups(self) -> int:
        return self.group_spec.n_groups

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
        return self.group_spec.names()

    def labelled(self, rows: np.ndarray) -> bool:
        """Whether every one of these rows has all its bias labels."""
        return len(self.attribute_names) > 0 and bool((self.attrs[rows] >= 0).all())

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS[split])

    @property
    def extra_metrics(self) -> list[str]:
        """The further metrics its loader declares for its true groups (`info["extra_metrics"]`,
        names in `metrics.EXTRA_METRICS`): MultiCelebA's pair averages."""
        return list(self.info.get("extra_metrics", []))

    @property
    def hidden_splits(self) -> list[str]:
        """The splits whose bias labels were dropped (`without_bias_labels`)."""
        return list(self.info.get("hidden_bias_labels", []))

    def without_bias_labels(self, splits) -> "GroupDataset":
        """A copy whose bias labels on these splits are unknown (-1), as if the data never had them;
        the attributes' names, values and phrases stay. Itself when there is nothing to hide."""
        splits = [s for s in SPLITS if s in set(splits or ())]
        if not splits or set(splits) <= set(self.hidden_splits):
            return self
        attrs = self.attrs.copy()
        attrs[np.isin(self.split, [SPLITS[s] for s in splits])] = -1
        hidden = [s for s in SPLITS if s in set(splits) | set(self.hidden_splits)]
        return replace(self, attrs=attrs, info={**self.info, "hidden_bias_labels": hidden})

    def group_counts(self, split: str) -> np.ndarray:
        g = self.groups[self.split_indices(split)]
        return np.bincount(g[g >= 0], minlength=self.n_groups)

    def manifest_digest(self) -> str:
        """Content identity of images, labels and splits."""
        digest = hashlib.sha256(self.images.identity().encode())
        for arr in (self.y, self.attrs, self.split):
            digest.update(np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()[:16]
