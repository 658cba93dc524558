"""Flags that several commands share, and the RunSettings that `train`'s flags and --config make.

Only argparse and the standard library load here; what a flag's help needs is imported when
the parser is built, and what a command needs when it runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

# RunSettings fields that are mappings: merged from flags below, not set by one flag of their name
_MERGED_SETTINGS = ("groups", "dataset_options", "hyperparameters")


def count(minimum: int):
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


def workers(text: str) -> int:
    """argparse type of --workers: an integer from 0 to the CPUs this process may use (each is a process)."""
    from ..limits import check_workers

    value = count(0)(text)
    try:
        return check_workers(value)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--workers ")) from None


def progress_log(args):
    """Where a command's progress lines go: the `groupcoop` logger (stderr, `command_environment`), or
    nowhere with --quiet."""
    from ..io.progress import info

    return (lambda s: None) if getattr(args, "quiet", False) else info


@contextmanager
def command_environment(args) -> Iterator[None]:
    """What the shared flags set while a command runs, restored after: progress lines on stderr unless
    --quiet, downloads off with --offline, at most --threads threads."""
    from ..backbones.fetch import offline_mode
    from ..io.progress import shown

    with shown(not getattr(args, "quiet", False)), offline_mode(getattr(args, "offline", False)), \
            limited_threads(getattr(args, "threads", None)):
        yield


# what BLAS and OpenMP libraries read when they load (here, if not loaded yet, and in worker processes)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


@contextmanager
def limited_threads(threads: int | None) -> Iterator[None]:
    """At most `threads` compute threads while the block runs: torch's, the thread pools of the BLAS and
    OpenMP libraries already loaded (threadpoolctl, which scikit-learn depends on), and THREAD_VARIABLES
    for the ones not loaded yet and for worker processes."""
    if threads is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    saved_env, saved_torch = {name: os.environ.get(name) for name in THREAD_VARIABLES}, torch.get_num_threads()
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(saved_torch)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- settings from flags and config files ---------------------------------------------------------

def grouping_flags() -> tuple[str, ...]:
    """The GroupingOptions knobs that each have a flag of their own name (`source` is --groups/--labeler,
    `file` comes with it: --groups file:PATH)."""
    from ..grouping.options import GroupingOptions

    return tuple(name for name in GroupingOptions.model_fields if name not in ("source", "file"))


def run_settings_from_args(args):
    """--config values overridden by flags, validated into one RunSettings."""
    from ..choices import DEFAULT_METHOD
    from ..runs.paths import read_settings_file
    from ..runs.settings import RunSettings, key_values, make_settings

    # a config file's relative paths are read from its folder, the flags' from the current one
    config = read_settings_file(args.config, "config file") if getattr(args, "config", None) else {}
    for key in RunSettings.model_fields:
        value = getattr(args, key, None) if key not in _MERGED_SETTINGS else None
        if value is not None:
            config[key] = value
    groups = config.get("groups")
    groups = {"source": groups} if isinstance(groups, str) else dict(groups or {}) if isinstance(groups, dict) else groups
    for flag, key in (("groups", "source"), *((k, k) for k in grouping_flags())):
        value = getattr(args, flag, None)
        if value is not None:
            if not isinstance(groups, dict):
                groups = {}
            groups[key] = value
    if groups is not None:
        config["groups"] = groups
    for key, flag, attr in (("dataset_options", "--option", "option"), ("hyperparameters", "--set", "set")):
        given = key_values(getattr(args, attr, None), flag)
        if key == "dataset_options":
            given.update(split_fractions(args))
        if given:
            base = config.get(key) or {}
            if not isinstance(base, dict):
                raise UserError(f"`{key}:` in --config must be a mapping of keys to values")
            config[key] = {**base, **given}
    if config.get("method") is None:
        config["method"] = DEFAULT_METHOD
    return make_settings(config, "--config/flags" if getattr(args, "config", None) else "flags")


def dataset_from_args(args):
    """The dataset `add_dataset_flags`' flags name, loaded and checked (nothing read beyond its metadata)."""
    from ..data.registry import load_dataset
    from ..runs.settings import key_values

    options = {**key_values(args.option, "--option"), **split_fractions(args)}
    if ("val_fraction" in options or "test_fraction" in options) and "split_seed" not in options:
        options["split_seed"] = getattr(args, "seed", 0)  # the command's --seed, as a run's
    return load_dataset(args.dataset, args.root, allow_symlinks_outside=args.allow_symlinks_outside, **options)


def split_fractions(args) -> dict:
    """--val-fraction / --test-fraction as dataset options (a CSV without a split column is split at random)."""
    return {key: getattr(args, key) for key in ("val_fraction", "test_fraction") if getattr(args, key, None) is not None}


def warn_tiny(args, backbone: str | None, dataset) -> None:
    """One warning line on stderr, with the progress lines (none with --quiet), when the bundled toy model
    meets data outside the synthetic world: not an error. Called once the checks have passed."""
    from ..backbones.names import TINY
    from ..data.world.render import SyntheticImages

    if backbone == TINY and not isinstance(dataset.images, SyntheticImages):
        progress_log(args)(f"groupcoop: warning: {TINY} is a toy CLIP that knows only the built-in synthetic world "
                           f"(the synth-* datasets), so its features say little about {dataset.name}'s images; for "
                           "real images use a real CLIP, e.g. --backbone ViT-B-16 --pretrained openai")


def check_grid_file(args, dataset) -> Path | None:
    """`--grid FILE` (a PNG of example images) checked once the dataset is known: never one of its
    images or files (`folders.check_not_an_input`), an existing file only with --overwrite."""
    if not args.grid:
        return None
    from ..io.folders import check_not_an_input, files_named_like
    from ..io.write import check_output_file

    grid = Path(args.grid).expanduser()
    check_not_an_input(grid, [("the dataset folder", args.root), *files_named_like(grid, dataset.images)], "--grid")
    grid = check_output_file(grid, "--grid", overwrite=args.overwrite)
    if grid.suffix.lower() != ".png":
        raise UserError(f"--grid {grid}: the grid is a PNG image; give a file name ending in .png")
    return grid


def print_columns(rows: list[tuple[str, ...]]) -> None:
    """Rows of text cells, every column but the last padded to its widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


# --- flag groups ----------------------------------------------------------------------------------

def add_backbone_flags(p, required: bool = True) -> None:
    from ..backbones.families import backbone_help

    p.add_argument("--backbone", required=required, help=backbone_help())
    p.add_argument("--pretrained", help="open_clip weights: a pretrained tag (openai, ...), a checkpoint file "
                   "(.safetensors preferred), or 'random'; groupcoop-tiny uses its bundled weights by default "
                   "(transformers: backbones take none)")
    p.add_argument("--device", default=None, help="torch device: cpu (default), cuda, cuda:N or mps (extract under torchrun: cuda = cuda:LOCAL_RANK)")
    add_offline_flag(p)


def add_offline_flag(p) -> None:
    p.add_argument("--offline", action="store_true",
                   help="never download model weights: a backbone not on this machine fails at once (what "
                   "HF_HUB_OFFLINE=1 does too; without either, a line says when weights are being fetched)")


def add_threads_flag(p) -> None:
    p.add_argument("--threads", type=count(1), default=None, metavar="N",
                   help="at most N compute threads (torch, BLAS; a sweep shares them among its --jobs), for a "
                   "shared machine (default: the libraries' own, about one per core)")


def add_log_flag(p) -> None:
    from ..runs.tracking import TRACKERS

    p.add_argument("--log", action="append", choices=list(TRACKERS), metavar="TRACKER",
                   help=f"also send each run's epoch rows (as in its epochs.csv), settings and test numbers to "
                   f"{', '.join(TRACKERS)} (repeatable; needs that package installed; tensorboard's files go into "
                   "the run folder's tensorboard/)")


def add_common(p) -> None:
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache folder (default $GROUPCOOP_CACHE or ~/.cache/groupcoop)")
    p.add_argument("--workers", type=workers, default=None,
                   help="image-decoding worker processes (default: cores - 1, at most 4; 0 decodes in-process)")
    add_threads_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines (phases, epochs, downloads), warnings or bars")


def add_dataset_flags(p, required: bool = True) -> None:
    p.add_argument("--dataset", required=required, help="dataset name (`groupcoop datasets` lists them)")
    p.add_argument("--root", help="the dataset's folder (not needed for the synthetic ones)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="dataset option, repeatable (e.g. target=Blond_Hair, biases=Male, csv_path=meta.csv)")
    p.add_argument("--allow-symlinks-outside", action="store_true",
                   help="read image files whose symlinks lead outside --root (refused by default)")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help="csv without a split column: this share of the rows is val, drawn at random (stratified by "
                   "class and group; seeded by --seed, or 0 where the command has none, or --option split_seed=N); "
                   "with --test-fraction, train gets the rest")
    p.add_argument("--test-fraction", type=float, metavar="F", help="csv without a split column: the test share")


def add_grouping_flags(p) -> None:
    """One flag per `grouping_flags()` name, in the schema's order."""
    p.add_argument("--bias-prompts", help="attribute value phrases for zeroshot/pseudo groups: "
                   "'on land,on water' (';' between attributes), or 'auto': discovered on the training split "
                   "(`groupcoop discover`)")
    p.add_argument("--clusters", type=count(2), help="clusters per class for kmeans groups (default: attribute size)")
    from ..grouping.pseudo import DEFAULT_PSEUDO_VARIANT, PSEUDO_VARIANTS

    p.add_argument("--variant", choices=list(PSEUDO_VARIANTS),
                   help=f"pseudo-labeler variant (default {DEFAULT_PSEUDO_VARIANT}; see docs/defaults.md)")
    add_vocabulary_flag(p, "with --bias-prompts auto: ")
    from ..choices import DISCOVERY_SCORES
    from ..grouping.labelfree import DISCOVER_TOP, DISCOVERY_SCORE

    p.add_argument("--discover-top", type=count(1), help="with --bias-prompts auto: the most discovered attributes "
                   f"the labeler uses (default {DISCOVER_TOP})")
    p.add_argument("--discover-score", choices=DISCOVERY_SCORES,
                   help=f"with --bias-prompts auto: how discovery ranks attributes (default {DISCOVERY_SCORE})")
    p.add_argument("--name-attribute", metavar="NAME=A,B",
                   help="with --bias-prompts auto: names for the attribute found in the image features ('unnamed 1') "
                   "and its values a and b, as its example grid in report.html shows them, e.g. mark=plain,marked")


def add_vocabulary_flag(p, prefix: str = "") -> None:
    p.add_argument("--vocabulary", metavar="FILE", help=f"{prefix}bias vocabulary YAML ({{attributes: {{NAME: [value "
                   "phrase, ...]}}, optionally extends: clip|world); default: the shipped one (world for synth-* "
                   "datasets, clip otherwise)")
