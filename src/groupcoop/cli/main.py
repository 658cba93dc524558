"""The command line: a thin user of the Python API; bad input ends in one line on stderr and status 2.

Nothing heavy is imported until a command runs, so `--help` and `--version` answer at once.
Every command checks its settings and output paths before it reads an image. Each command's flags
and body live in the module of its group (run.py, listings.py, predict.py, sweep.py); this module
assembles the parser and turns failures into one line.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import UserError
from . import listings, predict, run, sweep

EPILOG = "Docs: README.md. Bad input exits with status 2 and one line on stderr."

# in the order `groupcoop --help` lists the commands
COMMANDS = (run.add_demo, run.add_train, run.add_extract, run.add_evaluate, listings.add_datasets,
            run.add_groups, run.add_discover, listings.add_world, listings.add_backbones, predict.add_predict,
            predict.add_export, sweep.add_sweep, listings.add_methods)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, as for every other bad input
        self.exit(2, f"groupcoop: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="groupcoop", description="Group-robust prompt tuning of frozen CLIP models (GroupCoOp).",
                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"groupcoop {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
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
