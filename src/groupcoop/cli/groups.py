"""`groupcoop groups` (label the training split's groups, judge them) and `discover` (rank bias attributes)."""

from __future__ import annotations

import json
from pathlib import Path

from .args import (add_backbone_flags, add_common, add_dataset_flags, add_grouping_flags, add_vocabulary_flag, count,
                   grouping_flags)

# --- groups ----------------------------------------------------------------------------------

def add_groups(sub) -> None:
    from ..grouping.labelers import GROUP_SOURCES

    gr = sub.add_parser("groups", help="assign (pseudo-)groups and report their agreement with true groups",
                        description="Label the training split's groups with a labeler; write OUT/groups.csv and "
                        "OUT/quality.json (accuracy under best matching, NMI, ARI, per-group precision/recall).")
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
    gr.set_defaults(func=cmd_groups)


def cmd_groups(args) -> None:
    from ..backbones.families import check_device, load_backbone
    from ..data.registry import load_dataset
    from ..features.cache import check_cache_dir
    from ..grouping.options import GroupingOptions
    from ..grouping.plan import resolve_grouping, write_groups
    from ..io.folders import check_outside, check_replaceable, output_lock
    from ..io.write import ensure_writable_dir
    from ..runs.pipeline import prepare
    from ..runs.settings import key_values
    from ..schema import build

    given = {"source": args.labeler, **{k: getattr(args, k) for k in grouping_flags()}}
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


# --- discover --------------------------------------------------------------------------------

def add_discover(sub) -> None:
    from ..choices import DISCOVERY_SCORES
    from ..grouping.labelfree import DISCOVERY_SCORE

    di = sub.add_parser("discover", help="rank the attributes of a vocabulary by how spurious they look on the "
                        "training split (bias discovery)",
                        description="Score every attribute of a bias vocabulary: each training image gets the value "
                        "phrase it matches best zero-shot (averaged over the class names); values given to few "
                        "images are dropped; the score says how strongly those values go with the class. No bias "
                        "label is read. `train --bias-prompts auto` uses the top candidates above a threshold.")
    add_dataset_flags(di)
    add_backbone_flags(di)
    add_vocabulary_flag(di)
    di.add_argument("--top", type=count(1), default=10, help="how many candidates to list (default 10)")
    di.add_argument("--score", choices=DISCOVERY_SCORES, help=f"how candidates are ranked (default {DISCOVERY_SCORE})")
    di.add_argument("--json", action="store_true",
                    help='print [{"attribute", "values", "score", "scores", "shares", "dropped"}, ...], best first')
    add_common(di)
    di.set_defaults(func=cmd_discover)


def cmd_discover(args) -> None:
    from ..api import discover
    from ..data.registry import load_dataset
    from ..features.cache import check_cache_dir
    from ..grouping.discovery import load_vocabulary
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
