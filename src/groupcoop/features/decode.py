"""Decoding images in DataLoader worker processes: the loaders that feed extraction and prediction,
and how many workers to start."""

from __future__ import annotations

import torch

from ..errors import UserError
from ..limits import check_workers, cpu_cores


def default_workers(device: str = "cpu", processes_per_node: int = 1) -> int:
    """Decoding workers per process: this process's share of the cores, less one for itself.

    On CPU the encoder needs the cores too (at most 4 workers); a GPU is fed by up to 32.
    """
    share = max(1, cpu_cores() // max(1, processes_per_node))
    return max(1, min(32 if str(device).startswith("cuda") else 4, share - 1))


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
        DecodedImages(images, preprocess, start, stop), batch_size=batch_size, num_workers=check_workers(workers),
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
        DecodedImages(images, preprocess), batch_sampler=ShardBatches(shards, batch_size),
        num_workers=check_workers(workers),
        collate_fn=collate_decoded, pin_memory=pin, prefetch_factor=(4 if workers <= 4 else 2) if workers else None)
