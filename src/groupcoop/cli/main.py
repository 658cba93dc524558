"""The command line: a thin user of the Python API; bad input ends in one line on stderr and status 2.

Nothing heavy is imported until a command runs, so `--help` and `--version` answer at once.
Every command checks its settings and output paths before it reads an image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .. import __version__
from ..errors import UserError

EPILOG = "Docs: README.md. Bad input exits with status 2 and one line on stderr."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, as for every other bad input
        self.exit(2, f"groupcoop: error: {message} (see `{self.prog} --help`)\n")


def _count(minimum: int):
    """argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def _log(args):
    return (lambda s: None) if getattr(args, "quiet", False) else (lambda s: print(s, file=sys.stderr))


# --- settings from flags and config files ---------------------------------------------------------

GROUPING_FLAGS = ("bias_prompts", "clusters", "variant", "discover_top", "discover_score", "vocabulary")  # = options

def run_settings_from_args(args):
    """--config values overridden by flags, validated into one RunSettings."""
    from ..runs.settings import key_values, make_settings, read_yaml_mapping

    config = read_yaml_mapping(args.config, "config file") if getattr(args, "config", None) else {}
    for key in ("dataset", "root", "backbone", "pretrained", "method", "seed", "device", "feature_dtype", "selection",
                "hide_bias_labels"):
        value = getattr(args, key, None)
        if value is not None:
            config[key] = value
    groups = config.get("groups")
    groups = {"source": groups} if isinstance(groups, str) else dict(groups or {}) if isinstance(groups, dict) else groups
    for flag, key in (("groups", "source"), *((k, k) for k in GROUPING_FLAGS)):
        value = getattr(args, flag, None)
        if value is not None:
            if not isinstance(groups, dict):
                groups = {}
            groups[key] = value
    if groups is not None:
        config["groups"] = groups
    for key, flag, attr in (("dataset_options", "--option", "option"), ("hyperparameters", "--set", "set")):
        given = key_values(getattr(args, attr, None), flag)
        if given:
            base = config.get(key) or {}
            if not isinstance(base, dict):
                raise UserError(f"`{key}:` in --config must be a mapping of keys to values")
            config[key] = {**base, **given}
    return make_settings(config, "--config/flags" if getattr(args, "config", None) else "flags")


# --- train ---------------------------------------------------------------------------------

def cmd_train(args) -> None:
    from ..io.folders import check_outside, check_replaceable, output_lock
    from ..io.write import ensure_writable_dir

    from ..runs.tracking import check_trackers

    settings = run_settings_from_args(args)  # settings and --out are checked before torch is imported
    trackers = check_trackers(args.log)
    out = Path(args.out).expanduser()
    ensure_writable_dir(out.parent, "--out")
    from ..features.extract import check_cache_dir
    from ..runs.pipeline import check_run, prepare, run_method
    from ..runs.folder import holds_run, run_report, write_run

    cache_dir = check_cache_dir(args.cache_dir)
    check_outside(cache_dir, "--cache-dir", out, "--out")
    dataset, settings, backbone = check_run(settings, allow_symlinks_outside=args.allow_symlinks_outside)
    check_replaceable(out, args.overwrite or holds_run(out, settings.dump()))  # an identical run may be redone in place
    with output_lock(out):
        prep = prepare(dataset, backbone, cache_dir=cache_dir, feature_dtype=settings.feature_dtype,
                       workers=args.workers, progress=not args.quiet, verify_cache=args.verify_cache)
        run = run_method(prep, settings, log=_log(args))
        write_run(out, run, trackers)
    print(run_report(run.metrics))
    print(f"run folder: {out}")


# --- extract ---------------------------------------------------------------------------------

def cmd_extract(args) -> None:
    from ..backbones.families import check_device, load_backbone
    from ..data.registry import load_dataset
    from ..features.distributed import Ranks, extract_cache, process_group, summary_lines
    from ..features.extract import check_cache_dir, resolve_precision
    from ..runs.settings import key_values

    ranks = Ranks.from_env()
    device = ranks.device(args.device or "cpu")
    check_device(device)
    resolve_precision(device, args.precision)
    cache_dir = check_cache_dir(args.cache_dir)
    dataset = load_dataset(args.dataset, args.root, allow_symlinks_outside=args.allow_symlinks_outside,
                           **key_values(args.option, "--option"))
    with process_group(ranks, device):
        backbone = load_backbone(args.backbone, args.pretrained, device=device)
        info = extract_cache(backbone, dataset.images, ranks, cache_dir=cache_dir, dtype=args.feature_dtype,
                             shard_size=args.shard_size, batch_size=args.batch_size, workers=args.workers,
                             precision=args.precision, verify=args.verify_cache, progress=not args.quiet)
    if info is not None:
        print("\n".join(summary_lines(info)))


# --- evaluate --------------------------------------------------------------------------------

def cmd_evaluate(args) -> None:
    from ..data.registry import load_dataset
    from ..features.extract import check_cache_dir
    from ..metrics import format_group_table
    from ..backbones.families import check_device
    from ..runs.pipeline import evaluate_split, prepare
    from ..runs.predict import load_run_head
    from ..runs.settings import key_values

    dataset = load_dataset(args.dataset, args.root, allow_symlinks_outside=args.allow_symlinks_outside,
                           **key_values(args.option, "--option"))
    cache_dir = check_cache_dir(args.cache_dir)
    check_device(args.device or "cpu")
    # the run's classifier and backbone are checked before the (possibly long) feature extraction
    head, backbone = load_run_head(Path(args.prompts), backbone=args.backbone, pretrained=args.pretrained,
                                   device=args.device or "cpu", expect_classes=dataset.class_names)
    prep = prepare(dataset, backbone, cache_dir=cache_dir, workers=args.workers, progress=not args.quiet)
    metrics = evaluate_split(head, prep, args.split)
    print(json.dumps(metrics, indent=1) if args.json else format_group_table(metrics, title=f"{args.split}:"))


# --- demo ------------------------------------------------------------------------------------

def cmd_demo(args) -> None:
    from ..runs.demo import run_demo
    from ..features.extract import check_cache_dir
    from ..io.folders import check_outside, check_replaceable, groupcoop_kind
    from ..io.write import ensure_writable_dir

    out = Path(args.out).expanduser()
    # a previous demo is replaced without --overwrite: that is what `make demo` re-runs do
    check_replaceable(out, overwrite=out.is_dir() and groupcoop_kind(out) == "demo")
    ensure_writable_dir(out.parent, "--out")
    cache_dir = check_cache_dir(args.cache_dir)
    check_outside(cache_dir, "--cache-dir", out, "--out")
    run_demo(out, seeds=args.seeds, task=args.task, cache_dir=cache_dir, workers=args.workers,
             progress=not args.quiet, log=print, device=args.device)


# --- datasets, groups, backbones, methods ----------------------------------------------------------

def cmd_datasets(args) -> None:
    from ..data.check import dataset_report, format_report
    from ..data.registry import list_datasets, load_dataset
    from ..runs.settings import key_values

    if args.action is None:
        listed = list_datasets()
        width = max(len(n) for n in listed)
        for name, description in listed.items():
            print(f"{name:<{width}}  {description}")
        return
    if args.action != "check" or not args.name:
        raise UserError("usage: groupcoop datasets [check NAME --root DIR [--json] [--grid FILE]]")
    grid = None
    if args.grid:
        from ..io.write import check_output_file

        grid = check_output_file(Path(args.grid), "--grid", overwrite=args.overwrite)
        if grid.suffix.lower() != ".png":
            raise UserError(f"--grid {grid}: the grid is a PNG image; give a file name ending in .png")
    dataset = load_dataset(args.name, args.root, allow_symlinks_outside=args.allow_symlinks_outside,
                           **key_values(args.option, "--option"))
    report = dataset_report(dataset)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if grid is not None:
        from ..reports.gallery import group_grid

        group_grid(dataset, grid)
        print(f"wrote {grid}", file=sys.stderr if args.json else sys.stdout)


def cmd_groups(args) -> None:
    from ..data.registry import load_dataset
    from ..features.extract import check_cache_dir
    from ..io.folders import check_outside, check_replaceable, output_lock
    from ..io.write import ensure_writable_dir
    from ..backbones.families import check_device, load_backbone
    from ..grouping.plan import resolve_grouping, write_groups
    from ..grouping.labelers import GroupingOptions
    from ..runs.pipeline import prepare
    from ..schema import build
    from ..runs.settings import key_values

    given = {"source": args.labeler, **{k: getattr(args, k) for k in GROUPING_FLAGS}}
    options = build(GroupingOptions, {k: v for k, v in given.items() if v is not None}, "groups options")
    out = Path(args.out).expanduser()
    check_replaceable(out, args.overwrite)
    ensure_writable_dir(out.parent, "--out")
    cache_dir = check_cache_dir(args.cache_dir)
    check_outside(cache_dir, "--cache-dir", out, "--out")
    dataset = load_dataset(args.dataset, args.root, allow_symlinks_outside=args.allow_symlinks_outside,
                           **key_values(args.option, "--option"))
    options = resolve_grouping(dataset, options)
    check_device(args.device or "cpu")
    backbone = load_backbone(args.backbone, args.pretrained, device=args.device or "cpu")
    with output_lock(out):
        prep = prepare(dataset, backbone, cache_dir=cache_dir, workers=args.workers, progress=not args.quiet)
        print(write_groups(prep, out, options, seed=args.seed))


def cmd_discover(args) -> None:
    from ..grouping.discovery import load_vocabulary

    from ..api import discover
    from ..data.registry import load_dataset
    from ..features.extract import check_cache_dir
    from ..runs.settings import key_values

    dataset = load_dataset(args.dataset, args.root, allow_symlinks_outside=args.allow_symlinks_outside,
                           **key_values(args.option, "--option"))
    vocabulary = load_vocabulary(args.vocabulary, dataset)  # a bad file is refused before any image is read
    candidates = discover(dataset, backbone=args.backbone, pretrained=args.pretrained, vocabulary=vocabulary,
                          top=args.top, score=args.score, cache_dir=check_cache_dir(args.cache_dir),
                          device=args.device or "cpu", workers=args.workers, progress=not args.quiet)
    if args.json:
        print(json.dumps(candidates, indent=1))
        return
    from ..grouping.discovery import format_candidates

    print(format_candidates(candidates, dataset, vocabulary, args.score))


def cmd_world(args) -> None:
    from ..backbones.families import TINY, load_backbone
    from ..data.world.card import format_card, world_card

    card = world_card(load_backbone(TINY))
    if args.json:
        print(json.dumps(card, indent=1))
        return
    print(f"The built-in synthetic world, and how well {card['backbone']} names each attribute zero-shot "
          f"({card['heldout_images']} held-out renders):\n")
    print(format_card(card))


def cmd_backbones(args) -> None:
    from ..backbones.families import TINY, TRANSFORMERS_PREFIX, describe_models

    info = describe_models()
    tags: dict[str, list[str]] = {}
    for name, tag in info.pretrained:
        tags.setdefault(name, []).append(tag)
    for name in info.models:
        extra = "bundled weights" if name == TINY else (", ".join(tags.get(name, [])) or "-")
        print(f"{name:<36} {extra}")
    print(f"\n{TRANSFORMERS_PREFIX}<hub id or folder>   a Hugging Face CLIPModel or SiglipModel "
          "(pip install groupcoop[transformers])")
    if info.unusable:
        print(f"\nnot usable here (need `pip install {' '.join(sorted(set(info.unusable.values())))}`): "
              f"{', '.join(sorted(info.unusable))}", file=sys.stderr)


def cmd_methods(args) -> None:
    from ..methods import METHODS

    header = ("method", "labels it needs", "trainable parameters", "summary")
    rows = [(name, r.labels, r.trainable, r.summary) for name, r in METHODS.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    print("\nC classes, G groups per class, D image-feature width, M context vectors of width W.\n"
          "train groups: from --groups (the true bias labels by default, or pseudo-groups).\n"
          "true val groups: trains on the validation split's bias labels, never on the training split's.\n"
          "Every trained method selects its model on the validation split by --selection: worst-group\n"
          "accuracy on its true groups where the data has them (auto), or on the labeler's groups, or\n"
          "worst-class or average accuracy; dfr tunes itself on val's true groups.")
    if args.verbose:
        for name, recipe in METHODS.items():
            print(f"\n{name} (needs_groups: {recipe.needs_groups}) hyper-parameters (--set KEY=VALUE):")
            for key, value in recipe.defaults().items():
                print(f"  {key} = {value!r}")


def cmd_predict(args) -> None:
    from ..backbones.families import check_device
    from ..io.write import atomic_text, check_output_file
    from ..runs.predict import GroupCoOpClassifier, find_images, images_from_csv, predict_files, rows_to_csv

    if bool(args.images) == bool(args.csv):
        raise UserError("give either --images PATH... or --csv FILE --root DIR")
    if args.csv and not args.root:
        raise UserError("--csv needs --root: the folder the CSV's paths are relative to")
    out = check_output_file(Path(args.out), "--out", overwrite=args.overwrite)
    paths = find_images(args.images) if args.images else \
        images_from_csv(Path(args.csv), Path(args.root), args.path_col, args.allow_symlinks_outside)
    check_device(args.device or "cpu")
    classifier = GroupCoOpClassifier.from_run(args.run, device=args.device or "cpu", pretrained=args.pretrained)
    rows, failures = predict_files(classifier, paths, batch_size=args.batch_size, workers=args.workers,
                                   progress=not args.quiet)
    if failures and args.strict:
        first = next(r for r in rows if r["error"])
        raise UserError(f"{failures} of {len(rows)} images could not be read (first: {first['error']}); "
                        f"nothing written (--strict)")
    atomic_text(out, rows_to_csv(rows), "--out")
    print(f"predicted {len(rows) - failures} of {len(rows)} images"
          + (f"; {failures} could not be read (see the error column)" if failures else "") + f"; wrote {out}")


def cmd_export(args) -> None:
    from ..io.folders import check_replaceable, groupcoop_kind, output_lock
    from ..io.write import ensure_writable_dir
    from ..runs.predict import export_head

    out = Path(args.out).expanduser()
    if out.suffix == ".safetensors" and not out.is_dir():
        raise UserError(f"--out {out}: export writes a folder (head.safetensors, and the model files beside it); "
                        f"give a folder name, e.g. --out {out.with_suffix('')}")
    check_replaceable(out, args.overwrite)
    kind = groupcoop_kind(out) if out.is_dir() and any(out.iterdir()) else None
    if kind not in (None, "export"):  # --overwrite replaces an earlier export, never a run (its own source)
        raise UserError(f"--out {out} holds a groupcoop {kind}, not an export; choose another folder")
    ensure_writable_dir(out.parent, "--out")
    with output_lock(out):
        head = export_head(Path(args.run), out, pretrained=args.pretrained)
    carried = f"the {head.info['library']} model in {out}/{head.info['weights']}" if head.info.get("weights") else \
        f"open_clip's {head.info.get('model')}" + (f" ({head.info['pretrained']})" if head.info.get("pretrained") else "")
    print(f"wrote {out}/head.safetensors: {head.weight.shape[0]} rows x {head.weight.shape[1]} dims, classes "
          f"{', '.join(head.class_names)}, aggregate {head.aggregate}; backbone: {carried}")


def cmd_sweep(args) -> None:
    from ..features.extract import check_cache_dir
    from ..io.folders import check_replaceable, groupcoop_kind, output_lock, write_manifest
    from ..io.write import atomic_text, ensure_writable_dir
    from ..runs.settings import key_values
    from ..sweeps.sweep import estimate, expand, load_grid, parse_shard, print_runs, run_sweep, shard, write_summary

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
    out = Path(args.out or Path("runs") / grid.name).expanduser()
    if args.dry_run:
        print_runs(mine, out)
        print(estimate(mine, fuse=args.fuse, max_prompts=args.max_fused_prompts))
        return
    from ..backbones.families import check_device
    from ..sweeps.sweep import check_roots, check_run_folders

    if args.summary_only and not out.is_dir():
        raise UserError(f"--summary-only: there is no sweep folder {out}; give the --out of a sweep that ran, "
                        "or run the sweep without --summary-only")
    check_device(grid.device)
    check_roots(mine)
    if not args.summary_only:
        check_run_folders(mine, out, args.overwrite)  # before anything is written
    if out.exists() and groupcoop_kind(out) != "sweep":
        check_replaceable(out, overwrite=False)  # an empty folder is fine; anything else is refused
    ensure_writable_dir(out, "--out")
    cache_dir = check_cache_dir(args.cache_dir)
    log = _log(args)
    if not args.summary_only:
        with output_lock(out / f"shard-{index}-of-{count}"):
            out.mkdir(parents=True, exist_ok=True)
            if not (out / "grid.yaml").exists():
                import yaml

                atomic_text(out / "grid.yaml", yaml.safe_dump(grid.model_dump(), sort_keys=False))
                write_manifest(out, "sweep")
            run_sweep(mine, out, jobs=args.jobs, cache_dir=cache_dir, workers=args.workers, log=log, fuse=args.fuse,
                      max_prompts=args.max_fused_prompts, overwrite=args.overwrite, trackers=tuple(trackers))
    text, n = write_summary(specs, out, grid)
    write_manifest_top(out)
    print(text)
    print(f"\nsweep folder: {out} ({n} finished runs; runs.csv, table.md, report.html)")


def write_manifest_top(out: Path) -> None:
    """The sweep folder's manifest lists its own files; each run folder carries its own."""
    import json

    from ..io.folders import MANIFEST

    from ..io.write import atomic_text

    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    atomic_text(out / MANIFEST, json.dumps({"kind": "sweep", "files": files}, indent=1) + "\n")


def print_presets() -> None:
    """The grids that ship with groupcoop: name, folder, what it is."""
    from ..presets import available, summary

    presets = available()
    width = max(len(n) for n in presets)
    for name, path in presets.items():
        print(f"{name:<{width}}  {path.parent.name:<11}  {summary(path)}")
    print(f"\n`groupcoop sweep NAME` runs one (`--dry-run` lists its runs first); the files are in "
          f"{next(iter(presets.values())).parents[1]}")


# --- parser ------------------------------------------------------------------------------------

def _add_backbone_flags(p, required: bool = True) -> None:
    p.add_argument("--backbone", required=required,
                   help="open_clip architecture (ViT-B-16, RN50, ...), an hf-hub: id, groupcoop-tiny, or "
                   "transformers:<hub id or folder> for a Hugging Face CLIPModel or SiglipModel")
    p.add_argument("--pretrained", help="open_clip weights: a pretrained tag (openai, ...), a checkpoint file "
                   "(.safetensors preferred), or 'random'; groupcoop-tiny uses its bundled weights by default "
                   "(transformers: backbones take none)")
    p.add_argument("--device", default=None, help="torch device: cpu (default), cuda, cuda:N or mps (extract under torchrun: cuda = cuda:LOCAL_RANK)")


def _add_log_flag(p) -> None:
    from ..runs.tracking import TRACKERS

    p.add_argument("--log", action="append", choices=list(TRACKERS), metavar="TRACKER",
                   help=f"also send each run's epoch rows (as in its epochs.csv), settings and test numbers to "
                   f"{', '.join(TRACKERS)} (repeatable; needs that package installed; tensorboard's files go into "
                   "the run folder's tensorboard/)")


def _add_common(p) -> None:
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache folder (default $GROUPCOOP_CACHE or ~/.cache/groupcoop)")
    p.add_argument("--workers", type=_count(0), default=None,
                   help="image-decoding worker processes (default: cores - 1, at most 4; 0 decodes in-process)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def _add_dataset_flags(p, required: bool = True) -> None:
    p.add_argument("--dataset", required=required, help="dataset name (`groupcoop datasets` lists them)")
    p.add_argument("--root", help="the dataset's folder (not needed for the synthetic ones)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="dataset option, repeatable (e.g. target=Blond_Hair, biases=Male, csv_path=meta.csv)")
    p.add_argument("--allow-symlinks-outside", action="store_true",
                   help="read image files whose symlinks lead outside --root (refused by default)")


def _add_grouping_flags(p) -> None:
    p.add_argument("--bias-prompts", help="attribute value phrases for zeroshot/pseudo groups: "
                   "'on land,on water' (';' between attributes), or 'auto': discovered on the training split "
                   "(`groupcoop discover`)")
    p.add_argument("--clusters", type=_count(2), help="clusters per class for kmeans groups (default: attribute size)")
    from ..grouping.labelers import DEFAULT_PSEUDO_VARIANT, PSEUDO_VARIANTS

    p.add_argument("--variant", choices=list(PSEUDO_VARIANTS),
                   help=f"pseudo-labeler variant (default {DEFAULT_PSEUDO_VARIANT}; see docs/defaults.md)")
    _add_vocabulary_flag(p, "with --bias-prompts auto: ")
    from ..choices import DISCOVERY_SCORES
    from ..grouping.labelfree import DISCOVER_TOP, DISCOVERY_SCORE

    p.add_argument("--discover-top", type=_count(1), help="with --bias-prompts auto: the most discovered attributes "
                   f"the labeler uses (default {DISCOVER_TOP})")
    p.add_argument("--discover-score", choices=DISCOVERY_SCORES,
                   help=f"with --bias-prompts auto: how discovery ranks attributes (default {DISCOVERY_SCORE})")


def _add_vocabulary_flag(p, prefix: str = "") -> None:
    p.add_argument("--vocabulary", metavar="FILE", help=f"{prefix}bias vocabulary YAML ({{attributes: {{NAME: [value "
                   "phrase, ...]}}}}, optionally extends: clip|world); default: the shipped one (world for synth-* "
                   "datasets, clip otherwise)")


def build_parser() -> argparse.ArgumentParser:
    from ..choices import DISCOVERY_SCORES, FEATURE_DTYPES, PRECISIONS, SELECTIONS
    from ..runs.fusion import DEFAULT_MAX_PROMPTS
    from ..sweeps.sweep import MAX_RUNS
    from ..data.base import SPLITS
    from ..grouping.labelers import GROUP_SOURCES
    from ..grouping.labelfree import DISCOVERY_SCORE, SELECTION_FALLBACK
    from ..methods import METHODS

    parser = _Parser(prog="groupcoop", description="Group-robust prompt tuning of frozen CLIP models (GroupCoOp).",
                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"groupcoop {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    demo = sub.add_parser("demo", help="GroupCoOp against zero-shot, CoOp, coop_balanced and DFR on the built-in "
                          "synthetic benchmark",
                          description="Run zero-shot, CoOp, coop_balanced, DFR and GroupCoOp on a synthetic task with "
                          "the bundled groupcoop-tiny CLIP (the learned-prompt runs in one fused pass); print a "
                          "comparison table, a one-line conclusion and what each method needs; write "
                          "OUT/summary.json and a report.")
    demo.add_argument("--out", default="runs/demo",
                      help="output folder (default runs/demo); a previous demo there is replaced, nothing else is")
    demo.add_argument("--seeds", type=_count(1), default=1,
                      help="number of seeds (0..N-1); tables show mean ± std when N > 1")
    demo.add_argument("--task", default="synth-waterbirds",
                      help="synthetic task: synth-waterbirds (default), synth-multiceleba, synth-threebias "
                      "or synth-random:<seed>")
    demo.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N or mps")
    _add_common(demo)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train one method on one dataset and write a run folder",
                           description="Train a method and write a run folder: config.yaml (the resolved "
                           "configuration), metrics.json, head.safetensors, prompts.safetensors + prompts.json, "
                           "report.txt. Flags override --config.")
    _add_dataset_flags(train, required=False)
    _add_backbone_flags(train, required=False)
    train.add_argument("--method", help=f"one of: {', '.join(METHODS)} (`groupcoop methods` lists them all)")
    train.add_argument("--groups", help=f"where training groups come from: {', '.join(GROUP_SOURCES)} "
                       "(default gt when the training split has bias labels and --bias-prompts is not auto, "
                       "else pseudo)")
    _add_grouping_flags(train)
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
    train.add_argument("--seed", type=_count(0), help="random seed (default 0); same seed, same metrics.json (but its provenance: versions, host, times)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="method hyper-parameter, repeatable (e.g. epochs=30, lr=0.001, aggregate=logsumexp; "
                       "`groupcoop methods -v` lists them)")
    _add_log_flag(train)
    train.add_argument("--feature-dtype", choices=FEATURE_DTYPES, default=None, help="feature cache dtype")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an --out folder that holds another groupcoop run (never anything else)")
    train.add_argument("--verify-cache", action="store_true",
                       help="hash every image file's content to check the feature cache "
                       "(default: size, modification and change time, inode)")
    _add_common(train)
    train.set_defaults(func=cmd_train)

    ex = sub.add_parser("extract", help="fill the feature cache of a dataset (all splits); runs under torchrun",
                        description="Extract and cache the image features of every image of a dataset, then print "
                        "where the cache is. Under `torchrun --nproc-per-node N [--nnodes M ...] -m groupcoop "
                        "extract ...` each process fills its share of the shards (NCCL on GPUs, Gloo on CPU) and "
                        "rank 0 checks them all; a killed run resumes where it stopped. `train` then finds the "
                        "features in the cache.")
    _add_dataset_flags(ex)
    _add_backbone_flags(ex)
    ex.add_argument("--feature-dtype", choices=FEATURE_DTYPES, default="float32",
                    help="feature cache dtype (default float32, as for train)")
    ex.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="autocast while encoding: auto = fp16 on CUDA, fp32 elsewhere; CPU allows fp32 and bf16")
    ex.add_argument("--batch-size", type=_count(1), default=256, help="images per encoder batch (default 256)")
    ex.add_argument("--shard-size", type=_count(1), default=None,
                    help="advanced: images per cache shard (default 8192, or what the cache folder already uses)")
    ex.add_argument("--verify-cache", action="store_true",
                    help="hash every image file's content to check the feature cache "
                    "(default: size, modification and change time, inode)")
    _add_common(ex)
    ex.set_defaults(func=cmd_extract)

    ev = sub.add_parser("evaluate", help="evaluate a trained run's classifier on a dataset split",
                        description="Load the classifier of a run folder and report per-group accuracy on a split.")
    ev.add_argument("--prompts", required=True, metavar="RUN", help="run folder written by `groupcoop train`")
    _add_dataset_flags(ev)
    _add_backbone_flags(ev, required=False)
    ev.add_argument("--split", default="test", choices=list(SPLITS), help="split to evaluate (default test)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_common(ev)
    ev.set_defaults(func=cmd_evaluate)

    ds = sub.add_parser("datasets", help="list dataset loaders, or check a dataset folder",
                        description="Without arguments: list the loaders. `check NAME --root DIR`: validate a "
                        "folder and print per-split, per-group counts; --grid FILE also draws images per group.")
    ds.add_argument("action", nargs="?", choices=["check"], help="'check' to validate a folder")
    ds.add_argument("name", nargs="?", help="dataset name to check")
    ds.add_argument("--root", help="the dataset's folder")
    ds.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset option, repeatable")
    ds.add_argument("--allow-symlinks-outside", action="store_true",
                    help="accept image symlinks that lead outside --root")
    ds.add_argument("--json", action="store_true", help="print the counts as JSON")
    ds.add_argument("--grid", metavar="FILE", help="write a PNG with sample training images of every group")
    ds.add_argument("--overwrite", action="store_true", help="replace an existing --grid file")
    ds.set_defaults(func=cmd_datasets)

    gr = sub.add_parser("groups", help="assign (pseudo-)groups and report their agreement with true groups",
                        description="Label the training split's groups with a labeler; write OUT/groups.csv and "
                        "OUT/quality.json (accuracy under best matching, NMI, ARI, per-group precision/recall).")
    _add_dataset_flags(gr)
    _add_backbone_flags(gr)
    gr.add_argument("--labeler", "--method", dest="labeler", required=True,
                    choices=[s for s in GROUP_SOURCES if s != "gt"],
                    help="the group labeler (--method is the older name)")
    _add_grouping_flags(gr)
    gr.add_argument("--seed", type=_count(0), default=0, help="random seed (default 0)")
    gr.add_argument("--out", required=True, help="output folder")
    gr.add_argument("--overwrite", action="store_true", help="replace an --out folder holding earlier groups output")
    _add_common(gr)
    gr.set_defaults(func=cmd_groups)

    di = sub.add_parser("discover", help="rank the attributes of a vocabulary by how spurious they look on the "
                        "training split (bias discovery)",
                        description="Score every attribute of a bias vocabulary: each training image gets the value "
                        "phrase it matches best zero-shot (averaged over the class names); values given to few "
                        "images are dropped; the score says how strongly those values go with the class. No bias "
                        "label is read. `train --bias-prompts auto` uses the top candidates above a threshold.")
    _add_dataset_flags(di)
    _add_backbone_flags(di)
    _add_vocabulary_flag(di)
    di.add_argument("--top", type=_count(1), default=10, help="how many candidates to list (default 10)")
    di.add_argument("--score", choices=DISCOVERY_SCORES, help=f"how candidates are ranked (default {DISCOVERY_SCORE})")
    di.add_argument("--json", action="store_true",
                    help='print [{"attribute", "values", "score", "scores", "shares", "dropped"}, ...], best first')
    _add_common(di)
    di.set_defaults(func=cmd_discover)

    wo = sub.add_parser("world", help="the synthetic world's card: attributes, caption rates, zero-shot accuracy",
                        description="For each attribute of the built-in synthetic world: its values, how often "
                        "pretraining captions name it, the bundled groupcoop-tiny's zero-shot accuracy and a linear probe's accuracy on "
                        "held-out renders (deterministic).")
    wo.add_argument("--json", action="store_true",
                    help='print {"attributes": {NAME: {"values", "caption_rate", "zeroshot_accuracy", "probe_accuracy", "chance"}}}')
    wo.set_defaults(func=cmd_world)

    bb = sub.add_parser("backbones", help="list the architectures and pretrained tags",
                        description="List the open_clip architectures, their pretrained tags and the bundled model, "
                        "and how to name a Hugging Face transformers checkpoint.")
    bb.set_defaults(func=cmd_backbones)

    pr = sub.add_parser("predict", help="classify new images with a trained run",
                        description="Classify image files (or the images a CSV lists) with a run's classifier; write "
                        "a CSV: path, predicted class, predicted group (the best group prompt of that class), one "
                        "probability column per class, and an error column for images that could not be read.")
    pr.add_argument("run", help="run folder written by `groupcoop train`, or a folder written by `groupcoop export`")
    pr.add_argument("--images", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    pr.add_argument("--csv", help="a CSV listing images (instead of --images)")
    pr.add_argument("--root", help="with --csv: the folder its paths are relative to")
    pr.add_argument("--path-col", default="path", help="with --csv: the column of image paths (default path)")
    pr.add_argument("--allow-symlinks-outside", action="store_true",
                    help="with --csv: read images whose symlinks lead outside --root (refused by default)")
    pr.add_argument("--out", required=True, help="predictions CSV to write")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    pr.add_argument("--strict", action="store_true", help="any unreadable image: exit 2 and write nothing")
    pr.add_argument("--pretrained", help="the weights file, when the run's weights file has moved")
    pr.add_argument("--device", default=None, help="torch device: cpu (default), cuda, cuda:N or mps")
    pr.add_argument("--batch-size", type=_count(1), default=256, help="images per batch (default 256)")
    pr.add_argument("--workers", type=_count(0), default=None,
                    help="image-decoding worker processes (default: cores - 1, at most 4)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="write a run's classifier as a folder usable with plain open_clip "
                        "(or transformers)",
                        description="Write OUT/head.safetensors (normalised text features per class x group, logit "
                        "scale and bias, class and group names, aggregate rule, the backbone's library, name and "
                        "pretrained tag) and, when open_clip cannot fetch the backbone by name (the bundled "
                        "groupcoop-tiny, a weights file, random weights), OUT/open_clip_config.json + "
                        "OUT/open_clip_model.safetensors (with its sha256), which open_clip loads as `local-dir:OUT`. "
                        "A transformers: backbone is written with save_pretrained (OUT/config.json, "
                        "OUT/model.safetensors, tokenizer and image processor files), which AutoModel.from_pretrained "
                        "loads. README shows how to use either without groupcoop. `groupcoop predict OUT` uses it too.")
    ex.add_argument("run", help="run folder written by `groupcoop train`")
    ex.add_argument("--out", required=True, help="folder to write (created, with its parents)")
    ex.add_argument("--overwrite", action="store_true", help="replace an --out folder that holds an earlier export")
    ex.add_argument("--pretrained", help="the weights file, when the run's weights file has moved")
    ex.set_defaults(func=cmd_export)

    sw = sub.add_parser("sweep", help="run a grid of runs (datasets x backbones x methods x groups x seeds)",
                        description="Run every combination of a grid (a YAML file and/or flags) as ordinary run "
                        "folders under OUT/runs/; finished runs are skipped, so a killed sweep resumes. Writes "
                        "OUT/runs.csv, OUT/table.md (mean ± std over seeds; a suite aggregate with bootstrap "
                        "intervals when there are several datasets) and OUT/report.html.")
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
    _add_log_flag(sw)
    sw.add_argument("--max-runs", type=_count(1), default=MAX_RUNS, metavar="N",
                    help=f"refuse a grid of more than N runs, counted before it is expanded (default {MAX_RUNS:,})")
    sw.add_argument("--jobs", type=_count(1), default=1, help="parallel worker processes (default 1); each fuses "
                    "its share of the learned-prompt runs")
    sw.add_argument("--no-fuse", dest="fuse", action="store_false",
                    help="train every run alone (default: the learned-prompt runs of a dataset and backbone train "
                    "together, one text-encoder call per step for all their prompts; same results up to float "
                    "rounding)")
    sw.add_argument("--max-fused-prompts", type=_count(1), default=None, metavar="N",
                    help=f"at most N prompts per fused text-encoder call, for memory (default {DEFAULT_MAX_PROMPTS})")
    sw.add_argument("--device", help="torch device for every run, replacing the grid's (cpu, cuda, cuda:N)")
    sw.add_argument("--shard", metavar="I/N", help="run only slice I of N (0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/8")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and an estimated cost; run nothing")
    sw.add_argument("--summary-only", action="store_true", help="only rebuild runs.csv, table.md and report.html")
    sw.add_argument("--overwrite", action="store_true", help="replace run folders that hold a run of other settings "
                    "(default: refused; finished runs of the same settings are always kept, damaged ones redone)")
    _add_common(sw)
    sw.set_defaults(func=cmd_sweep, workers=0)

    me = sub.add_parser("methods", help="list the methods and their hyper-parameters",
                        description="The methods table: name, the labels each needs, its trainable parameter count "
                        "and a summary; -v adds every hyper-parameter's default.")
    me.add_argument("-v", "--verbose", action="store_true", help="also list each method's hyper-parameters")
    me.set_defaults(func=cmd_methods)
    return parser


def _printable_streams() -> None:
    """Print any path, even one whose name is not valid UTF-8: such bytes come out as \\xNN escapes."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):  # replaced by a caller with a stream that cannot
            pass


def main(argv: list[str] | None = None) -> int:
    from ..io.environment import check_environment, debug

    _printable_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_environment()
        args.func(args)
        sys.stdout.flush()
    except UserError as err:
        print(f"groupcoop: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("groupcoop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `groupcoop backbones | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as err:  # noqa: BLE001 - a bug or an unforeseen failure: one line, traceback on request
        if debug():
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"groupcoop: internal error: {type(err).__name__}: {first} (set GROUPCOOP_DEBUG=1 for the traceback "
              "and please report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
