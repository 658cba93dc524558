"""Reading a user's files: only regular files, never a hang on a FIFO, one error line for anything wrong.

`open_regular` opens without blocking and checks what was opened (no window between a check and
the open); `read_text` and `read_yaml_mapping` build on it. `parse_yaml` is the one YAML loader
(files, run folders' config.yaml, --set/--option values): bounded in size, depth and aliases, and
refusing a key given twice.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError, quoted
from ..limits import YAML_MAX_ALIASES, YAML_MAX_BYTES, YAML_MAX_DEPTH, YAML_MAX_VALUES


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


def read_text(path: Path | str, what: str = "file", fix: str = "give a regular UTF-8 text file",
              limit: int | None = None) -> str:
    """A user's text file (UTF-8), read with `open_regular`'s checks; more than `limit` bytes is refused
    after reading `limit` + 1 of them."""
    with open_regular(path, what, fix) as fh:
        data = fh.read(-1 if limit is None else limit + 1)
    if limit is not None and len(data) > limit:
        raise UserError(f"{what} {path} is larger than {limit // 1024} KB; {fix} of at most that size")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {err.start}); {fix}") from None


def read_if_present(path: Path | str, what: str = "file", limit: int | None = None) -> str | None:
    """Like `read_text`, but None when nothing is at `path`; anything else there must be a regular file."""
    if not os.path.lexists(path):
        return None
    return read_text(path, what, limit=limit)


class NotYaml(UserError):
    """Text that does not parse as YAML (`key_values` keeps such a value as text)."""


def parse_yaml(text: str, what: str):
    """`text` read as YAML (safe types only), or one UserError line: past YAML_MAX_BYTES, deeper than
    YAML_MAX_DEPTH, more than YAML_MAX_ALIASES aliases or YAML_MAX_VALUES values once they are
    expanded (a 1 KB alias bomb is a billion values to whatever walks it), or a key given twice."""
    import yaml

    if len(text) > YAML_MAX_BYTES:
        raise UserError(f"{what} is larger than {YAML_MAX_BYTES // 1024} KB; give a smaller one")
    try:
        loader = _bounded_loader(yaml)(text)  # its reader already refuses unprintable characters
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as err:
        raise UserError(f"{what} {err}") from None
    except yaml.YAMLError as err:
        raise NotYaml(f"{what} is not valid YAML: {str(err).splitlines()[0]}") from None


class _Refused(Exception):
    """What `parse_yaml` refuses beyond syntax: a bound exceeded, a key given twice (message: what, and the fix)."""


def _bounded_loader(yaml):
    """yaml.SafeLoader, counting depth and aliases as it composes, the values its node graph
    expands to before it constructs anything, and refusing a mapping key given twice.
    (Pure Python: libyaml's loader composes in C, where nothing can be counted.)"""
    from yaml.nodes import MappingNode, SequenceNode

    class Loader(yaml.SafeLoader):
        depth = aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > YAML_MAX_ALIASES:
                    raise _Refused(f"holds more than {YAML_MAX_ALIASES} aliases (*name); write the values out")
                return super().compose_node(parent, index)
            self.depth += 1
            try:
                if self.depth > YAML_MAX_DEPTH:
                    raise _Refused(f"nests deeper than {YAML_MAX_DEPTH} levels; flatten it")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_document(self, node):
            seen: dict[int, tuple[int, int]] = {}  # node id -> (values, height): each node walked once

            def walk(n, depth: int) -> int:
                if depth > YAML_MAX_DEPTH:
                    raise _Refused(f"nests deeper than {YAML_MAX_DEPTH} levels once its aliases are followed")
                if id(n) not in seen:
                    inner = [c for pair in n.value for c in pair] if isinstance(n, MappingNode) else \
                        n.value if isinstance(n, SequenceNode) else []
                    sizes = [(walk(c, depth + 1), seen[id(c)][1]) for c in inner]
                    seen[id(n)] = (1 + sum(v for v, _ in sizes), 1 + max((h for _, h in sizes), default=0))
                values, height = seen[id(n)]
                if depth + height - 1 > YAML_MAX_DEPTH:
                    raise _Refused(f"nests deeper than {YAML_MAX_DEPTH} levels once its aliases are followed")
                if values > YAML_MAX_VALUES:
                    raise _Refused(f"expands to more than {YAML_MAX_VALUES} values once its aliases (*name) "
                                    "are followed; write the values out")
                return values

            walk(node, 1)
            return super().construct_document(node)

        def construct_mapping(self, node, deep=False):
            if isinstance(node, MappingNode):
                lines: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # `<<: *base` merges a mapping: its keys may be given again after it
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        if key in lines:
                            raise _Refused(f"gives the key {quoted(key)} twice (lines {lines[key]} and {line}); "
                                            "keep one")
                        lines[key] = line
                    except TypeError:  # an unhashable key: the constructor says so
                        pass
            return super().construct_mapping(node, deep)

    return Loader


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file holding a mapping, or one UserError line saying what is wrong with it."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a YAML file")
    if not os.path.lexists(p):
        raise UserError(f"{what} not found: {p}")
    data = parse_yaml(read_text(p, what, "give a YAML file", limit=YAML_MAX_BYTES), f"{what} {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {p} must hold a mapping of keys to values, not a {type(data).__name__}")
    if not all(isinstance(k, str) for k in data):
        raise UserError(f"{what} {p}: every key must be text")
    return data
