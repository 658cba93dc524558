"""The `GROUPCOOP_*` environment variables: each one named, parsed and checked here, once.

`check_environment` runs before every command, so a bad value (or a misspelt name) is one
error line and exit status 2 before any work, not an internal error halfway through. The rest
of the package reads the values through `value`, which applies the same parser.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, close_matches, quoted

PREFIX = "GROUPCOOP_"


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError("is not a folder; point it at a folder (it is created if missing)")
    return path


def _pixels(text: str) -> int | None:
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ValueError("is not a pixel count; give a whole number >= 0 (0: no limit)")
    return limit or None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError("is not a number of seconds > 0")
    return seconds


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(text: str) -> bool:
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ValueError(f"is not a yes/no value; use {' or '.join(_TRUE[:1] + _FALSE[:1])}")


@dataclass(frozen=True)
class Variable:
    parse: Callable[[str], object]
    meaning: str


VARIABLES = {
    "GROUPCOOP_CACHE": Variable(_folder, "the feature cache folder (default ~/.cache/groupcoop)"),
    "GROUPCOOP_MAX_IMAGE_PIXELS": Variable(_pixels, "the most pixels an image may have (default 89478485, as "
                                         "Pillow's decompression-bomb limit)"),
    "GROUPCOOP_DIST_TIMEOUT": Variable(_seconds, "seconds torchrun ranks wait for each other (default 7200)"),
    "GROUPCOOP_DEBUG": Variable(_flag, "1: show tracebacks of internal errors"),
    "GROUPCOOP_PIN_ALL": Variable(_flag, "1: the test suite checks the pinned metrics of every built-in task"),
}


def value(name: str, environ: Mapping[str, str] | None = None):
    """The parsed value of a variable, None when it is unset or empty; a bad value is a UserError."""
    text = (os.environ if environ is None else environ).get(name, "")
    if not text.strip():
        return None
    try:
        return VARIABLES[name].parse(text)
    except ValueError as err:
        raise UserError(f"${name}={quoted(text)} {err} ({VARIABLES[name].meaning}); fix or unset it") from None


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a misspelt GROUPCOOP_* name or a bad value, naming the variable."""
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        if not name.startswith(PREFIX):
            continue
        if name not in VARIABLES:
            raise UserError(f"${name} is not a groupcoop variable{close_matches(name, VARIABLES)}; known: "
                            f"{', '.join(VARIABLES)}; rename or unset it")
        value(name, environ)


def debug() -> bool:
    """Whether tracebacks were asked for (never raises: it is read while reporting an error)."""
    try:
        return bool(value("GROUPCOOP_DEBUG"))
    except UserError:
        return False


def cache_folder() -> Path:
    """$GROUPCOOP_CACHE, else ~/.cache/groupcoop (or $XDG_CACHE_HOME/groupcoop): where the feature cache
    (and the memo of model files' sha256) lives unless a command says otherwise."""
    if value("GROUPCOOP_CACHE") is not None:
        return value("GROUPCOOP_CACHE")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "groupcoop"
