"""Image features, extracted once and cached by content, read back row by row.

A cache folder is keyed by the backbone's weights identity, its preprocessing, the list of
images and the storage dtype. Extraction works in shards; each shard records a stamp of its
images (for files: path, size, modification and change time and inode, plus a content hash with
`verify=True`), so a changed image re-extracts exactly its shard and nothing else. Each
shard is written to a temporary name and renamed into place only when complete, so a killed
run leaves only whole shards and the next run continues with the missing ones. Shards are
disjoint units of work: several processes (`torchrun`, see `distributed.py`) can fill one
cache at once.

Features come back as a `Features` store: rows are read from the shard files on demand and
L2-normalised then, so memory stays flat however large the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from ..choices import FEATURE_DTYPES, PRECISIONS
from ..errors import UserError
from ..io.write import atomic_write, ensure_writable_dir

CACHE_VERSION = 2
DEFAULT_SHARD = 8192
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16}


def default_cache_dir() -> Path:
    """$GROUPCOOP_CACHE, else ~/.cache/groupcoop (or $XDG_CACHE_HOME/groupcoop)."""
    from ..io.environment import value

    if value("GROUPCOOP_CACHE") is not None:
        return value("GROUPCOOP_CACHE")
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "groupcoop"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str = "cpu", processes_per_node: int = 1) -> int:
    """Decoding workers per process: this process's share of the cores, less one for itself.

    On CPU the encoder needs the cores too (at most 4 workers); a GPU is fed by up to 32.
    """
    share = max(1, cpu_cores() // max(1, processes_per_node))
    return max(1, min(32 if str(device).startswith("cuda") else 4, share - 1))


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


class ShardBatches:
    """Image indices per batch, shard after shard (made on the fly). A batch never crosses a
    shard's edge, so a shard's numbers do not depend on which other shards a process encodes."""

    def __init__(self, shards: list[tuple[int, int]], batch_size: int):
        self.shards, self.batch_size = shards, batch_size

    def __iter__(self):
        for a, b in self.shards:
            for s in range(a, b, self.batch_size):
                yield list(range(s, min(s + self.batch_size, b)))

    def __len__(self) -> int:
        return sum(-(-(b - a) // self.batch_size) for a, b in self.shards)


def shards_loader(images, preprocess, shards: list[tuple[int, int]], batch_size: int, workers: int, pin: bool):
    """One DataLoader over several shards: workers keep decoding while a finished shard is written.

    Each worker keeps 4 batches ready (2 with more than 4 workers: 32 workers x 2 batches of 256
    images at 224 px already hold 10 GB)."""
    return torch.utils.data.DataLoader(
        DecodedImages(images, preprocess), batch_sampler=ShardBatches(shards, batch_size), num_workers=workers,
        collate_fn=collate_decoded, pin_memory=pin, prefetch_factor=(4 if workers <= 4 else 2) if workers else None)


# --- the cache on disk ------------------------------------------------------------------------

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


def _take(block, local: np.ndarray) -> np.ndarray:
    return block.take(local) if isinstance(block, ShardFile) else block[torch.from_numpy(local)].numpy()


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

    def open(self, shards: list[tuple[int, int]]) -> "Features":
        return Features([ShardFile.open(self.shard_path(a, b)) for a, b in shards])

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


def stale_shards(cache: FeatureCache, images, shards: list[tuple[int, int]], verify: bool = False) -> list[int]:
    """Indices of the shards that are missing, broken, or whose images changed since."""
    return [k for k, (a, b) in enumerate(shards) if cache.shard_stamp(a, b) != images.stamp(a, b, verify)]


# --- features as the rest of the code sees them --------------------------------------------------

class Features:
    """A (n, d) feature matrix held as row blocks (shard files on disk, or in-memory tensors).

    Indexing with row indices reads just those rows, as L2-normalised float32; nothing is
    concatenated or mapped, so a dataset larger than memory trains in flat memory.
    """

    def __init__(self, blocks: list):
        self.blocks = [b for b in blocks if len(b)] or list(blocks[:1])
        sizes = [len(b) for b in self.blocks]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.dim = int(self.blocks[0].shape[1]) if self.blocks else 0
        first = self.blocks[0] if self.blocks else None
        self.dtype = first.torch_dtype if isinstance(first, ShardFile) else getattr(first, "dtype", torch.float32)

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
        if len(self.blocks) == 1 and isinstance(self.blocks[0], torch.Tensor):
            out = self.blocks[0][torch.from_numpy(index)]
        else:  # block by block, in numpy (one torch op per block is slow on a busy machine)
            block = np.searchsorted(self.starts, index, side="right") - 1
            order = np.argsort(block, kind="stable")
            bounds = np.searchsorted(block[order], np.arange(len(self.blocks) + 1))
            out = np.empty((len(index), self.dim), dtype=np.float16 if self.dtype == torch.float16 else np.float32)
            for b in np.flatnonzero(np.diff(bounds)).tolist():
                where = order[bounds[b]:bounds[b + 1]]
                out[where] = _take(self.blocks[b], index[where] - self.starts[b])
            out = torch.from_numpy(out)
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

def resolve_precision(device, precision: str = "auto") -> str:
    """fp32, bf16 or fp16: `auto` is fp16 autocast on CUDA, fp32 elsewhere; CPU allows fp32 and bf16."""
    kind = torch.device(device).type
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if kind == "cuda" else "fp32"
    if kind != "cuda" and precision != "fp32" and not (kind == "cpu" and precision == "bf16"):
        raise UserError(f"--precision {precision} is not available on {kind}; use fp32"
                        + (" or bf16" if kind == "cpu" else ""))
    return precision


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type if device.type in ("cpu", "cuda") else "cpu", enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _ready_for_gpu(backbone) -> None:
    """cuDNN autotuning for the fixed batch shape, and the backbone's own GPU layout (channels-last weights)."""
    torch.backends.cudnn.benchmark = True
    backbone.tune_for_gpu()


def encode_shards(backbone, images, shards: list[tuple[int, int]], batch_size: int, workers: int,
                  precision: str = "auto", bar=None):
    """Yield (k, features (n_k, d) float32 on the CPU) for each shard k, in order.

    On CUDA batches arrive pinned, go over without blocking, run channels-last under autocast,
    and a shard's features stay on the GPU until it is complete. An unreadable image is one
    UserError line.
    """
    device = backbone.device
    cuda = device.type == "cuda"
    precision = resolve_precision(device, precision)
    if cuda:
        _ready_for_gpu(backbone)
    ends = {b: k for k, (_, b) in enumerate(shards)}
    chunks = []
    for index, batch, errors in shards_loader(images, backbone.preprocess, shards, batch_size, workers, pin=cuda):
        if errors:
            more = f" ({len(errors) - 1} more in this batch)" if len(errors) > 1 else ""
            raise UserError(errors[0][1] + more)
        batch = batch.to(device, non_blocking=True)
        if cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with _autocast(device, precision):
            chunks.append(backbone.encode_images(batch).float())
        if bar is not None:
            bar.update(len(index))
        if index[-1] + 1 in ends:
            yield ends[index[-1] + 1], torch.cat(chunks).cpu()
            chunks = []


def open_cache(backbone, images, cache_dir: Path | None, dtype: str, shard_size: int | None = None):
    """(the cache, its shard ranges) for these inputs."""
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FEATURE_DTYPES)}")
    cache = FeatureCache.for_inputs(backbone, images, cache_dir or default_cache_dir(), dtype)
    cache = replace(cache, shard_size=cache.layout(shard_size))
    return cache, shard_ranges(len(images), cache.shard_size)


def fill_shards(backbone, images, cache: FeatureCache, shards: list[tuple[int, int]], batch_size: int = 256,
                workers: int | None = None, verify: bool = False, precision: str = "auto", progress: bool = True,
                rank: int = 0, world_size: int = 1, stop_after_shards: int | None = None) -> int:
    """Write this process's stale shards (k % world_size == rank); return how many it wrote."""
    todo = [k for k in range(rank, len(shards), world_size)
            if cache.shard_stamp(*shards[k]) != images.stamp(*shards[k], verify)]
    if stop_after_shards is not None:
        todo = todo[:stop_after_shards]
    if not todo:
        return 0
    workers = default_workers(backbone.device.type) if workers is None else workers
    bar = tqdm(total=sum(shards[k][1] - shards[k][0] for k in todo), unit="img", desc=f"features {backbone.name}",
               disable=not progress or not todo, dynamic_ncols=True)
    written = 0
    try:
        for j, feats in encode_shards(backbone, images, [shards[k] for k in todo], batch_size, workers, precision, bar):
            start, stop = shards[todo[j]]
            cache.write_shard(start, stop, feats.to(getattr(torch, cache.fields["dtype"])),
                              images.stamp(start, stop, verify))
            written += 1
    finally:
        bar.close()
    return written


def extract_features(
    backbone,
    images,
    cache_dir: Path | None = None,
    batch_size: int = 256,
    workers: int | None = None,
    dtype: str = "float32",
    shard_size: int | None = None,
    progress: bool = True,
    stop_after_shards: int | None = None,
    verify: bool = False,
    precision: str = "auto",
) -> Features:
    """Features of every image of `images` (an ImageSource), through the cache.

    `dtype` 'float16' halves the cache on disk. `verify` adds a content hash of every file to
    the shard stamps. `precision` is the autocast dtype (`resolve_precision`). `shard_size`
    defaults to what the cache folder already uses, else DEFAULT_SHARD (several processes fill
    one cache with `distributed.extract_cache`).
    `stop_after_shards` ends the run early after writing that many new shards (to test resuming).
    """
    started = time.time()
    cache, shards = open_cache(backbone, images, cache_dir, dtype, shard_size)
    written = fill_shards(backbone, images, cache, shards, batch_size, workers, verify, precision, progress,
                          stop_after_shards=stop_after_shards)
    if stop_after_shards is not None and written == stop_after_shards and stale_shards(cache, images, shards, verify):
        raise InterruptedError(f"stopped after {written} shards")
    cache.remove_abandoned(started)
    cache.mark_complete()
    return cache.open(shards)


def check_cache_dir(cache_dir: Path | None) -> Path:
    """The cache folder, made sure to be creatable and writable before any work."""
    return ensure_writable_dir(Path(cache_dir or default_cache_dir()), "--cache-dir")
