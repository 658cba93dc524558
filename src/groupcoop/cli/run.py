"""The commands that run the pipeline on one dataset: `train` (a run folder), `extract` (the
feature cache), `evaluate` (a run's accuracy on a split), `groups` (label the training split's
groups and judge them), `discover` (rank bias attributes) and `demo` (the built-in benchmark)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .args import (
    add_backbone_flags,
    add_common,
    add_dataset_flags,
    add_grouping_flags,
    add_log_flag,
    add_vocabulary_flag,
    check_grid_file,
    count,
    dataset_from_args,
    grouping_flags,
    progress_log,
    run_settings_from_args,
    warn_tiny,
)


def add_demo(demo) -> None:
    demo.add_argument("--out", default="runs/demo",
                      help="output folder (default runs/demo); a previous demo there is replaced, nothing else is")
    demo.add_argument("--seeds", type=count(1), default=1,
                      help="number of seeds (0..N-1); tables show mean ± std when N > 1")
    demo.add_argument("--task", default="synth-waterbirds",
                      help="synthetic task: synth-waterbirds (default), synth-multiceleba, synth-threebias "
                      "or synth-random:<seed>")
    demo.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N or mps")
    add_common(demo)


def cmd_demo(args) -> None:
    from ..features.cache import check_cache_dir
    from ..io.folders import check_cache_folder, check_replaceable
    from ..io.write import ensure_writable_dir
    from ..runs.demo import run_demo

    out = Path(args.out).expanduser()
    check_replaceable(out, overwrite=True, kind="demo")  # a previous demo is replaced: what `make demo` re-runs do
    ensure_writable_dir(out.parent, "--out")
    cache_dir = check_cache_dir(args.cache_dir)
    check_cache_folder(cache_dir, out)
    run_demo(out, seeds=args.seeds, task=args.task, cache_dir=cache_dir, workers=args.workers,
             progress=not args.quiet, log=print, device=args.device)


def add_train(train) -> None:
    from ..choices import DEFAULT_METHOD, FEATURE_DTYPES, SELECTIONS
    from ..grouping.labelers import GROUP_SOURCES
    from ..grouping.labelfree import SELECTION_FALLBACK
    from ..methods import METHODS

    add_dataset_flags(train, required=False)
    add_backbone_flags(train, required=False)
    train.add_argument("--method", help=f"one of: {', '.join(METHODS)} (default {DEFAULT_METHOD}; `groupcoop methods` "
                       "lists them all)")
    train.add_argument("--groups", help=f"where training groups come from: {', '.join(GROUP_SOURCES)}, or "
                       "file:groups.csv (a `groupcoop groups` output, matched by image path) "
                       "(default gt when the training split has bias labels and --bias-prompts is not auto, "
                       "else pseudo)")
    add_grouping_flags(train)
    train.add_argument("--selection", choices=SELECTIONS,
                       help="how the validation split selects the model: auto (default: its true groups when it "
                       f"has them, else {SELECTION_FALLBACK}), labeler (the labeler's val groups), worst_class "
                       "(worst per-class accuracy, no group labels), average")
    train.add_argument("--hide-bias-labels", metavar="SPLITS",
                       help="drop these splits' bias labels right after loading, e.g. train,val (the run is then "
                       "label-free there; test still reports true groups)")
    train.add_argument("--out", required=True, help="run folder to write")
    train.add_argument("--config", help="YAML file with any of the keys of a run's config.yaml "
                       "(dataset, root, dataset_options, backbone, pretrained, method, groups, selection, "
                       "hide_bias_labels, seed, device, feature_dtype, hyperparameters)")
    train.add_argument("--seed", type=count(0), help="random seed (default 0); same seed, same metrics.json (but its provenance: versions, host, times)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="method hyper-parameter, repeatable (e.g. epochs=30, lr=0.001, aggregate=logsumexp; "
                       "`groupcoop methods -v` lists them)")
    add_log_flag(train)
    train.add_argument("--feature-dtype", choices=FEATURE_DTYPES, default=None, help="feature cache dtype")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an --out folder that holds another groupcoop run (never anything else)")
    train.add_argument("--verify-cache", action="store_true",
                       help="hash every image file's content to check the feature cache "
                       "(default: size, modification and change time, inode)")
    add_common(train)


def cmd_train(args) -> None:
    from ..io.folders import check_cache_folder, check_replaceable, output_lock
    from ..io.write import ensure_writable_dir
    from ..runs.tracking import check_trackers

    settings = run_settings_from_args(args)  # settings and --out are checked before torch is imported
    trackers = check_trackers(args.log)
    out = Path(args.out).expanduser()
    inputs = [("the dataset folder", settings.root), ("--config", args.config), ("--pretrained", settings.pretrained)]
    check_replaceable(out, True, "run", inputs)  # what --overwrite would not change is refused before any work
    ensure_writable_dir(out.parent, "--out")
    from ..features.cache import check_cache_dir
    from ..runs.folder import holds_run, run_report, write_run
    from ..runs.phases import loaded
    from ..runs.pipeline import check_run, prepare, run_method

    cache_dir = check_cache_dir(args.cache_dir)
    check_cache_folder(cache_dir, out)
    started = time.perf_counter()
    dataset, settings, backbone = check_run(settings, allow_symlinks_outside=args.allow_symlinks_outside)
    # an identical run may be redone in place
    check_replaceable(out, args.overwrite or holds_run(out, settings.dump()), "run", inputs)
    warn_tiny(args, settings.backbone, dataset)
    with output_lock(out):
        progress_log(args)(loaded(dataset, backbone, time.perf_counter() - started))  # checks passed, work starts
        prep = prepare(dataset, backbone, cache_dir=cache_dir, feature_dtype=settings.feature_dtype,
                       workers=args.workers, progress=not args.quiet, verify_cache=args.verify_cache)
        run = run_method(prep, settings, log=progress_log(args))
        write_run(out, run, trackers)
    print(run_report(run.metrics))
    print(f"run folder: {out}")


# --- extract ---------------------------------------------------------------------------------

def add_extract(ex) -> None:
    from ..choices import FEATURE_DTYPES, PRECISIONS

    add_dataset_flags(ex)
    add_backbone_flags(ex)
    ex.add_argument("--feature-dtype", choices=FEATURE_DTYPES, default="float32",
                    help="feature cache dtype (default float32, as for train)")
    ex.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="autocast while encoding: auto = fp16 on CUDA, fp32 elsewhere; CPU allows fp32 and bf16")
    ex.add_argument("--batch-size", type=count(1), default=256, help="images per encoder batch (default 256)")
    ex.add_argument("--shard-size", type=count(1), default=None,
                    help="advanced: images per cache shard (default 8192, or what the cache folder already uses)")
    ex.add_argument("--verify-cache", action="store_true",
                    help="hash every image file's content to check the feature cache "
                    "(default: size, modification and change time, inode)")
    add_common(ex)


def cmd_extract(args) -> None:
    from ..backbones.families import check_device, load_backbone
    from ..features.cache import check_cache_dir
    from ..features.distributed import (
        Ranks,
        extract_cache,
        process_group,
        summary_lines,
    )
    from ..features.extract import resolve_precision
    from ..io import progress
    from ..io.folders import check_cache_folder
    from ..limits import check_shards
    from ..runs.phases import loaded

    ranks = Ranks.from_env()
    device = ranks.device(args.device or "cpu")
    check_device(device)
    resolve_precision(device, args.precision)
    cache_dir = check_cache_dir(args.cache_dir)
    check_cache_folder(cache_dir)
    dataset = dataset_from_args(args)
    check_shards(len(dataset.images), args.shard_size)
    with process_group(ranks, device):
        started = time.perf_counter()
        backbone = load_backbone(args.backbone, args.pretrained, device=device)
        progress.info(loaded(dataset, backbone, time.perf_counter() - started))
        info = extract_cache(backbone, dataset.images, ranks, cache_dir=cache_dir, dtype=args.feature_dtype,
                             shard_size=args.shard_size, batch_size=args.batch_size, workers=args.workers,
                             precision=args.precision, verify=args.verify_cache, progress=not args.quiet)
    if info is not None:
        print("\n".join(summary_lines(info)))


# --- evaluate --------------------------------------------------------------------------------

def add_evaluate(ev) -> None:
    from ..data.base import SPLITS

    ev.add_argument("--prompts", required=True, metavar="RUN", help="run folder written by `groupcoop train`")
    add_dataset_flags(ev)
    add_backbone_flags(ev, required=False)
    ev.add_argument("--split", default="test", choices=list(SPLITS), help="split to evaluate (default test)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_common(ev)


def cmd_evaluate(args) -> None:
    from ..backbones.families import check_device
    from ..features.cache import check_cache_dir
    from ..metrics import format_group_table
    from ..runs.pipeline import evaluate_split, prepare
    from ..runs.predict import load_run_head

    dataset = dataset_from_args(args)
    cache_dir = check_cache_dir(args.cache_dir)
    check_device(args.device or "cpu")
    # the run's classifier and backbone are checked before the (possibly long) feature extraction
    head, backbone = load_run_head(Path(args.prompts), backbone=args.backbone, pretrained=args.pretrained,
                                   device=args.device or "cpu", expect_classes=dataset.class_names, backbone_flag=True)
    prep = prepare(dataset, backbone, cache_dir=cache_dir, workers=args.workers, progress=not args.quiet)
    metrics = evaluate_split(head, prep, args.split)
    print(json.dumps(metrics, indent=1) if args.json else format_group_table(metrics, title=f"{args.split}:"))


def add_groups(gr) -> None:
    from ..grouping.labelers import GROUP_SOURCES

    add_dataset_flags(gr)
    add_backbone_flags(gr)
    gr.add_argument("--labeler", "--method", dest="labeler", required=True,
                    choices=[s for s in GROUP_SOURCES if s != "gt"],
                    help="the group labeler (--method is the older name)")
    add_grouping_flags(gr)
    gr.add_argument("--seed", type=count(0), default=0, help="random seed (default 0)")
    gr.add_argument("--out", required=True, help="output folder")
    gr.add_argument("--overwrite", action="store_true", help="replace an --out folder holding earlier groups output")
    add_common(gr)


def cmd_groups(args) -> None:
    from ..backbones.families import check_device, load_backbone
    from ..features.cache import check_cache_dir
    from ..grouping.options import GroupingOptions
    from ..grouping.plan import resolve_grouping, write_groups
    from ..io.folders import check_cache_folder, check_replaceable, output_lock
    from ..io.write import ensure_writable_dir
    from ..runs.pipeline import prepare
    from ..schema import build

    given = {"source": args.labeler, **{k: getattr(args, k) for k in grouping_flags()}}
    options = build(GroupingOptions, {k: v for k, v in given.items() if v is not None}, "groups options")
    out = Path(args.out).expanduser()
    check_replaceable(out, args.overwrite, "groups",
                      [("the dataset folder", args.root), ("--pretrained", args.pretrained)])
    ensure_writable_dir(out.parent, "--out")
    cache_dir = check_cache_dir(args.cache_dir)
    check_cache_folder(cache_dir, out)
    dataset = dataset_from_args(args)
    options = resolve_grouping(dataset, options)
    check_device(args.device or "cpu")
    backbone = load_backbone(args.backbone, args.pretrained, device=args.device or "cpu")
    warn_tiny(args, args.backbone, dataset)
    with output_lock(out):
        prep = prepare(dataset, backbone, cache_dir=cache_dir, workers=args.workers, progress=not args.quiet)
        print(write_groups(prep, out, options, seed=args.seed))


# --- discover --------------------------------------------------------------------------------

def add_discover(di) -> None:
    from ..choices import DISCOVERY_SCORES
    from ..grouping.labelfree import DISCOVERY_SCORE

    add_dataset_flags(di)
    add_backbone_flags(di)
    add_vocabulary_flag(di)
    di.add_argument("--top", type=count(1), default=10, help="how many candidates to list (default 10)")
    di.add_argument("--score", choices=DISCOVERY_SCORES, help=f"how candidates are ranked (default {DISCOVERY_SCORE})")
    di.add_argument("--json", action="store_true",
                    help='print [{"attribute", "values", "score", "scores", "shares", "dropped", "spurious"}, ...], '
                    "best first")
    di.add_argument("--grid", metavar="FILE", help="where the image features hold an unnamed attribute, write a PNG "
                    "of example training images of each class x value, to see what it is")
    di.add_argument("--overwrite", action="store_true", help="replace an existing --grid file")
    add_common(di)


def cmd_discover(args) -> None:
    from ..api import discover
    from ..features.cache import check_cache_dir
    from ..grouping.discovery import load_vocabulary

    dataset = dataset_from_args(args)
    grid = check_grid_file(args, dataset)
    vocabulary = load_vocabulary(args.vocabulary, dataset)  # a bad file is refused before any image is read
    warn_tiny(args, args.backbone, dataset)
    unkept: list[dict] = []  # the vocabulary's attributes that are no candidate, with why
    candidates = discover(dataset, backbone=args.backbone, pretrained=args.pretrained, vocabulary=vocabulary,
                          top=args.top, score=args.score, cache_dir=check_cache_dir(args.cache_dir),
                          device=args.device or "cpu", workers=args.workers, progress=not args.quiet, grid=grid,
                          unkept=unkept)
    if args.json:
        print(json.dumps(candidates, indent=1))
    else:
        from ..grouping.discovery import format_candidates

        print(format_candidates(candidates, dataset, vocabulary, args.score, unkept))
    if grid is not None:
        found = any(c.get("unnamed") for c in candidates)
        print(f"wrote {grid}" if found else f"no unnamed attribute found, so no --grid written ({grid})",
              file=sys.stderr if args.json else sys.stdout)
