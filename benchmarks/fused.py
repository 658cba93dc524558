"""k training runs fused against the same k runs one by one, on this CPU.

For each backbone (the bundled groupcoop-tiny, and ViT-B-16 with seeded random weights: speed
does not depend on the weights' values), on Waterbirds' split and group sizes with random cached
features (`train_step.waterbirds_like`), the runs a sweep trains on one (dataset, backbone): by
default GroupCoOp, coop_balanced and CoOp x 3 seeds (9 runs, 24 prompts). `fusion.fit_runs`
trains them one by one (`fuse=False`, what `sweep --no-fuse` does) and fused (one text-encoder
call per step for all their prompts), alternately for --rounds rounds. The table gives each
way's wall time (median of rounds, and the range), the ratio, and the largest difference
between the two ways over the runs: test worst-group and average accuracy, head weights.

    .venv/bin/python benchmarks/fused.py                        # both backbones, 1 epoch (~4 min on 2 cores)
    .venv/bin/python benchmarks/fused.py --backbones groupcoop-tiny --epochs 5 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import CpuMonitor, cpu_count, cpu_model, say, table, wait_until_idle  # noqa: E402
from train_step import waterbirds_like  # noqa: E402

TINY = "groupcoop-tiny"


def load(name: str):
    from groupcoop.backbones.families import load_backbone

    return load_backbone(name, None if name == TINY else "random")


def run_settings(prep, name: str, methods: list[str], seeds: int, epochs: int) -> list:
    from groupcoop.runs.pipeline import check_run
    from groupcoop.runs.settings import make_settings

    return [check_run(make_settings({"dataset": prep.dataset.name, "backbone": name, "method": m, "seed": s,
                                     "hyperparameters": {"epochs": epochs}}), prep.dataset, prep.backbone)[1]
            for m in methods for s in range(seeds)]


def warm_up(prep, settings) -> None:
    """A few text-encoder steps of the biggest learner, so that neither way pays first-call costs."""
    from groupcoop.runs.pipeline import plan_run

    run = plan_run(prep, max(settings, key=lambda s: s.method == "groupcoop"), log=lambda _: None).start()
    run.start()
    for _ in range(3):
        run.next_batch()
        run.loss(run.rows.encode()).backward()
        run.step()


def max_differences(alone: list, fused: list) -> tuple[float, float, float]:
    def split(run, key):
        return run.metrics["splits"]["test"][key]

    wga = max(abs(split(a, "worst_group_acc") - split(f, "worst_group_acc")) for a, f in zip(alone, fused))
    avg = max(abs(split(a, "avg_acc") - split(f, "avg_acc")) for a, f in zip(alone, fused))
    head = max(float((a.head.weight - f.head.weight).abs().max()) for a, f in zip(alone, fused))
    return wga, avg, head


def bench(name: str, args) -> list[str]:
    from groupcoop.runs.fusion import fit_runs

    bb = load(name)
    prep = waterbirds_like(bb, scale=args.scale)
    settings = run_settings(prep, name, args.methods, args.seeds, args.epochs)
    warm_up(prep, settings)
    times, shares, runs = {False: [], True: []}, [], {}
    for r in range(args.rounds):
        if args.wait_idle:
            wait_until_idle(args.wait_idle)
        mon = CpuMonitor()
        for fuse in (False, True) if r % 2 == 0 else (True, False):  # alternate which goes first
            say(f"{name}: round {r + 1}/{args.rounds}, {'fused' if fuse else 'one by one'} ...")
            start = time.perf_counter()
            runs[fuse] = fit_runs(prep, settings, log=lambda _: None, fuse=fuse, max_prompts=args.max_prompts)
            times[fuse].append(time.perf_counter() - start)
        shares.append(mon.other_fraction() or 0.0)
    ratios = [a / f for a, f in zip(times[False], times[True])]
    wga, avg, head = max_differences(runs[False], runs[True])
    prompts = sum(len(run.head.row_names) for run in runs[True])
    steps = sum(run.metrics["epochs_run"] for run in runs[True])
    return [name, str(len(settings)), str(prompts), str(steps),
            f"{statistics.median(times[False]):.1f} ({min(times[False]):.1f}-{max(times[False]):.1f})",
            f"{statistics.median(times[True]):.1f} ({min(times[True]):.1f}-{max(times[True]):.1f})",
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
            f"{wga:.1e} / {avg:.1e}", f"{head:.1e}", ", ".join(f"{100 * s:.0f}%" for s in shares)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbones", default=f"{TINY},ViT-B-16", help="comma-separated; open_clip names get random weights")
    p.add_argument("--methods", default="groupcoop,coop_balanced,coop", help="comma-separated learned-prompt methods")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (early stopping applies)")
    p.add_argument("--rounds", type=int, default=1, help="rounds, each training the runs both ways")
    p.add_argument("--scale", type=float, default=1.0, help="Waterbirds' group sizes times this (0.05: a quick look)")
    p.add_argument("--max-prompts", type=int, default=None, help="fusion's cap (default groupcoop's)")
    p.add_argument("--threads", type=int, default=cpu_count(), help="torch.set_num_threads")
    p.add_argument("--wait-idle", type=float, default=0.0, help="before each round wait up to this many seconds "
                   "for other processes to use < 5%% of the CPU")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    torch.set_num_threads(args.threads)
    from groupcoop.runs.fusion import DEFAULT_MAX_PROMPTS

    args.max_prompts = args.max_prompts or DEFAULT_MAX_PROMPTS
    say("# groupcoop fused-training benchmark")
    say()
    say(table(["setting", "value"], [
        ["torch", torch.__version__], ["CPU", f"{cpu_model()}, {cpu_count()} cores, {torch.get_num_threads()} threads"],
        ["runs", f"{', '.join(args.methods)} x {args.seeds} seeds, {args.epochs} epoch(s) each"],
        ["data", f"Waterbirds-size random features (group sizes x {args.scale:g})"]]))
    say()
    whole = CpuMonitor()
    rows = [bench(name.strip(), args) for name in args.backbones.split(",") if name.strip()]
    say()
    say(f"## {len(rows[0]) and rows[0][1]} runs one by one vs fused (seconds: median of rounds, range)")
    say()
    say(table(["backbone", "runs", "prompts", "epochs run", "one by one s", "fused s", "ratio",
               "max |diff| test WGA / avg", "max |diff| head", "others' CPU per round"], rows))
    say()
    say(whole.line().replace("this section", "the whole benchmark"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
