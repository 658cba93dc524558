"""What reaches stdout and stderr besides a command's own lines.

Library noise: warnings from torch, transformers, sklearn or open_clip (Python warnings, and their
loggers below ERROR) stay off stderr while a command runs, in its worker processes too, unless
GROUPCOOP_DEBUG=1 or the user asked for warnings (-W, PYTHONWARNINGS).

Outputs that cannot be written are no bug: a full disk or quota (ENOSPC, EDQUOT) anywhere, and a
stdout that is closed or full, end in one line and status 2 (`output_failure`, used by main.py). A
reader that left (`| head -1`) ends the command silently with status 141, as Unix tools do
(`reader_left`). Whatever was being written is gone whole: every file and
folder is written under a temporary name and renamed (io/write.py, io/folders.py).
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

_FULL = (errno.ENOSPC, errno.EDQUOT)
_KEPT = "outputs are written whole or not at all, so nothing half-written is left"


class StdoutClosed(OSError):
    """stdout is gone (`>&-`): print() wrote nothing, so the command's results were not shown."""


@contextmanager
def quiet_libraries(debug: bool) -> Iterator[None]:
    """Library warnings and log records below ERROR go nowhere while the block runs (restored after)."""
    if debug or sys.warnoptions:  # GROUPCOOP_DEBUG=1, or -W / PYTHONWARNINGS given: show everything
        yield
        return
    from ..io.progress import libraries_muted

    # worker processes (sweep --jobs, decoding) start quiet too, through the environment they inherit
    with warnings.catch_warnings(), mock.patch.dict(os.environ, {"PYTHONWARNINGS": "ignore"}):
        warnings.simplefilter("ignore")
        with libraries_muted():  # open_clip, timm, huggingface_hub, transformers log warnings; ours still show
            yield


def flush_stdout() -> None:
    """Push out what the command printed; a closed stdout is an error too (its results were not shown)."""
    if sys.stdout is None:
        raise StdoutClosed(errno.EBADF, "stdout is closed")
    sys.stdout.flush()


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _full_disk(err: BaseException) -> int | None:
    """ENOSPC or EDQUOT, as an OSError or in the text of a library's own error (safetensors, torch)."""
    if isinstance(err, OSError):
        return err.errno if err.errno in _FULL else None
    text = str(err)
    return next((code for code in _FULL if os.strerror(code) in text), None)


def output_failure(err: BaseException) -> str | None:
    """The one line for an output that could not be written, or None when `err` is something else."""
    for e in _chain(err):
        if isinstance(e, StdoutClosed):
            return ("stdout is closed, so the results were not printed; files already written are kept; "
                    "run the command with stdout open (or redirected to a file)")
        code = _full_disk(e)
        if code is not None:
            what = "no space left on the device" if code == errno.ENOSPC else "the disk quota is exceeded"
            where = f" writing {e.filename}" if getattr(e, "filename", None) else " writing an output (or stdout)"
            return (f"{what}{where}; {_KEPT}; free some space, or write to another disk (--out, --cache-dir, "
                    "GROUPCOOP_CACHE), and run the command again")
    return None


def reader_left(err: BaseException) -> bool:
    """Whether `err` is stdout's reader having left (`groupcoop backbones | head -1`)."""
    return any(isinstance(e, BrokenPipeError) for e in _chain(err))


def silence_broken_stdout() -> None:
    """Point stdout at /dev/null when it cannot take what is still buffered, so that the interpreter's last
    flush at exit adds no second message (a stdout that works is left alone)."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
        return
    except (OSError, ValueError):
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a caller's stream): nothing to do at exit either
        pass
