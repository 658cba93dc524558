"""Progress lines: the `groupcoop` logger.

A library says what it is doing through `logging` and leaves the showing to the application: `LOG`
has a NullHandler, so nothing is printed unless `shown` puts a stderr handler on it (the CLI unless
--quiet, `fit(progress=True)`) or the caller configured logging at INFO. Every line goes through
`info`: one per phase of a run (load, extract, discover, label, train, evaluate), the epoch lines,
a sweep's lines, and the line before a download (backbones/fetch.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LOG = logging.getLogger("groupcoop")
LOG.addHandler(logging.NullHandler())
_libraries_muted = [False]  # inside `libraries_muted`


def info(line: str) -> None:
    """One progress line at INFO. While `libraries_muted` holds logging.disable (which would drop these
    too), the logger's own level decides and the record goes to its handlers directly."""
    if LOG.isEnabledFor(logging.INFO):
        LOG.info(line)
    elif _libraries_muted[0] and not LOG.disabled and LOG.getEffectiveLevel() <= logging.INFO:
        LOG.handle(LOG.makeRecord(LOG.name, logging.INFO, __file__, 0, line, None, None))


@contextmanager
def libraries_muted() -> Iterator[None]:
    """Log records at WARNING and below go nowhere while the block runs, groupcoop's own lines excepted:
    open_clip, timm, torch, the hub and transformers each have loggers and handlers of their own, and
    logging.disable is the one switch that reaches all of them."""
    saved = logging.root.manager.disable
    logging.disable(logging.WARNING)
    _libraries_muted[0] = True
    try:
        yield
    finally:
        _libraries_muted[0] = False
        logging.disable(saved)


class _Shown(logging.StreamHandler):
    """The handler `shown` puts on LOG (a class of its own, so that a nested `shown` adds no second one)."""


@contextmanager
def shown(on: bool = True) -> Iterator[None]:
    """While the block runs, groupcoop's INFO lines go to stderr as they are (`on` False, or shown
    already by an enclosing block, the CLI's: nothing changes)."""
    if not on or any(isinstance(h, _Shown) for h in LOG.handlers):
        yield
        return
    handler = _Shown(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = LOG.level, LOG.propagate
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False  # shown once, not a second time by a handler the caller put on the root logger
    try:
        yield
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(level)
        LOG.propagate = propagate


def eta(elapsed: float, done: int, total: int) -> str:
    """' ETA m:ss' for the rest of `total` steps at the pace of the `done` ones ('' when none is left)."""
    from tqdm import tqdm

    if done <= 0 or done >= total:
        return ""
    return f"  ETA {tqdm.format_interval(elapsed / done * (total - done))}"
