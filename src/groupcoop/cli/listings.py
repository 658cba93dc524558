"""The commands that list or describe what groupcoop has: `datasets` (and `datasets check`), `world`,
`backbones` and `methods`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UserError

# --- datasets --------------------------------------------------------------------------------

def add_datasets(sub) -> None:
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


# --- world -----------------------------------------------------------------------------------

def add_world(sub) -> None:
    wo = sub.add_parser("world", help="the synthetic world's card: attributes, caption rates, zero-shot accuracy",
                        description="For each attribute of the built-in synthetic world: its values, how often "
                        "pretraining captions name it, the bundled groupcoop-tiny's zero-shot accuracy and a linear probe's accuracy on "
                        "held-out renders (deterministic).")
    wo.add_argument("--json", action="store_true",
                    help='print {"attributes": {NAME: {"values", "caption_rate", "zeroshot_accuracy", "probe_accuracy", "chance"}}}')
    wo.set_defaults(func=cmd_world)


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


# --- backbones -------------------------------------------------------------------------------

def add_backbones(sub) -> None:
    bb = sub.add_parser("backbones", help="list the architectures and pretrained tags",
                        description="List the open_clip architectures, their pretrained tags and the bundled model, "
                        "and how to name a Hugging Face transformers checkpoint.")
    bb.set_defaults(func=cmd_backbones)


def cmd_backbones(args) -> None:
    from ..backbones.families import TINY, describe_models

    info = describe_models()
    tags: dict[str, list[str]] = {}
    for name, tag in info.pretrained:
        tags.setdefault(name, []).append(tag)
    for name in info.models:
        extra = "bundled weights" if name == TINY else (", ".join(tags.get(name, [])) or "-")
        print(f"{name:<36} {extra}")
    if info.notes:  # families whose names cannot be listed say what they take
        print("\n" + "\n".join(info.notes))
    if info.unusable:
        print(f"\nnot usable here (need `pip install {' '.join(sorted(set(info.unusable.values())))}`): "
              f"{', '.join(sorted(info.unusable))}", file=sys.stderr)


# --- methods ---------------------------------------------------------------------------------

def add_methods(sub) -> None:
    me = sub.add_parser("methods", help="list the methods and their hyper-parameters",
                        description="The methods table: name, the labels each needs, its trainable parameter count "
                        "and a summary; -v adds every hyper-parameter's default.")
    me.add_argument("-v", "--verbose", action="store_true", help="also list each method's hyper-parameters")
    me.set_defaults(func=cmd_methods)


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
