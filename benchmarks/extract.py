"""Feature-extraction throughput: the bare image encoder on preloaded tensors against
`extract_features` in one process, `torchrun -m groupcoop extract` with N processes (Gloo on
CPU, NCCL on GPUs), and each GPU option (skipped, with a note, when no GPU is visible).

The images are synthetic renders scaled to 256 px and saved as JPEG files in a temporary csv
dataset, so decoding and resizing cost what they cost on real photos. Every path writes a fresh
cache. A torchrun run is timed from the outside; its start-up (imports, model, rendezvous,
the final check) is measured by running the same command again on the finished cache, and
subtracted ("net"). Each table reports the CPU share other processes took while it ran.

    .venv/bin/python benchmarks/extract.py                  # ViT-B-16 (random weights), 64 images
    .venv/bin/python benchmarks/extract.py --procs 2,4 --images 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import CpuMonitor, cpu_count, cpu_model, say, table, wait_until_idle  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


def make_dataset(root: Path, n: int, size: int = 256) -> None:
    from groupcoop.data.world.datasets import make_task_dataset

    ds = make_task_dataset("synth-waterbirds")
    lines = ["path,y,place,split"]
    seen = {}  # images of each class so far: each class goes round the splits, so every split has every class
    for i in range(n):
        ds.images.load(i).resize((size, size)).save(root / f"{i:05d}.jpg", quality=90)
        k = seen[ds.y[i]] = seen.get(ds.y[i], -1) + 1
        lines.append(f"{i:05d}.jpg,{ds.y[i]},{ds.attrs[i, 0]},{('train', 'val', 'test')[k % 3]}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")


def cli_flags(args, root: Path, cache: Path) -> list[str]:
    return ["--dataset", "csv", "--root", str(root), "--option", "csv_path=meta.csv", "--option", "path_col=path",
            "--option", "label_col=y", "--backbone", args.backbone,
            "--pretrained", "random", "--cache-dir", str(cache), "--batch-size", str(args.batch), "--quiet",
            "--shard-size", str(args.shard_size)]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_rows(args, bb, dataset, root: Path, device: str) -> list[list[str]]:
    """Rows for one device: bare encoder and extract_features per precision."""
    from groupcoop.features.extract import extract_features, resolve_precision

    n = len(dataset.images)
    preloaded = torch.stack([bb.preprocess(dataset.images.load(i)) for i in range(n)]).to(device)
    precisions = ["fp32", "bf16"] if device == "cpu" else ["fp32", "bf16", "fp16"]
    rows = []
    for precision in precisions:
        resolve_precision(device, precision)
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else
                                  torch.float16, enabled=precision != "fp32")

        def bare():
            with autocast:
                out = [bb.encode_images(preloaded[s:s + args.batch]) for s in range(0, n, args.batch)]
            if device != "cpu":
                torch.cuda.synchronize()
            return out

        def extract():
            with tempfile.TemporaryDirectory(dir=args.tmp) as cache:
                extract_features(bb, dataset.images, cache_dir=cache, batch_size=args.batch, workers=args.workers,
                                 shard_size=args.shard_size, progress=False, precision=precision)

        bare()  # warm-up
        t_bare, t_ext = [], []
        for _ in range(args.repeats):  # alternate
            t_bare.append(timed(bare))
            t_ext.append(timed(extract))
        label = f"{device} {precision}"
        rows.append([f"bare encoder, {label}", "preloaded preprocessed tensor", f"{n / statistics.median(t_bare):.2f}",
                     ", ".join(f"{t:.1f}" for t in t_bare)])
        rows.append([f"extract_features, {label}", "decode+preprocess in workers, cache write",
                     f"{n / statistics.median(t_ext):.2f}", ", ".join(f"{t:.1f}" for t in t_ext)])
    return rows


def torchrun_rows(args, root: Path, n: int, device: str = "cpu") -> list[list[str]]:
    rows = []
    for procs in args.procs if device == "cpu" else [torch.cuda.device_count()]:
        threads = max(1, cpu_count() // procs)
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "OMP_NUM_THREADS": str(threads)}
        runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                  "-m", "groupcoop", "extract"]
        walls, nets = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(dir=args.tmp) as cache:
                cmd = runner + cli_flags(args, root, Path(cache)) + ["--device", "cuda" if device != "cpu" else "cpu"]
                run = lambda: subprocess.run(cmd, env=env, check=True, capture_output=True)  # noqa: E731
                wall = timed(run)
                startup = timed(run)  # the same command on the finished cache: everything but encoding
                walls.append(wall)
                nets.append(wall - startup)
        rows.append([f"torchrun, {procs} processes x {threads} thread(s), {device} "
                     f"{'fp32' if device == 'cpu' else 'fp16 (auto)'}",
                     "decode+preprocess in workers, cache write; net of start-up",
                     f"{n / statistics.median(nets):.2f}",
                     ", ".join(f"{w:.1f} (net {t:.1f})" for w, t in zip(walls, nets))])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip architecture (random weights)")
    p.add_argument("--images", type=int, default=64, help="JPEG images to extract")
    p.add_argument("--batch", type=int, default=32, help="encoder batch")
    p.add_argument("--shard-size", type=int, default=16, help="images per shard (several per process)")
    p.add_argument("--procs", default="2", help="torchrun process counts (comma-separated)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each path")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: groupcoop's default)")
    p.add_argument("--wait-idle", type=float, default=0.0, help="wait up to this many seconds for an idle machine")
    p.add_argument("--tmp", default=None, help="folder for the temporary dataset and caches")
    args = p.parse_args(argv)
    args.procs = [int(v) for v in args.procs.split(",") if v]
    torch.set_num_threads(cpu_count())
    from groupcoop.backbones.families import load_backbone
    from groupcoop.data.registry import load_dataset
    from groupcoop.features.decode import default_workers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    say("# groupcoop extraction benchmark")
    say()
    say(table(["setting", "value"], [
        ["torch", torch.__version__], ["CPU", f"{cpu_model()}, {cpu_count()} cores"], ["GPU", gpu],
        ["backbone", f"{args.backbone}, random weights"], ["images", f"{args.images} JPEG, 256 px, batch {args.batch}"],
        ["DataLoader workers", str(args.workers if args.workers is not None else f"default ({default_workers()} on cpu)")]]))
    say()
    if args.wait_idle:
        wait_until_idle(args.wait_idle)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        make_dataset(root, args.images)
        dataset = load_dataset("csv", str(root), csv_path="meta.csv", path_col="path", label_col="y")
        bb = load_backbone(args.backbone, "random")
        headers = ["path", "what runs", "images/s (median)", "s per run"]
        mon = CpuMonitor()
        rows = run_rows(args, bb, dataset, root, "cpu") + torchrun_rows(args, root, args.images)
        say(f"## CPU ({cpu_count()} cores)")
        say()
        say(table(headers, rows))
        say()
        say(mon.line())
        say()
        say("## GPU")
        say()
        if not torch.cuda.is_available():
            say("skipped: no CUDA GPU is visible to torch here (fp32/bf16/fp16 autocast, channels-last, pinned "
                "prefetching and NCCL torchrun are untested on this machine)")
        else:
            mon = CpuMonitor()
            bb = load_backbone(args.backbone, "random", device="cuda")
            say(table(headers, run_rows(args, bb, dataset, root, "cuda") + torchrun_rows(args, root, args.images, "cuda")))
            say()
            say(mon.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
