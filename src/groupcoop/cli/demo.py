"""`groupcoop demo`: the built-in synthetic benchmark, GroupCoOp against its baselines."""

from __future__ import annotations

from pathlib import Path

from .args import add_common, count


def add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="GroupCoOp against zero-shot, CoOp, coop_balanced and DFR on the built-in "
                          "synthetic benchmark",
                          description="Run zero-shot, CoOp, coop_balanced, DFR and GroupCoOp on a synthetic task with "
                          "the bundled groupcoop-tiny CLIP (the learned-prompt runs in one fused pass); print a "
                          "comparison table, a one-line conclusion and what each method needs; write "
                          "OUT/summary.json and a report.")
    demo.add_argument("--out", default="runs/demo",
                      help="output folder (default runs/demo); a previous demo there is replaced, nothing else is")
    demo.add_argument("--seeds", type=count(1), default=1,
                      help="number of seeds (0..N-1); tables show mean ± std when N > 1")
    demo.add_argument("--task", default="synth-waterbirds",
                      help="synthetic task: synth-waterbirds (default), synth-multiceleba, synth-threebias "
                      "or synth-random:<seed>")
    demo.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N or mps")
    add_common(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args) -> None:
    from ..features.cache import check_cache_dir
    from ..io.folders import check_outside, check_replaceable, groupcoop_kind
    from ..io.write import ensure_writable_dir
    from ..runs.demo import run_demo

    out = Path(args.out).expanduser()
    # a previous demo is replaced without --overwrite: that is what `make demo` re-runs do
    check_replaceable(out, overwrite=out.is_dir() and groupcoop_kind(out) == "demo")
    ensure_writable_dir(out.parent, "--out")
    cache_dir = check_cache_dir(args.cache_dir)
    check_outside(cache_dir, "--cache-dir", out, "--out")
    run_demo(out, seeds=args.seeds, task=args.task, cache_dir=cache_dir, workers=args.workers,
             progress=not args.quiet, log=print, device=args.device)
