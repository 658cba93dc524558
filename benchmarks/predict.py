"""`groupcoop predict` throughput against feature extraction on the same image files.

Both read the same JPEG files (synthetic renders scaled to 256 px, as in `extract.py`), decode
and preprocess them in the same DataLoader workers and run the same image encoder; extraction
then writes cache shards, prediction scores the features with a 2-class x 2-group head and
builds one CSV row per image. Runs alternate; medians are compared (target: predict >= 85% of
extraction's images/s).

    .venv/bin/python benchmarks/predict.py                  # ViT-B-16 (random weights), 128 images
    .venv/bin/python benchmarks/predict.py --backbone ViT-B-32 --images 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from extract import make_dataset, timed  # noqa: E402
from speed import CpuMonitor, cpu_count, cpu_model, say, table, wait_until_idle  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip architecture (random weights)")
    p.add_argument("--images", type=int, default=128, help="JPEG images")
    p.add_argument("--batch", type=int, default=32, help="encoder batch")
    p.add_argument("--repeats", type=int, default=3, help="runs of each path")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: groupcoop's default)")
    p.add_argument("--wait-idle", type=float, default=0.0, help="wait up to this many seconds for an idle machine")
    args = p.parse_args(argv)
    torch.set_num_threads(cpu_count())
    from groupcoop.backbones.families import load_backbone
    from groupcoop.data.registry import load_dataset
    from groupcoop.features.decode import default_workers
    from groupcoop.features.extract import extract_features
    from groupcoop.methods.head import Head
    from groupcoop.runs.predict import Classifier, predict_files

    workers = default_workers() if args.workers is None else args.workers
    say("# groupcoop predict benchmark")
    say(f"CPU: {cpu_model()}, {cpu_count()} cores; torch {torch.__version__}; {args.backbone} (random weights); "
        f"{args.images} JPEG images (256 px); batch {args.batch}; {workers} DataLoader worker(s)")
    if args.wait_idle:
        wait_until_idle(args.wait_idle)
    bb = load_backbone(args.backbone, "random")
    gen = torch.Generator().manual_seed(0)
    head = Head.from_text(torch.randn(4, bb.embed_dim, generator=gen), bb.logit_scale, 2,
                          class_names=["a", "b"], row_names=["a, x", "a, y", "b, x", "b, y"],
                          info={"backbone": bb.identity})
    classifier = Classifier(head, bb)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        make_dataset(root, args.images)
        dataset = load_dataset("csv", root, csv_path="meta.csv", path_col="path", label_col="y")
        paths = [root / f"{i:05d}.jpg" for i in range(args.images)]

        def extract():
            with tempfile.TemporaryDirectory(dir=tmp) as cache:
                extract_features(bb, dataset.images, cache_dir=cache, batch_size=args.batch, workers=workers,
                                 progress=False, precision="fp32")

        def predict():
            rows, failures = predict_files(classifier, paths, batch_size=args.batch, workers=workers, progress=False)
            assert failures == 0 and len(rows) == args.images

        predict()  # warm-up (first worker start, allocator)
        monitor = CpuMonitor()
        t_ext, t_pred = [], []
        for _ in range(args.repeats):
            t_ext.append(timed(extract))
            t_pred.append(timed(predict))
        busy = monitor.other_fraction()
    n = args.images
    ext, pred = n / statistics.median(t_ext), n / statistics.median(t_pred)
    say(table(["path", "what runs", "images/s (median)", "s per run (all)"], [
        ["extract_features", "decode+preprocess in workers, encode, shard write", f"{ext:.2f}",
         ", ".join(f"{t:.1f}" for t in t_ext)],
        ["predict_files", "decode+preprocess in workers, encode, head, CSV rows", f"{pred:.2f}",
         ", ".join(f"{t:.1f}" for t in t_pred)],
    ]))
    ratio = pred / ext
    say(f"\npredict / extraction: {100 * ratio:.1f}% of the images/s (target >= 85%: "
        f"{'PASS' if ratio >= 0.85 else 'FAIL'})")
    if busy is not None:
        say(f"CPU used by other processes while this ran: {busy:.0%} of all cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
