"""The command line: wires the stages together; bad input ends in one line on stderr and status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError

EPILOG = "Docs: README.md. Bad input exits with status 2 and one line on stderr."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, as for every other bad input
        self.exit(2, f"groupcoop: error: {message} (see `{self.prog} --help`)\n")


def _key_values(pairs: list[str] | None, flag: str) -> dict:
    """KEY=VALUE strings -> dict, values parsed as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"{flag} expects KEY=VALUE, got '{pair}'")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _bias_prompts(text: str | None) -> list[list[str]] | None:
    """'on land,on water' (one attribute) or 'on land,on water;young,old' (several)."""
    if not text:
        return None
    return [[p.strip() for p in attr.split(",") if p.strip()] for attr in text.split(";")]


# --- train ---------------------------------------------------------------------------------

CONFIG_KEYS = {"dataset", "root", "dataset_options", "backbone", "pretrained", "method", "groups", "seed",
               "hyperparameters", "bias_prompts", "clusters", "device", "feature_dtype"}


def _load_config(path: str | None) -> dict:
    import yaml

    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        config = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {p} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"config file {p} must hold a mapping of keys to values")
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise UserError(f"config file {p} has unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(CONFIG_KEYS))}")
    return config


def _resolve_train_config(args) -> dict:
    config = _load_config(args.config)
    for key in ("dataset", "root", "backbone", "pretrained", "method", "groups", "seed", "clusters", "device",
                "feature_dtype"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    config.setdefault("seed", 0)
    config.setdefault("device", "cpu")
    config.setdefault("feature_dtype", "float32")
    config["dataset_options"] = {**config.get("dataset_options", {}), **_key_values(args.option, "--option")}
    config["hyperparameters"] = {**config.get("hyperparameters", {}), **_key_values(args.set, "--set")}
    if args.bias_prompts:
        config["bias_prompts"] = _bias_prompts(args.bias_prompts)
    for key in ("dataset", "backbone", "method"):
        if not config.get(key):
            raise UserError(f"missing --{key} (or `{key}:` in --config)")
    if config.get("root"):
        config["root"] = str(Path(config["root"]).expanduser())
    return config


def cmd_train(args) -> None:
    from .data.registry import load_dataset
    from .methods import check_hyperparameters, get_method
    from .pipeline import check_out_dir, prepare, run_method, run_report, write_run

    config = _resolve_train_config(args)
    recipe = get_method(config["method"])
    check_hyperparameters(recipe, recipe.hyperparameters(config["hyperparameters"]))
    dataset = load_dataset(config["dataset"], config.get("root"), **config["dataset_options"])
    config["groups"] = config.get("groups") or ("gt" if dataset.has_group_labels else "pseudo")
    out = Path(args.out)
    check_out_dir(out, config, args.overwrite)
    prep = prepare(dataset, config["backbone"], config.get("pretrained"), device=config["device"],
                   cache_dir=args.cache_dir, feature_dtype=config["feature_dtype"], workers=args.workers,
                   progress=not args.quiet)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    metrics, learner = run_method(prep, config["method"], config.get("groups"), seed=config["seed"],
                                  overrides=config["hyperparameters"], bias_prompts=config.get("bias_prompts"),
                                  clusters=config.get("clusters"), log=log)
    report = run_report(metrics)
    write_run(out, config, metrics, learner, report)
    print(report)
    print(f"run folder: {out}")


# --- evaluate --------------------------------------------------------------------------------

def cmd_evaluate(args) -> None:
    import torch

    from .backbone import load_backbone
    from .data.registry import load_dataset
    from .metrics import format_group_table, split_metrics
    from .pipeline import prepare
    from .prompts import load_prompts
    from .train import predict

    dataset = load_dataset(args.dataset, args.root, **_key_values(args.option, "--option"))
    backbone = load_backbone(args.backbone, args.pretrained, device=args.device or "cpu")
    # check the prompts before the (possibly long) feature extraction
    learner, meta = load_prompts(Path(args.prompts), backbone, expect_classes=dataset.class_names)
    prep = prepare(dataset, args.backbone, backbone=backbone, cache_dir=args.cache_dir, workers=args.workers,
                   progress=not args.quiet)
    with torch.no_grad():
        text = learner()
    rows = dataset.split_indices(args.split)
    pred = predict(text, prep.feats[rows], dataset.n_classes, meta.get("aggregate", "max"))
    groups = dataset.groups[rows]
    if (groups < 0).any():  # no bias labels: report per class instead
        groups, names = dataset.y[rows], list(dataset.class_names)
    else:
        names = dataset.group_names()
    metrics = split_metrics(pred, dataset.y[rows], groups, names)
    print(json.dumps(metrics, indent=1) if args.json else format_group_table(metrics, title=f"{args.split}:"))


# --- demo ------------------------------------------------------------------------------------

DEMO_METHODS = ("zeroshot", "coop", "groupcoop")


def cmd_demo(args) -> None:
    from .demo import run_demo

    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    run_demo(Path(args.out), seeds=args.seeds, task=args.task, cache_dir=args.cache_dir, workers=args.workers,
             progress=not args.quiet)


# --- datasets, groups, backbones -----------------------------------------------------------------

def cmd_datasets(args) -> None:
    from .data.check import dataset_report, format_report
    from .data.registry import LOADERS, load_dataset

    if args.action is None:
        width = max(len(n) for n in LOADERS)
        for name, spec in LOADERS.items():
            print(f"{name:<{width}}  {spec.description}")
        return
    if args.action != "check" or not args.name:
        raise UserError("usage: groupcoop datasets [check NAME --root DIR [--json]]")
    report = dataset_report(load_dataset(args.name, args.root, **_key_values(args.option, "--option")))
    print(json.dumps(report, indent=1) if args.json else format_report(report))


def cmd_groups(args) -> None:
    from .data.registry import load_dataset
    from .pipeline import prepare, write_groups

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} is not empty; choose another --out or pass --overwrite")
    dataset = load_dataset(args.dataset, args.root, **_key_values(args.option, "--option"))
    prep = prepare(dataset, args.backbone, args.pretrained, device=args.device or "cpu", cache_dir=args.cache_dir,
                   workers=args.workers, progress=not args.quiet)
    summary = write_groups(prep, out, args.method, seed=args.seed, bias_prompts=_bias_prompts(args.bias_prompts),
                           clusters=args.clusters, variant=args.variant)
    print(summary)


def cmd_backbones(args) -> None:
    from .backbone import describe_models

    info = describe_models()
    tags: dict[str, list[str]] = {}
    for name, tag in info.pretrained:
        tags.setdefault(name, []).append(tag)
    for name in info.models:
        extra = "bundled weights" if name == "groupcoop-tiny" else (", ".join(tags.get(name, [])) or "-")
        print(f"{name:<36} {extra}")


# --- parser ------------------------------------------------------------------------------------

def _add_backbone_flags(p, required: bool = True) -> None:
    p.add_argument("--backbone", required=required,
                   help="open_clip architecture (ViT-B-16, RN50, ...), an hf-hub: id, or groupcoop-tiny")
    p.add_argument("--pretrained", help="weights: a pretrained tag (openai, ...), a checkpoint file "
                   "(.safetensors preferred), or 'random'; groupcoop-tiny uses its bundled weights by default")
    p.add_argument("--device", default=None, help="torch device for the backbone (default cpu)")


def _add_common(p) -> None:
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache folder (default $GROUPCOOP_CACHE or ~/.cache/groupcoop)")
    p.add_argument("--workers", type=int, default=None, help="image-decoding worker processes (default: cores - 1, at most 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def _add_dataset_flags(p, required: bool = True) -> None:
    p.add_argument("--dataset", required=required, help="dataset name (`groupcoop datasets` lists them)")
    p.add_argument("--root", help="the dataset's folder (not needed for the synthetic ones)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="dataset option, repeatable (e.g. target=Blond_Hair, biases=Male, csv_path=meta.csv)")


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS
    from .pipeline import GROUP_SOURCES

    parser = _Parser(prog="groupcoop", description="Group-robust prompt tuning of frozen CLIP models (GroupCoOp).",
                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    demo = sub.add_parser("demo", help="zero-shot vs CoOp vs GroupCoOp on the built-in synthetic benchmark",
                          description="Run zero-shot, CoOp and GroupCoOp on a synthetic task with the bundled "
                          "groupcoop-tiny CLIP; print a comparison table; write OUT/summary.json and OUT/report.txt.")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo); replaced if it holds a demo")
    demo.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1); tables show mean ± std when N > 1")
    demo.add_argument("--task", default="synth-waterbirds", help="synthetic task (default synth-waterbirds)")
    _add_common(demo)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train one method on one dataset and write a run folder",
                           description="Train a method and write a run folder: config.yaml, metrics.json, "
                           "prompts.safetensors + prompts.json, report.txt. Flags override --config.")
    _add_dataset_flags(train, required=False)
    _add_backbone_flags(train, required=False)
    train.add_argument("--method", help=f"one of: {', '.join(METHODS)}")
    train.add_argument("--groups", help=f"where training groups come from: {', '.join(GROUP_SOURCES)} "
                       "(default gt when the dataset has bias labels, else pseudo)")
    train.add_argument("--out", required=True, help="run folder to write")
    train.add_argument("--config", help="YAML file with any of: " + ", ".join(sorted(CONFIG_KEYS)))
    train.add_argument("--seed", type=int, help="random seed (default 0); same seed, same metrics.json")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="method hyper-parameter, repeatable (e.g. epochs=30, lr=0.001, aggregate=logsumexp)")
    train.add_argument("--bias-prompts", help="attribute value phrases for zeroshot/pseudo groups: "
                       "'on land,on water' (';' between attributes)")
    train.add_argument("--clusters", type=int, help="clusters per class for --groups kmeans (default: attribute size)")
    train.add_argument("--feature-dtype", choices=["float32", "float16"], default=None, help="feature cache dtype")
    train.add_argument("--overwrite", action="store_true", help="replace an --out folder that holds another run")
    _add_common(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="evaluate learned prompts from a run folder on a dataset split",
                        description="Load prompts saved by `groupcoop train` and report per-group accuracy.")
    ev.add_argument("--prompts", required=True, help="run folder holding prompts.safetensors + prompts.json")
    _add_dataset_flags(ev)
    _add_backbone_flags(ev)
    ev.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate (default test)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_common(ev)
    ev.set_defaults(func=cmd_evaluate)

    ds = sub.add_parser("datasets", help="list dataset loaders, or check a dataset folder",
                        description="Without arguments: list the loaders. `check NAME --root DIR`: validate a "
                        "folder and print per-split, per-group counts.")
    ds.add_argument("action", nargs="?", choices=["check"], help="'check' to validate a folder")
    ds.add_argument("name", nargs="?", help="dataset name to check")
    ds.add_argument("--root", help="the dataset's folder")
    ds.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset option, repeatable")
    ds.add_argument("--json", action="store_true", help="print the counts as JSON")
    ds.set_defaults(func=cmd_datasets)

    gr = sub.add_parser("groups", help="assign (pseudo-)groups and report their agreement with true groups",
                        description="Label the training split's groups with a labeler; write OUT/groups.csv and "
                        "OUT/quality.json (accuracy under best matching, NMI, ARI, per-group precision/recall).")
    _add_dataset_flags(gr)
    _add_backbone_flags(gr)
    gr.add_argument("--method", required=True, choices=["zeroshot", "kmeans", "pseudo"], help="labeler")
    gr.add_argument("--variant", help="pseudo-labeler variant: kmeans (default), gmm or blend")
    gr.add_argument("--bias-prompts", help="attribute value phrases: 'on land,on water' (';' between attributes)")
    gr.add_argument("--clusters", type=int, help="clusters per class for kmeans (default: attribute size)")
    gr.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gr.add_argument("--out", required=True, help="output folder")
    gr.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    _add_common(gr)
    gr.set_defaults(func=cmd_groups)

    bb = sub.add_parser("backbones", help="list the architectures and pretrained tags",
                        description="List the open_clip architectures, their pretrained tags and the bundled model.")
    bb.set_defaults(func=cmd_backbones)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"groupcoop: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("groupcoop: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
