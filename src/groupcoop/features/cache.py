"""The content-keyed feature cache on disk: one folder per (backbone content, preprocessing, image
list, storage dtype), holding the features in shards.

Each shard records a stamp of its images (for files: path, size, modification and change time
and inode, plus a content hash with `verify=True`), so a changed image re-extracts exactly its
shard and nothing else. Each shard is written to a temporary name and renamed into place only
when complete, so a killed run leaves only whole shards and the next run continues with the
missing ones. Shards are disjoint units of work: several processes (`torchrun`, see
`distributed.py`) can fill one cache at once.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..choices import FEATURE_DTYPES
from ..errors import UserError
from ..io.write import atomic_write, ensure_writable_dir

CACHE_VERSION = 2
DEFAULT_SHARD = 8192
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16}


def default_cache_dir() -> Path:
    """$GROUPCOOP_CACHE, else ~/.cache/groupcoop (or $XDG_CACHE_HOME/groupcoop)."""
    from ..io.environment import cache_folder

    return cache_folder()


def save_safetensors(path, name: str, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
    """One tensor as a safetensors file, byte for byte the same for the same input.

    (safetensors' own writer orders the metadata differently in every process.)
    """
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    dtype = {np.dtype(v): k for k, v in _NUMPY_DTYPES.items()}[array.dtype]
    header = json.dumps({"__metadata__": metadata, name: {"dtype": dtype, "shape": list(array.shape),
                         "data_offsets": [0, array.nbytes]}}, sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.write(array.data)


@dataclass(frozen=True)
class ShardFile:
    """The (n, d) feature matrix inside one shard file, read row by row with positioned reads.

    Nothing is memory-mapped: a mapped file counts every page ever touched in the process's
    resident memory, so an epoch of random batches would bring the whole cache in.
    """

    path: str
    offset: int  # byte offset of row 0
    shape: tuple[int, int]
    dtype: str  # safetensors dtype name

    @classmethod
    def open(cls, path: Path, name: str = "features") -> "ShardFile":
        with open(path, "rb") as fh:
            header_len = struct.unpack("<Q", fh.read(8))[0]
            entry = json.loads(fh.read(header_len))[name]
        if entry["dtype"] not in _NUMPY_DTYPES:
            raise ValueError(f"unsupported dtype {entry['dtype']}")
        rows, dim = (int(v) for v in entry["shape"])
        return cls(str(path), 8 + header_len + entry["data_offsets"][0], (rows, dim), entry["dtype"])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype == "F32" else torch.float16

    def take(self, local: np.ndarray) -> np.ndarray:
        """Rows `local` in the order given; one read per run of consecutive rows."""
        wanted, inverse = np.unique(local, return_inverse=True)
        out = np.empty((len(wanted), self.shape[1]), dtype=_NUMPY_DTYPES[self.dtype])
        row = out.itemsize * self.shape[1]
        view = memoryview(out.reshape(-1).view(np.uint8))
        edges = np.flatnonzero(np.diff(wanted) != 1) + 1
        runs = zip([0, *edges.tolist()], [*edges.tolist(), len(wanted)]) if len(wanted) else []
        with open(self.path, "rb", buffering=0) as fh:
            for a, b in runs:
                fh.seek(self.offset + int(wanted[a]) * row)
                part = view[a * row:b * row]
                while len(part):
                    got = fh.readinto(part)
                    if not got:
                        raise OSError(f"{self.path} is shorter than its header says")
                    part = part[got:]
        same = len(wanted) == len(local) and np.array_equal(wanted, local)
        return out if same else out[inverse.reshape(-1)]


@dataclass(frozen=True)
class FeatureCache:
    """Where one (backbone, preprocessing, image list, dtype) combination is stored."""

    folder: Path
    key: str
    fields: dict
    shard_size: int = DEFAULT_SHARD  # rows per shard, settled by `layout`

    @classmethod
    def for_inputs(cls, backbone, images, cache_dir: Path, dtype: str) -> "FeatureCache":
        fields = {
            "version": CACHE_VERSION,
            "backbone": backbone.identity,
            # the bytes of the model's weights, config, tokenizer and preprocessing files (never its
            # path or name): a changed file is a new key, a moved folder the same one
            "content": getattr(backbone, "content", None),
            "preprocess": repr(backbone.preprocess),
            "images": images.identity(),
            "n": len(images),
            "dtype": dtype,
        }
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
        return cls(Path(cache_dir) / key, key, fields)

    def shard_path(self, start: int, stop: int) -> Path:
        return self.folder / f"shard-{start:09d}-{stop:09d}.safetensors"

    def shard_stamp(self, start: int, stop: int) -> str | None:
        """The stamp a whole, matching shard was written with, or None when it is missing or broken."""
        path = self.shard_path(start, stop)
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                shape = fh.get_slice("features").get_shape()
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError):
            return None
        if meta.get("key") != self.key or not shape or shape[0] != stop - start:
            return None
        return meta.get("stamp", "")

    def write_shard(self, start: int, stop: int, features: torch.Tensor, stamp: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        layout = self.folder / "layout.json"
        if not layout.exists():  # written with the first shard, so a refused run leaves no cache folder
            atomic_write(layout, lambda p: Path(p).write_text(json.dumps({"shard_size": self.shard_size})))
        meta = {"key": self.key, "start": str(start), "stop": str(stop), "stamp": stamp}
        atomic_write(self.shard_path(start, stop), lambda p: save_safetensors(p, "features", features, meta))

    def mark_complete(self) -> None:
        atomic_write(self.folder / "complete.json", lambda p: Path(p).write_text(json.dumps(self.fields, indent=1)))

    def shard_files(self, shards: list[tuple[int, int]]) -> list[ShardFile]:
        return [ShardFile.open(self.shard_path(a, b)) for a, b in shards]

    def layout(self, shard_size: int | None) -> int:
        """The shard size to use: the one this folder's shards already have, else `shard_size`
        (default DEFAULT_SHARD); a different explicit size for a started folder is refused."""
        try:
            stored = int(json.loads((self.folder / "layout.json").read_text())["shard_size"])
        except (OSError, ValueError, KeyError, TypeError):
            stored = None
        if stored is not None and shard_size is not None and shard_size != stored:
            raise UserError(f"the feature cache {self.folder} holds shards of {stored} rows, not {shard_size}; "
                            f"pass --shard-size {stored} (or leave it out), or use another --cache-dir")
        return stored or shard_size or DEFAULT_SHARD

    def remove_abandoned(self, before: float) -> int:
        """Delete temporary shard files of writers killed before time `before` (a shard is written
        in well under a second, so an older temporary file has no live writer)."""
        removed = 0
        for tmp in self.folder.glob(".shard-*.tmp"):
            try:
                if tmp.stat().st_mtime < before:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


def shard_ranges(n: int, shard_size: int = DEFAULT_SHARD) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def stale_stamps(cache: FeatureCache, images, shards: list[tuple[int, int]], verify: bool = False) -> dict[int, str]:
    """{index: the images' stamp now} for the shards that are missing, broken, or whose images changed since."""
    stale = {}
    for k, (a, b) in enumerate(shards):
        stamp = images.stamp(a, b, verify)
        if cache.shard_stamp(a, b) != stamp:
            stale[k] = stamp
    return stale


def stale_shards(cache: FeatureCache, images, shards: list[tuple[int, int]], verify: bool = False) -> list[int]:
    """Indices of the shards that are missing, broken, or whose images changed since."""
    return list(stale_stamps(cache, images, shards, verify))


def open_cache(backbone, images, cache_dir: Path | None, dtype: str, shard_size: int | None = None):
    """(the cache, its shard ranges) for these inputs."""
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FEATURE_DTYPES)}")
    cache = FeatureCache.for_inputs(backbone, images, cache_dir or default_cache_dir(), dtype)
    cache = replace(cache, shard_size=cache.layout(shard_size))
    return cache, shard_ranges(len(images), cache.shard_size)


def check_cache_dir(cache_dir: Path | None) -> Path:
    """The cache folder, made sure to be creatable and writable before any work."""
    return ensure_writable_dir(Path(cache_dir or default_cache_dir()), "--cache-dir")
