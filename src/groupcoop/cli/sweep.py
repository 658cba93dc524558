"""`groupcoop sweep`: a grid of runs (or a shipped preset grid), resumable, summarised in one folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .args import add_common, add_log_flag, add_offline_flag, count, print_columns, progress_log


def add_sweep(sw) -> None:
    from ..grouping.labelers import GROUP_SOURCES
    from ..runs.fusion import DEFAULT_MAX_PROMPTS
    from ..sweeps.grid import MAX_RUNS

    sw.add_argument("grid", nargs="?", help="grid YAML file, or a preset shipped with groupcoop by name: report, "
                    "dev, waterbirds, ... (--list-presets)")
    sw.add_argument("--list-presets", action="store_true", help="list the preset grids and exit")
    sw.add_argument("--out", help="sweep folder (default runs/<grid name>)")
    sw.add_argument("--datasets", help="comma-separated datasets, replacing the grid's (ranges: synth-random:0..29)")
    sw.add_argument("--methods", help="comma-separated methods, replacing the grid's")
    sw.add_argument("--groups", help=f"comma-separated group sources ({', '.join(GROUP_SOURCES)}), replacing the grid's")
    sw.add_argument("--seeds", help="seeds, replacing the grid's: 0,1,2 or 0..2")
    sw.add_argument("--backbones", help="comma-separated backbones, replacing the grid's")
    sw.add_argument("--root", action="append", metavar="DATASET=FOLDER", help="a dataset's folder, repeatable")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="hyper-parameter for every method that has it, repeatable")
    add_log_flag(sw)
    sw.add_argument("--max-runs", type=count(1), default=MAX_RUNS, metavar="N",
                    help=f"refuse a grid of more than N runs, counted before it is expanded (default {MAX_RUNS:,})")
    sw.add_argument("--jobs", type=count(1), default=1, help="parallel worker processes (default 1); each fuses "
                    "its share of the learned-prompt runs")
    sw.add_argument("--no-fuse", dest="fuse", action="store_false",
                    help="train every run alone (default: the learned-prompt runs of a dataset and backbone train "
                    "together, one text-encoder call per step for all their prompts; same results up to float "
                    "rounding)")
    sw.add_argument("--max-fused-prompts", type=count(1), default=None, metavar="N",
                    help=f"at most N prompts per fused text-encoder call, for memory (default {DEFAULT_MAX_PROMPTS})")
    sw.add_argument("--device", help="torch device for every run, replacing the grid's (cpu, cuda, cuda:N)")
    sw.add_argument("--shard", metavar="I/N", help="run only slice I of N (0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/8")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and an estimated cost; run nothing")
    sw.add_argument("--summary-only", action="store_true", help="only rebuild runs.csv, table.md and report.html")
    sw.add_argument("--overwrite", action="store_true", help="replace run folders that hold a run of other settings "
                    "(default: refused; finished runs of the same settings are always kept, damaged ones redone)")
    add_offline_flag(sw)
    add_common(sw)
    sw.set_defaults(workers=0)


def cmd_sweep(args) -> None:
    from ..features.cache import check_cache_dir
    from ..io.folders import check_cache_folder, output_lock, write_manifest
    from ..io.write import atomic_text, ensure_writable_dir
    from ..runs.settings import key_values
    from ..sweeps.cost import estimate
    from ..sweeps.grid import GRID_FILE, expand, load_grid, parse_shard, shard
    from ..sweeps.run import print_runs, run_sweep
    from ..sweeps.summary import write_summary

    if args.list_presets:
        print_presets()
        return
    from ..runs.tracking import check_trackers

    trackers = check_trackers(args.log)
    axes = {"datasets": args.datasets, "methods": args.methods, "groups": args.groups, "seeds": args.seeds,
            "backbones": args.backbones}
    if args.grid:
        from ..presets import resolve

        args.grid = resolve(args.grid)
    grid = load_grid(args.grid, {**{k: [v.strip() for v in value.split(",") if v.strip()] if k != "seeds" else value
                                    for k, value in axes.items() if value is not None},
                                 **({"device": args.device} if args.device else {})},
                     hyperparameters=key_values(args.set, "--set"), max_runs=args.max_runs)
    roots = {}
    for pair in args.root or []:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--root expects DATASET=FOLDER, got {pair!r}")
        roots[name.strip()] = folder.strip()
    index, count = parse_shard(args.shard)
    specs = expand(grid, roots)
    mine = shard(specs, index, count)
    out = Path(args.out or grid.folder).expanduser()
    if args.dry_run:
        print_runs(mine, out)
        print(estimate(mine, fuse=args.fuse, max_prompts=args.max_fused_prompts))
        return
    from ..backbones.families import check_device
    from ..sweeps.run import check_sweep_folder

    if args.summary_only and not out.is_dir():
        raise UserError(f"--summary-only: there is no sweep folder {out}; give the --out of a sweep that ran, "
                        "or run the sweep without --summary-only")
    check_device(grid.device)
    write_grid = check_sweep_folder(mine, out, grid, args.overwrite, args.summary_only)
    ensure_writable_dir(out, "--out")
    cache_dir = check_cache_dir(args.cache_dir)
    check_cache_folder(cache_dir, out)
    log = progress_log(args)
    if not args.summary_only:
        with output_lock(out / f"shard-{index}-of-{count}"):
            out.mkdir(parents=True, exist_ok=True)
            if write_grid:
                import yaml

                atomic_text(out / GRID_FILE, yaml.safe_dump(grid.model_dump(), sort_keys=False))
                write_manifest(out, "sweep", nested=False)
            run_sweep(mine, out, jobs=args.jobs, cache_dir=cache_dir, workers=args.workers, log=log, fuse=args.fuse,
                      max_prompts=args.max_fused_prompts, overwrite=args.overwrite, trackers=tuple(trackers),
                      threads=args.threads)
    text, n = write_summary(specs, out, grid)
    write_manifest(out, "sweep", nested=False)
    print(text)
    print(f"\nsweep folder: {out} ({n} finished runs; runs.csv, table.md, report.html)")


def print_presets() -> None:
    """The grids that ship with groupcoop: name, folder, what it is."""
    from ..presets import available, summary

    presets = available()
    print_columns([(name, path.parent.name, summary(path)) for name, path in presets.items()])
    print(f"\n`groupcoop sweep NAME` runs one (`--dry-run` lists its runs first); the files are in "
          f"{next(iter(presets.values())).parents[1]}")
