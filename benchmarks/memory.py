"""Peak memory of training on a large feature cache: memory should stay flat in the number of rows.

For each row count, a fake float16 feature cache (random rows, 512-d) is written straight into
the cache folder, then a fresh process loads a small random CLIP with 512-d features, finds
every feature in the cache (`prepare`), and trains GroupCoOp for one epoch on ground-truth groups (or,
with `--groups zeroshot`, on zero-shot groups: every train row is scored first)
(`run_method`: group-balanced sampling over the whole train split, validation, test). The
child reports its peak resident memory (VmHWM: anonymous and file-backed pages), and the peak
before `prepare` (imports, model, labels: the baseline).

    .venv/bin/python benchmarks/memory.py                      # 0.5M, 1M and 2M rows
    .venv/bin/python benchmarks/memory.py --rows 2000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL = "memtest-512"
CONFIG = {"embed_dim": 512, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
HELD_OUT = 10_000  # val and test rows each


@dataclass(frozen=True)
class FakeImages:
    """An image source with no pixels: every feature must come from the cache."""

    n: int

    def __len__(self) -> int:
        return self.n

    def identity(self) -> str:
        return f"fake:{self.n}"

    def stamp(self, start: int, stop: int, verify: bool = False) -> str:
        return ""

    def load(self, i: int):
        raise RuntimeError("fake images have no pixels: the feature cache should hold every row")


def backbone():
    import open_clip

    from groupcoop.backbones.families import load_backbone

    folder = Path(tempfile.mkdtemp(prefix="groupcoop-memtest-"))
    (folder / f"{MODEL}.json").write_text(json.dumps(CONFIG))
    open_clip.add_model_config(folder)
    return load_backbone(MODEL, "random")


def dataset(n: int, held_out: int = HELD_OUT):
    from groupcoop.data.base import GroupDataset

    rng = np.random.default_rng(0)
    split = np.zeros(n, dtype=np.int64)
    split[n - 2 * held_out:n - held_out], split[n - held_out:] = 1, 2
    return GroupDataset(f"fake-{n}", FakeImages(n), rng.integers(0, 2, n), rng.integers(0, 2, (n, 1)), split,
                        ["angular shape", "round shape"], ["background"], [["grass", "water"]],
                        [["{} on grass", "{} on water"]])


def write_cache(n: int, cache_dir: Path, dim: int = 512, chunk: int = 65536) -> int:
    """Random float16 rows written shard by shard as extraction would (one random block repeated);
    returns the bytes of features."""
    import torch

    from groupcoop.features.cache import open_cache

    cache, shards = open_cache(backbone(), FakeImages(n), cache_dir, "float16")
    gen = torch.Generator().manual_seed(0)
    block = torch.zeros(0, dim, dtype=torch.float16)
    for a, b in shards:  # one random block in every shard: the bytes are n rows', drawing 2e9 values is not needed
        if len(block) < b - a:
            block = torch.randn(b - a, dim, generator=gen).half()
        cache.write_shard(a, b, block[:b - a], "")
    cache.mark_complete()
    return n * dim * 2


def peak_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))


def measure(n: int, cache_dir: Path, batch_size: int, groups: str = "gt", held_out: int = HELD_OUT) -> dict:
    """In this process: the baseline (the peak after imports, model and labels), then one epoch on the cache."""
    import torch

    from groupcoop.runs.pipeline import check_run, prepare, run_method
    from groupcoop.runs.settings import make_settings

    torch.set_num_threads(1)
    bb, ds = backbone(), dataset(n, held_out)
    out = {"rows": n, "baseline_rss": peak_rss()}
    start = time.perf_counter()
    prep = prepare(ds, bb, cache_dir=cache_dir, feature_dtype="float16", progress=False)
    settings = make_settings({"dataset": ds.name, "backbone": MODEL, "pretrained": "random", "method": "groupcoop",
                              "groups": groups, "feature_dtype": "float16",
                              "hyperparameters": {"epochs": 1, "batch_size": batch_size, "n_ctx": 4}})
    run = run_method(prep, check_run(settings, ds, bb)[1], log=lambda s: None)
    out.update(seconds=time.perf_counter() - start, steps=-(-int((ds.split == 0).sum()) // batch_size),
               test_avg_acc=run.metrics["splits"]["test"]["avg_acc"], peak_rss=peak_rss())
    return out


def child(n: int, cache_dir: Path, batch_size: int, groups: str = "gt", held_out: int = HELD_OUT) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--cache", str(cache_dir), "--batch-size", str(batch_size),
           "--groups", groups, "--held-out", str(held_out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rows", default="500000,1000000,2000000", help="comma-separated row counts")
    p.add_argument("--batch-size", type=int, default=16384, help="training batch (one epoch = rows / batch steps)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: a temporary one, removed)")
    p.add_argument("--groups", default="gt", choices=["gt", "zeroshot"],
                   help="training groups: the labels, or zero-shot labels (scores every train row first)")
    p.add_argument("--held-out", type=int, default=HELD_OUT, help="val and test rows each (the rest train)")
    p.add_argument("--json", action="store_true", help="print one JSON line per row count instead of a table")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    counts = [int(v) for v in args.rows.split(",")]
    if args.held_out < 1 or any(n <= 2 * args.held_out for n in counts):
        p.error(f"every --rows count must exceed 2 x --held-out ({2 * args.held_out}): val and test take that many")
    if args.child is not None:
        print(json.dumps(measure(args.child, args.cache, args.batch_size, args.groups, args.held_out)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="groupcoop-memory-", dir=args.cache) as tmp:
        for n in counts:
            size = write_cache(n, Path(tmp))
            rows.append({**child(n, Path(tmp), args.batch_size, args.groups, args.held_out), "feature_bytes": size})
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
            for shard in Path(tmp).glob("*/shard-*"):
                shard.unlink()
    if not args.json:
        mb = lambda v: f"{v / 2**20:,.0f} MB"  # noqa: E731
        print(f"# Peak RSS training 1 epoch on a float16 feature cache ({CONFIG['embed_dim']}-d), batch {args.batch_size}, "
              f"{args.groups} groups\n")
        print("| rows | features on disk | peak RSS (VmHWM) | baseline (no training) | training adds | steps | s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['rows']:,} | {mb(r['feature_bytes'])} | {mb(r['peak_rss'])} | {mb(r['baseline_rss'])} | "
                  f"{mb(r['peak_rss'] - r['baseline_rss'])} | {r['steps']} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
