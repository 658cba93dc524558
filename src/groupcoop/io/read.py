"""Reading a user's files: only regular files, never a hang on a FIFO, one error line for anything wrong.

`open_regular` opens without blocking and checks what was opened (no window between a check and
the open); `read_text` and `read_yaml_mapping` build on it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError


def mode_in_words(mode: int) -> str:
    """What a file's mode says it is, in words ("a FIFO (named pipe)", ...)."""
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def not_regular(path: Path | str) -> str | None:
    """What is at `path` when it exists and is not a regular file ("a FIFO (named pipe)", ...), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a dangling symbolic link" if os.path.islink(path) else None
    return None if stat.S_ISREG(mode) else mode_in_words(mode)


def open_regular(path: Path | str, what: str = "file", fix: str = "give a regular file",
                 name: Path | str | None = None) -> BinaryIO:
    """`path` opened for reading in binary, or one UserError line (naming it as `name`, default
    `path`) when it is missing, unreadable or anything but a regular file.

    Opening with O_NONBLOCK returns at once even for a FIFO with no writer, and fstat on the open
    descriptor says what was opened (no window between a check and the open).
    """
    shown = path if name is None else name
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UserError(f"{what} {shown} not found; {fix}") from None
    except OSError as err:
        if err.errno == errno.ENXIO:  # opening a socket file
            raise UserError(f"{what} {shown} is a socket, not a regular file; {fix}") from None
        raise UserError(f"cannot read {what} {shown}: {err.strerror or err}; {fix}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UserError(f"{what} {shown} is {mode_in_words(mode)}, not a regular file; {fix}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_text(path: Path | str, what: str = "file", fix: str = "give a regular UTF-8 text file") -> str:
    """A user's text file (UTF-8), read with `open_regular`'s checks."""
    with open_regular(path, what, fix) as fh:
        data = fh.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {err.start}); {fix}") from None


def read_if_present(path: Path | str, what: str = "file") -> str | None:
    """Like `read_text`, but None when nothing is at `path`; anything else there must be a regular file."""
    if not os.path.lexists(path):
        return None
    return read_text(path, what)


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file holding a mapping, or one UserError line saying what is wrong with it."""
    import yaml

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a YAML file")
    if not os.path.lexists(p):
        raise UserError(f"{what} not found: {p}")
    text = read_text(p, what, "give a YAML file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{what} {p} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {p} must hold a mapping of keys to values, not a {type(data).__name__}")
    if not all(isinstance(k, str) for k in data):
        raise UserError(f"{what} {p}: every key must be text")
    return data
