"""Extraction: encoding images shard by shard with the backbone (precision, autocast, GPU
feeding) into the feature cache, and `extract_features`, the one entry the pipeline calls.

`fill_cache` is the single writer of shards: one process fills all of them, each torchrun rank
(see `distributed.py`) its share.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..choices import PRECISIONS
from ..errors import UserError
from ..io.progress import info
from .cache import FeatureCache, open_cache, stale_shards, stale_stamps
from .decode import default_workers, shards_loader
from .store import Features


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


def _finite(feats: torch.Tensor, backbone, images, start: int) -> torch.Tensor:
    """A shard's features as stored, or one line when any is NaN or infinite: they would be cached and
    trained on as if they were the model's (checked after the cast, so a float16 overflow counts)."""
    bad = ~torch.isfinite(feats).all(dim=1)
    if bool(bad.any()):
        row = start + int(bad.nonzero()[0, 0])
        paths = getattr(images, "paths", None)
        where = f"image {paths[row]}" if paths is not None and row < len(paths) else f"image {row}"
        raise UserError(f"backbone {backbone.name} gives non-finite image features (NaN or inf) for {int(bad.sum())} "
                        f"images, the first {where}; its weights hold NaN/inf, or float16 overflows: check the model's "
                        "weights, or try --precision fp32 and --feature-dtype float32")
    return feats


def fill_cache(backbone, images, cache: FeatureCache, shards: list[tuple[int, int]], batch_size: int = 256,
               workers: int | None = None, verify: bool = False, precision: str = "auto", progress: bool = True,
               stop_after_shards: int | None = None) -> int:
    """Encode and write the stale ones of `shards` (all of a cache's, or one rank's share); return how
    many were written.

    Each shard's stamp is taken once, before its images are read, and that one is recorded: an image
    replaced during extraction then leaves its shard stale, not cached as current with old features.
    """
    stamps = stale_stamps(cache, images, shards, verify)
    todo = list(stamps)
    if stop_after_shards is not None:
        todo = todo[:stop_after_shards]
    share = sum(stop - start for start, stop in shards)
    if not todo:
        info(f"extract: the features of all {share} images are in the feature cache")
        return 0
    workers = default_workers(backbone.device.type) if workers is None else workers
    n_todo = sum(shards[k][1] - shards[k][0] for k in todo)
    info(f"extract: encoding {n_todo} of {share} images with {backbone.name} on {backbone.device} "
         f"({workers} decoding workers)")
    bar = tqdm(total=n_todo, unit="img", desc=f"features {backbone.name}", disable=not progress, dynamic_ncols=True)
    written = 0
    try:
        for j, feats in encode_shards(backbone, images, [shards[k] for k in todo], batch_size, workers, precision, bar):
            start, stop = shards[todo[j]]
            stored = _finite(feats.to(getattr(torch, cache.fields["dtype"])), backbone, images, start)
            cache.write_shard(start, stop, stored, stamps[todo[j]])
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
    written = fill_cache(backbone, images, cache, shards, batch_size, workers, verify, precision, progress,
                         stop_after_shards)
    if stop_after_shards is not None and written == stop_after_shards and stale_shards(cache, images, shards, verify):
        raise InterruptedError(f"stopped after {written} shards")
    cache.remove_abandoned(started)
    cache.mark_complete()
    return Features(cache.shard_files(shards))
