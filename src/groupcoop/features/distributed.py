"""Several processes filling one feature cache: `torchrun ... -m groupcoop extract ...`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; without them there is one
process and no process group. Ranks talk (NCCL on GPUs, Gloo on CPU) only to wait for each
other and add up counts: shards go straight into the shared cache folder, which must be one
filesystem that every node sees. Rank k fills the stale shards k % WORLD_SIZE; after all
ranks are done, rank 0 checks every shard as a re-run would and reports.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from ..errors import UserError
from .cache import open_cache, stale_shards
from .decode import default_workers
from .extract import fill_cache
from .store import Features

TIMEOUT_ENV = "GROUPCOOP_DIST_TIMEOUT"  # seconds a rank may wait for the others (default 2 h)
TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker it starts


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, env=None) -> "Ranks":
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", 1))
            ranks = cls(int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)),
                        int(env.get("LOCAL_WORLD_SIZE", 1)))
        except ValueError:
            raise UserError("RANK, WORLD_SIZE, LOCAL_RANK must be integers (torchrun sets them)") from None
        if ranks.world_size < 1 or ranks.local_world_size < 1:
            raise UserError(f"WORLD_SIZE={ranks.world_size} and LOCAL_WORLD_SIZE={ranks.local_world_size} must be "
                            ">= 1 (torchrun sets them); unset them to run one process")
        if not 0 <= ranks.rank < ranks.world_size:
            raise UserError(f"RANK={ranks.rank} is not in 0..WORLD_SIZE-1 ({ranks.world_size})")
        if not 0 <= ranks.local_rank < ranks.local_world_size:
            raise UserError(f"LOCAL_RANK={ranks.local_rank} is not in 0..LOCAL_WORLD_SIZE-1 ({ranks.local_world_size})")
        # a lone process given a world by hand (WORLD_SIZE, MASTER_ADDR in a shell or job script) would
        # wait hours for peers that never come: only torchrun's workers (it sets TORCHELASTIC_RUN_ID) join one
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", TORCHRUN_ENV) if ranks.active and not env.get(k)]
        if missing:
            raise UserError(f"WORLD_SIZE={ranks.world_size} asks for several processes, but {' and '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not set, so this process was not started by "
                            "torchrun: start them with "
                            "`torchrun --nproc-per-node N -m groupcoop extract ...`, or unset WORLD_SIZE and RANK "
                            "to run one process")
        return ranks

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """Under torchrun, `cuda` means this process's GPU: cuda:LOCAL_RANK."""
        return f"cuda:{self.local_rank}" if self.active and device == "cuda" else device


@contextmanager
def process_group(ranks: Ranks, device: str):
    """A process group for the duration (none for a single process)."""
    if not ranks.active:
        yield
        return
    import torch.distributed as dist

    from ..io.environment import value

    timeout = value(TIMEOUT_ENV) or 7200.0
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError, OSError) as err:  # DistStoreError and friends: the others never joined
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"rank {ranks.rank} of {ranks.world_size} could not join the other processes ({first}); "
                        "start all of them with the same torchrun command") from None
    try:
        yield
    finally:
        dist.destroy_process_group()


def sum_over_ranks(value: int, ranks: Ranks, device: str) -> int:
    """The sum of `value` over all ranks; returns only once every rank got here (the barrier)."""
    if not ranks.active:
        return value
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.int64, device=device if device.startswith("cuda") else "cpu")
    dist.all_reduce(total)
    return int(total.item())


def extract_cache(backbone, images, ranks: Ranks = Ranks(), cache_dir: Path | None = None, dtype: str = "float32",
                  shard_size: int | None = None, batch_size: int = 256, workers: int | None = None,
                  precision: str = "auto", verify: bool = False, progress: bool = True) -> dict | None:
    """Fill the cache for `images` with every rank; rank 0 returns a summary, the others None."""
    started = time.time()
    device = str(backbone.device)
    cache, shards = open_cache(backbone, images, cache_dir, dtype, shard_size)
    if workers is None:
        workers = default_workers(device, ranks.local_world_size)
    share = shards[ranks.rank::ranks.world_size]  # rank k: shards k, k + WORLD_SIZE, ...
    written = fill_cache(backbone, images, cache, share, batch_size, workers, verify, precision,
                         progress and ranks.rank == 0)
    written = sum_over_ranks(written, ranks, device)
    if ranks.rank != 0:
        return None
    bad = stale_shards(cache, images, shards, verify)
    if bad:
        names = ", ".join(cache.shard_path(*shards[k]).name for k in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise UserError(f"{len(bad)} of {len(shards)} shards are missing or stale after extraction ({names}); "
                        "run the same command again to finish them")
    cache.remove_abandoned(started)
    cache.mark_complete()
    feats = Features(cache.shard_files(shards))
    return {"folder": str(cache.folder), "shards": len(shards), "written": written, "rows": len(feats),
            "dim": feats.dim, "dtype": dtype, "processes": ranks.world_size}


def summary_lines(info: dict) -> list[str]:
    return [f"feature cache: {info['folder']}",
            f"shards: {info['shards']} ({info['written']} written now by {info['processes']} process"
            f"{'es' if info['processes'] > 1 else ''}), rows: {info['rows']}, dim: {info['dim']}, "
            f"dtype: {info['dtype']}"]
