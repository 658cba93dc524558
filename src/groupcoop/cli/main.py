"""The command line: a thin user of the Python API; bad input ends in one line on stderr and status 2.

Nothing heavy is imported until a command runs, so `--help` and `--version` answer at once.
Every command checks its settings and output paths before it reads an image. `COMMANDS` is the
table of commands (name, words, the functions that add its flags and run it); the flags and bodies
live in the module of each group (run.py, listings.py, predict.py, sweep.py). This module assembles
the parser and turns failures into one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NamedTuple

from .. import __version__
from ..errors import UserError
from . import listings, predict, run, sweep
from .args import command_environment
from .streams import flush_stdout, output_failure, quiet_libraries, reader_left, silence_broken_stdout

EPILOG = "Docs: README.md. Bad input exits with status 2 and one line on stderr."


class Command(NamedTuple):
    """A subcommand: its name, the function that adds its flags, the one that runs it, and its words."""

    name: str
    add_flags: Callable[[argparse.ArgumentParser], None] | None  # None: it takes no flags
    run: Callable[[argparse.Namespace], None]
    help: str  # its line in `groupcoop --help`
    description: str  # the opening of its own --help


# in the order `groupcoop --help` lists them
COMMANDS = (
    Command("demo", run.add_demo, run.cmd_demo,
            help="GroupCoOp against zero-shot, CoOp, coop_balanced and DFR on the built-in "
            "synthetic benchmark",
            description="Run zero-shot, CoOp, coop_balanced, DFR and GroupCoOp on a synthetic task with "
            "the bundled groupcoop-tiny CLIP (the learned-prompt runs in one fused pass); print a "
            "comparison table, a one-line conclusion and what each method needs; write "
            "OUT/summary.json and a report."),
    Command("train", run.add_train, run.cmd_train,
            help="train one method on one dataset and write a run folder",
            description="Train a method and write a run folder: config.yaml (the resolved "
            "configuration), metrics.json, head.safetensors, prompts.safetensors + prompts.json, "
            "report.txt. Flags override --config."),
    Command("extract", run.add_extract, run.cmd_extract,
            help="fill the feature cache of a dataset (all splits); runs under torchrun",
            description="Extract and cache the image features of every image of a dataset, then print "
            "where the cache is. Under `torchrun --nproc-per-node N [--nnodes M ...] -m groupcoop "
            "extract ...` each process fills its share of the shards (NCCL on GPUs, Gloo on CPU) and "
            "rank 0 checks them all; a killed run resumes where it stopped. `train` then finds the "
            "features in the cache."),
    Command("evaluate", run.add_evaluate, run.cmd_evaluate,
            help="evaluate a trained run's classifier on a dataset split",
            description="Load the classifier of a run folder and report per-group accuracy on a split."),
    Command("datasets", listings.add_datasets, listings.cmd_datasets,
            help="list dataset loaders, or check a dataset folder",
            description="Without arguments: list the loaders. `check NAME --root DIR`: validate a "
            "folder and print per-split, per-group counts; --grid FILE also draws images per group."),
    Command("groups", run.add_groups, run.cmd_groups,
            help="assign (pseudo-)groups and report their agreement with true groups",
            description="Label the training split's groups with a labeler; write OUT/groups.csv and "
            "OUT/quality.json (accuracy under best matching, NMI, ARI, per-group precision/recall)."),
    Command("discover", run.add_discover, run.cmd_discover,
            help="rank the attributes of a vocabulary by how spurious they look on the "
            "training split (bias discovery)",
            description="Score every attribute of a bias vocabulary: each training image gets the value "
            "phrase it matches best zero-shot (averaged over the class names); values given to few "
            "images are dropped; the score says how strongly those values go with the class. No bias "
            "label is read. `train --bias-prompts auto` uses the top candidates above a threshold."),
    Command("world", listings.add_world, listings.cmd_world,
            help="the synthetic world's card: attributes, caption rates, zero-shot accuracy",
            description="For each attribute of the built-in synthetic world: its values, how often "
            "pretraining captions name it, the bundled groupcoop-tiny's zero-shot accuracy and a linear probe's accuracy on "
            "held-out renders (deterministic)."),
    Command("backbones", None, listings.cmd_backbones,
            help="list the architectures and pretrained tags",
            description="List the open_clip architectures, their pretrained tags and the bundled model, "
            "and how to name a Hugging Face transformers checkpoint."),
    Command("predict", predict.add_predict, predict.cmd_predict,
            help="classify new images with a trained run",
            description="Classify image files (or the images a CSV lists) with a run's classifier; write "
            "a CSV: path, predicted class, predicted group (the best group prompt of that class), one "
            "probability column per class, and an error column for images that could not be read."),
    Command("export", predict.add_export, predict.cmd_export,
            help="write a run's classifier as a folder usable with plain open_clip "
            "(or transformers)",
            description="Write OUT/head.safetensors (normalised text features per class x group, logit "
            "scale and bias, class and group names, aggregate rule, the backbone's library, name and "
            "pretrained tag) and, when open_clip cannot fetch the backbone by name (the bundled "
            "groupcoop-tiny, a weights file, random weights), OUT/open_clip_config.json + "
            "OUT/open_clip_model.safetensors, which open_clip loads as `local-dir:OUT`. "
            "A transformers: backbone is written with save_pretrained (OUT/config.json, "
            "OUT/model.safetensors, tokenizer and image processor files), which AutoModel.from_pretrained "
            "loads. The head records the sha256 of every model file, checked when it is loaded. README shows how to use either without groupcoop. `groupcoop predict OUT` uses it too."),
    Command("sweep", sweep.add_sweep, sweep.cmd_sweep,
            help="run a grid of runs (datasets x backbones x methods x groups x seeds)",
            description="Run every combination of a grid (a YAML file and/or flags) as ordinary run "
            "folders under OUT/runs/; finished runs are skipped, so a killed sweep resumes. Writes "
            "OUT/runs.csv, OUT/table.md (mean ± std over seeds; a suite aggregate with bootstrap "
            "intervals when there are several datasets) and OUT/report.html."),
    Command("methods", listings.add_methods, listings.cmd_methods,
            help="list the methods and their hyper-parameters",
            description="The methods table: name, the labels each needs, its trainable parameter count "
            "and a summary; -v adds every hyper-parameter's default."),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, as for every other bad input
        self.exit(2, f"groupcoop: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="groupcoop", description="Group-robust prompt tuning of frozen CLIP models (GroupCoOp).",
                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"groupcoop {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for command in COMMANDS:
        parser_ = sub.add_parser(command.name, help=command.help, description=command.description)
        if command.add_flags is not None:
            command.add_flags(parser_)
        parser_.set_defaults(func=command.run)
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version: their text must reach stdout too
        if exit_.code == 0 and sys.stdout is not None:
            try:
                sys.stdout.flush()
            except OSError as err:
                return _failed(output_failure(err) or f"cannot write to stdout: {err}")
        raise
    try:
        check_environment()
        with quiet_libraries(debug()), command_environment(args):
            args.func(args)
        flush_stdout()
    except UserError as err:
        return _failed(str(err))
    except KeyboardInterrupt as err:  # a sweep says how many of its runs are kept
        print(f"groupcoop: interrupted{'; ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug or an unforeseen failure: one line, traceback on request
        if reader_left(err):  # `| head`: the reader has what it wanted; say nothing more, as Unix tools do
            silence_broken_stdout()
            return 141
        failure = output_failure(err)  # a full disk, a closed stdout: no bug, but still one line
        if failure is not None:
            return _failed(failure)
        if debug():
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"groupcoop: internal error: {type(err).__name__}: {first} (set GROUPCOOP_DEBUG=1 for the traceback "
              "and please report it)", file=sys.stderr)
        return 1
    return 0


def _failed(message: str) -> int:
    """One error line on stderr, status 2; a stdout that cannot take the rest is muted first."""
    silence_broken_stdout()
    print(f"groupcoop: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
