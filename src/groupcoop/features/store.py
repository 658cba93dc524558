"""Features as the rest of the package reads them: a (n, d) matrix held as row blocks (shard files
of the cache, or in-memory tensors), read row by row and L2-normalised then, so memory stays flat
however large the dataset."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .cache import ShardFile


def _take(block, local: np.ndarray) -> np.ndarray:
    return block.take(local) if isinstance(block, ShardFile) else block[torch.from_numpy(local)].numpy()


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
