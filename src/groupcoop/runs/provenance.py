"""Where a run was made: library versions, the git commit of the code, the host, start and wall time.

metrics.json keeps these under one key, `provenance`, because they change from one run of the
same settings to the next: comparisons of results (tests/pin_metrics.py, "same seed, same
metrics") leave that key out. Nothing here may fail a run: a value that cannot be found (no git,
not a checkout) is left out.
"""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

PROVENANCE = "provenance"  # the key of metrics.json that holds it
CSV_COLUMNS = ("groupcoop_version", "torch_version", "open_clip_version", "python_version", "git_commit", "host",
               "started_at", "wall_s")


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout groupcoop runs from (with `+dirty` when it has changes), or None
    when it is installed from a wheel, git is missing or anything else goes wrong."""
    here = Path(__file__).resolve().parents[1]  # the package folder
    try:
        top = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if top.returncode != 0:
            return None
        root, commit = top.stdout.split()[:2]
        if not (Path(root) / "src" / "groupcoop").resolve() == here:  # some other repository around a site-packages
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Versions, commit and host: the same for every run of this process."""
    from .. import __version__

    info = {"groupcoop_version": __version__, "torch_version": _version("torch"),
            "open_clip_version": _version("open_clip_torch"), "python_version": platform.python_version(),
            "git_commit": git_commit(), "host": socket.gethostname()}
    return {k: v for k, v in info.items() if v is not None}


def utc_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def provenance(started: float | None, wall_s: float | None) -> dict:
    """metrics.json's `provenance`: `environment()` plus the run's start (UTC, ISO 8601) and wall time."""
    timing = {"started_at": utc_iso(started)} if started is not None else {}
    if wall_s is not None:
        timing["wall_s"] = round(wall_s, 3)
    return {**environment(), **timing}
