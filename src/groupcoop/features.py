"""Image features, extracted once and cached by content, read back memory-mapped.

A cache folder is keyed by the backbone's weights identity, its preprocessing, the list of
images and the storage dtype. Extraction works in shards; each shard records a stamp of its
images (for files: path, size, modification and change time and inode, plus a content hash with
`verify=True`), so a changed image re-extracts exactly its shard and nothing else. Each
shard is written to a temporary name and renamed into place only when complete, so a killed
run leaves only whole shards and the next run continues with the missing ones. Shards are
disjoint units of work: several processes (`torchrun`, see `distributed.py`) can fill one
cache at once.

Features come back as a `Features` store: rows are gathered from the memory-mapped shards on
demand and L2-normalised then, so memory stays flat however large the dataset.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .errors import UserError
from .files import atomic_write, ensure_writable_dir

CACHE_VERSION = 2
DEFAULT_SHARD = 8192
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16}


def default_cache_dir() -> Path:
    """$GROUPCOOP_CACHE, else ~/.cache/groupcoop (or $XDG_CACHE_HOME/groupcoop)."""
    if os.environ.get("GROUPCOOP_CACHE"):
        return Path(os.environ["GROUPCOOP_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "groupcoop"


def default_workers() -> int:
    return min(4, max(1, (os.cpu_count() or 2) - 1))


# --- decoding in worker processes -------------------------------------------------------------

class DecodedImages(torch.utils.data.Dataset):
    """Images [start, stop) of a source, preprocessed; runs inside DataLoader workers.

    A failure comes back as an error string for that image instead of an exception: an
    exception raised in a worker would reach the user wrapped in the worker's traceback.
    """

    def __init__(self, images, preprocess, start: int = 0, stop: int | None = None):
        self.images, self.preprocess = images, preprocess
        self.start, self.stop = start, len(images) if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        try:
            return self.start + i, self.preprocess(self.images.load(self.start + i)), None
        except UserError as err:
            return self.start + i, None, str(err)
        except Exception as err:  # noqa: BLE001 - a decoder's own error, reported for this image
            return self.start + i, None, f"cannot read image {self.start + i}: {type(err).__name__}: {err}"


def collate_decoded(items):
    """(indices, stacked tensors of the images that decoded, [(index, error), ...])."""
    ok = [(i, t) for i, t, e in items if e is None]
    errors = [(i, e) for i, _, e in items if e is not None]
    tensors = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], tensors, errors


def image_loader(images, preprocess, start: int, stop: int, batch_size: int, workers: int, pin: bool = False):
    return torch.utils.data.DataLoader(
        DecodedImages(images, preprocess, start, stop), batch_size=batch_size, num_workers=workers,
        collate_fn=collate_decoded, pin_memory=pin, persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None)


# --- the cache on disk ------------------------------------------------------------------------

def _mmap_tensor(path: Path, name: str = "features") -> torch.Tensor:
    """A tensor of a safetensors file, memory-mapped (copy-on-write, never written back)."""
    with open(path, "rb") as fh:
        header_len = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(header_len))
        entry = header[name]
        begin, end = entry["data_offsets"]
        if entry["dtype"] not in _NUMPY_DTYPES:
            raise ValueError(f"unsupported dtype {entry['dtype']}")
        if end == begin:
            return torch.zeros(entry["shape"], dtype=torch.float32)
        buffer = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    array = np.frombuffer(buffer, dtype=_NUMPY_DTYPES[entry["dtype"]], count=(end - begin) // np.dtype(
        _NUMPY_DTYPES[entry["dtype"]]).itemsize, offset=8 + header_len + begin)
    return torch.from_numpy(array.reshape(entry["shape"]))


@dataclass(frozen=True)
class FeatureCache:
    """Where one (backbone, preprocessing, image list, dtype) combination is stored."""

    folder: Path
    key: str
    fields: dict

    @classmethod
    def for_inputs(cls, backbone, images, cache_dir: Path, dtype: str) -> "FeatureCache":
        fields = {
            "version": CACHE_VERSION,
            "backbone": backbone.identity,
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
        atomic_write(self.shard_path(start, stop), lambda p: save_file(
            {"features": features.contiguous()}, p,
            metadata={"key": self.key, "start": str(start), "stop": str(stop), "stamp": stamp}))

    def mark_complete(self) -> None:
        atomic_write(self.folder / "complete.json", lambda p: Path(p).write_text(json.dumps(self.fields, indent=1)))

    def open(self, shards: list[tuple[int, int]]) -> "Features":
        return Features([_mmap_tensor(self.shard_path(a, b)) for a, b in shards])


def shard_ranges(n: int, shard_size: int = DEFAULT_SHARD) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def stale_shards(cache: FeatureCache, images, shards: list[tuple[int, int]], verify: bool = False) -> list[int]:
    """Indices of the shards that are missing, broken, or whose images changed since."""
    return [k for k, (a, b) in enumerate(shards) if cache.shard_stamp(a, b) != images.stamp(a, b, verify)]


# --- features as the rest of the code sees them --------------------------------------------------

class Features:
    """A (n, d) feature matrix held as row blocks (memory-mapped shards or in-memory tensors).

    Indexing with row indices gathers just those rows, as L2-normalised float32; nothing is
    concatenated, so a dataset larger than memory trains in flat memory.
    """

    def __init__(self, blocks: list[torch.Tensor]):
        self.blocks = [b for b in blocks if len(b)] or list(blocks[:1])
        sizes = [len(b) for b in self.blocks]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.dim = int(self.blocks[0].shape[1]) if self.blocks else 0

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> "Features":
        return cls([tensor])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def rows(self, index) -> torch.Tensor:
        """Rows `index` (int array, tensor or slice), L2-normalised float32, in the order asked."""
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64).reshape(-1)
        if len(self.blocks) == 1:
            out = self.blocks[0][torch.from_numpy(index)]
        else:
            block = np.searchsorted(self.starts, index, side="right") - 1
            out = torch.empty((len(index), self.dim), dtype=self.blocks[0].dtype)
            for b in np.unique(block):
                where = np.flatnonzero(block == b)
                out[torch.from_numpy(where)] = self.blocks[b][torch.from_numpy(index[where] - self.starts[b])]
        return F.normalize(out.float(), dim=-1)

    __getitem__ = rows

    def subset(self, index) -> "FeatureRows":
        return FeatureRows(self, np.asarray(index, dtype=np.int64))

    def numpy(self, index=None, chunk: int = 65536) -> np.ndarray:
        index = np.arange(len(self)) if index is None else np.asarray(index, dtype=np.int64)
        return np.concatenate([self.rows(index[s:s + chunk]).numpy() for s in range(0, len(index), chunk)]
                              or [np.zeros((0, self.dim), dtype=np.float32)])

    def tensor(self) -> torch.Tensor:
        """All rows in memory (normalised); for small data and tests."""
        return torch.from_numpy(self.numpy())


class FeatureRows:
    """A subset of a Features store (a split), indexed from 0."""

    def __init__(self, store: Features, index: np.ndarray):
        self.store, self.index = store, index

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, index) -> torch.Tensor:
        index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        return self.store.rows(self.index[index])

    __getitem__ = rows

    def chunks(self, size: int = 65536):
        for s in range(0, len(self), size):
            yield self.store.rows(self.index[s:s + size])

    def numpy(self) -> np.ndarray:
        return self.store.numpy(self.index)


# --- extraction ---------------------------------------------------------------------------------

def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def encode_shard(backbone, images, start: int, stop: int, batch_size: int, workers: int,
                 precision: str = "fp16", bar=None) -> torch.Tensor:
    """Features (stop - start, d) float32 of one shard; an unreadable image is one UserError line."""
    device = backbone.device
    chunks = []
    for _, batch, errors in image_loader(images, backbone.preprocess, start, stop, batch_size, workers,
                                         pin=device.type == "cuda"):
        if errors:
            index, message = errors[0]
            more = f" ({len(errors) - 1} more in this batch)" if len(errors) > 1 else ""
            raise UserError(message + more)
        with _autocast(device, precision):
            chunks.append(backbone.encode_images(batch.to(device, non_blocking=True)).float().cpu())
        if bar is not None:
            bar.update(len(batch))
    return torch.cat(chunks)


def extract_features(
    backbone,
    images,
    cache_dir: Path | None = None,
    batch_size: int = 256,
    workers: int | None = None,
    dtype: str = "float32",
    shard_size: int = DEFAULT_SHARD,
    progress: bool = True,
    stop_after_shards: int | None = None,
    verify: bool = False,
    precision: str = "fp16",
    rank: int = 0,
    world_size: int = 1,
) -> Features:
    """Features of every image of `images` (an ImageSource), through the cache.

    `dtype` 'float16' halves the cache on disk. `verify` adds a content hash of every file to
    the shard stamps. `precision` is the autocast dtype on GPU (fp32, bf16, fp16; ignored on
    CPU). With `world_size` > 1 this process fills only the stale shards k with
    k % world_size == rank and returns None (the caller waits for the others).
    `stop_after_shards` ends the run early after writing that many new shards (to test resuming).
    """
    if dtype not in ("float32", "float16"):
        raise ValueError("dtype must be float32 or float16")
    cache = FeatureCache.for_inputs(backbone, images, cache_dir or default_cache_dir(), dtype)
    shards = shard_ranges(len(images), shard_size)
    todo = [k for k in stale_shards(cache, images, shards, verify) if k % world_size == rank]
    workers = default_workers() if workers is None else workers
    bar = tqdm(total=sum(shards[k][1] - shards[k][0] for k in todo), unit="img", desc=f"features {backbone.name}",
               disable=not progress or not todo, dynamic_ncols=True)
    try:
        for written, k in enumerate(todo):
            if stop_after_shards is not None and written >= stop_after_shards:
                raise InterruptedError(f"stopped after {written} shards")
            start, stop = shards[k]
            feats = encode_shard(backbone, images, start, stop, batch_size, workers, precision, bar)
            cache.write_shard(start, stop, feats.to(getattr(torch, dtype)), images.stamp(start, stop, verify))
    finally:
        bar.close()
    if world_size > 1:
        return None
    cache.mark_complete()
    return cache.open(shards)


def check_cache_dir(cache_dir: Path | None) -> Path:
    """The cache folder, made sure to be creatable and writable before any work."""
    return ensure_writable_dir(Path(cache_dir or default_cache_dir()), "--cache-dir")
