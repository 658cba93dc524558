"""The commands that list or describe what groupcoop has: `datasets` (and `datasets check`), `world`,
`backbones` and `methods`."""

from __future__ import annotations

import json
import sys

from ..errors import UserError
from .args import check_grid_file, print_columns

# --- datasets --------------------------------------------------------------------------------

def add_datasets(ds) -> None:
    ds.add_argument("action", nargs="?", choices=["check"], help="'check' to validate a folder")
    ds.add_argument("name", nargs="?", help="dataset name to check")
    ds.add_argument("--root", help="the dataset's folder")
    ds.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset option, repeatable")
    ds.add_argument("--allow-symlinks-outside", action="store_true",
                    help="accept image symlinks that lead outside --root")
    ds.add_argument("--json", action="store_true", help="print the counts as JSON")
    ds.add_argument("--grid", metavar="FILE", help="write a PNG with sample training images of every group")
    ds.add_argument("--overwrite", action="store_true", help="replace an existing --grid file")


def cmd_datasets(args) -> None:
    from ..data.check import dataset_report, format_report
    from ..data.registry import list_datasets, load_dataset
    from ..runs.settings import key_values

    if args.action is None:
        print_columns(list(list_datasets().items()))
        return
    if args.action != "check" or not args.name:
        raise UserError("usage: groupcoop datasets [check NAME --root DIR [--json] [--grid FILE]]")
    dataset = load_dataset(args.name, args.root, allow_symlinks_outside=args.allow_symlinks_outside,
                           **key_values(args.option, "--option"))
    grid = check_grid_file(args, dataset)
    report = dataset_report(dataset)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if grid is not None:
        from ..reports.gallery import group_grid

        group_grid(dataset, grid)
        print(f"wrote {grid}", file=sys.stderr if args.json else sys.stdout)


# --- world -----------------------------------------------------------------------------------

def add_world(wo) -> None:
    wo.add_argument("--json", action="store_true",
                    help='print {"attributes": {NAME: {"values", "caption_rate", "zeroshot_accuracy", "probe_accuracy", "chance"}}}')


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

def add_methods(me) -> None:
    me.add_argument("-v", "--verbose", action="store_true", help="also list each method's hyper-parameters")


def cmd_methods(args) -> None:
    from ..methods import METHODS

    header = ("method", "labels it needs", "trainable parameters", "summary")
    rows = [(name, r.labels, r.trainable, r.summary) for name, r in METHODS.items()]
    print_columns([header, *rows])
    print("\nC classes, G groups per class, D image-feature width, M context vectors of width W.\n"
          "train groups: from --groups (the true bias labels by default, or pseudo-groups).\n"
          "val groups: trains on the validation split's bias labels, or a labeler's val groups where it has\n"
          "none (--groups; pseudo by default), never on the training split's labels.\n"
          "Every trained method selects its model on the validation split by --selection: worst-group\n"
          "accuracy on its true groups where the data has them (auto), or on the labeler's groups, or\n"
          "worst-class or average accuracy; dfr tunes itself on the val groups it trains on.")
    if args.verbose:
        import inspect
        import textwrap

        for name, recipe in METHODS.items():
            source = inspect.getdoc(recipe.schema) or ""
            print(f"\n{name} (needs_groups: {recipe.needs_groups})")
            print(textwrap.indent(textwrap.fill(" ".join(source.split("\n\n")[0].split()), 96), "  "))
            print("  hyper-parameters (--set KEY=VALUE):")
            for key, value in recipe.defaults().items():
                print(f"    {key} = {value!r}")
        print("\n" + what_to_use())


def what_to_use() -> str:
    """The "what to use when" table: the best method per situation on the report suite (shipped with
    the presets, written from the report sweeps; the README carries the same table)."""
    from importlib import resources

    return (resources.files("groupcoop") / "presets" / "suites" / "what-to-use.md").read_text(encoding="utf-8").strip()
