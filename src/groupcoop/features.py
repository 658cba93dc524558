"""Image features, extracted once and cached by content.

The cache key covers the backbone's weights identity, its preprocessing, the images'
identity and the storage dtype, so a changed input lands in a new folder and is never
mistaken for an old one. Extraction works in shards: each shard is written to a temporary
name and renamed into place only when complete (an atomic step), and `complete.json` is
written last. A killed run therefore leaves only whole shards, and the next run continues
from the first missing one. Memory stays flat: one shard's images are in flight at a time,
decoded by DataLoader worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .files import atomic_write

CACHE_VERSION = 1
DEFAULT_SHARD = 8192


def default_cache_dir() -> Path:
    """$GROUPCOOP_CACHE, else ~/.cache/groupcoop (or $XDG_CACHE_HOME/groupcoop)."""
    if os.environ.get("GROUPCOOP_CACHE"):
        return Path(os.environ["GROUPCOOP_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "groupcoop"


class _Decoded(torch.utils.data.Dataset):
    """Images [start, stop) of a source, preprocessed; runs inside DataLoader workers."""

    def __init__(self, images, preprocess, start: int, stop: int):
        self.images, self.preprocess, self.start, self.stop = images, preprocess, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(self.images.load(self.start + i))


@dataclass(frozen=True)
class FeatureCache:
    """Where one (backbone, preprocessing, images, dtype) combination is stored."""

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

    def read_shard(self, start: int, stop: int) -> torch.Tensor | None:
        """The shard's features, or None when it is missing or not a whole, matching shard."""
        path = self.shard_path(start, stop)
        if not path.is_file():
            return None
        try:
            tensor = load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError, ValueError):
            return None
        return tensor if tensor.shape[0] == stop - start else None

    def write_shard(self, start: int, stop: int, features: torch.Tensor) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.shard_path(start, stop), lambda p: save_file(
            {"features": features.contiguous()}, p, metadata={"key": self.key, "start": str(start), "stop": str(stop)}))

    def is_complete(self) -> bool:
        try:
            return json.loads((self.folder / "complete.json").read_text()) == self.fields
        except (OSError, ValueError):
            return False

    def mark_complete(self) -> None:
        atomic_write(self.folder / "complete.json", lambda p: Path(p).write_text(json.dumps(self.fields, indent=1)))


def _shards(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def default_workers() -> int:
    return min(4, max(1, (os.cpu_count() or 2) - 1))


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
) -> torch.Tensor:
    """Features (n, d) float32 of every image of `images` (an ImageSource), through the cache.

    `dtype` 'float16' halves the cache on disk. `stop_after_shards` ends the run early after
    writing that many new shards (used to test resuming).
    """
    if dtype not in ("float32", "float16"):
        raise ValueError("dtype must be float32 or float16")
    cache = FeatureCache.for_inputs(backbone, images, cache_dir or default_cache_dir(), dtype)
    shards = _shards(len(images), shard_size)
    if cache.is_complete():
        parts = [cache.read_shard(*s) for s in shards]
        if all(p is not None for p in parts):
            return torch.cat(parts).float() if parts else torch.empty(0)
    todo = [s for s in shards if cache.read_shard(*s) is None]
    workers = default_workers() if workers is None else workers
    use_amp = backbone.device.type == "cuda"
    bar = tqdm(total=sum(b - a for a, b in todo), unit="img", desc=f"features {backbone.name}",
               disable=not progress, dynamic_ncols=True)
    for written, (start, stop) in enumerate(todo):
        if stop_after_shards is not None and written >= stop_after_shards:
            bar.close()
            raise InterruptedError(f"stopped after {written} shards")
        loader = torch.utils.data.DataLoader(
            _Decoded(images, backbone.preprocess, start, stop), batch_size=batch_size, num_workers=workers,
            pin_memory=use_amp, persistent_workers=False)
        chunks = []
        for batch in loader:
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                chunks.append(backbone.encode_images(batch).float().cpu())
            bar.update(len(batch))
        cache.write_shard(start, stop, torch.cat(chunks).to(getattr(torch, dtype)))
    bar.close()
    cache.mark_complete()
    return torch.cat([cache.read_shard(*s) for s in shards]).float()
