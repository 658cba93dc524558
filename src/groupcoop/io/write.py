"""Writing output files: one writer for every file groupcoop writes.

A file appears whole or not at all (`atomic_write`: a temporary sibling renamed onto the target),
only regular files are ever replaced (a device, FIFO, socket or link at an output path is refused),
and folders an output needs are created, and removed again when it fails. Outputs follow the umask.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .read import mode_in_words


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_per_umask(path: Path | str, folder: bool = False) -> None:
    """Give a temporary file or folder (created 0600/0700) the permissions the umask asks for."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def check_replaceable_file(path: Path, flag: str = "output") -> None:
    """Refuse an output path that holds something other than a regular file (never followed as a link)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file among its parents is named later)
        return
    if not stat.S_ISREG(mode):
        raise UserError(f"{flag} {path} is {mode_in_words(mode)}; groupcoop only writes regular files and never replaces "
                        f"{mode_in_words(mode)}, with or without --overwrite; choose another path")


def make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created, deepest first."""
    created = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        remove_empty(created)
        raise UserError(f"cannot create folder {folder}: {err.strerror or err}; choose another path") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; stops at the first that is not empty
        if not os.path.lexists(folder):
            continue
        try:
            folder.rmdir()
        except OSError:
            break


def atomic_write(target: Path, write: Callable[[str], None], flag: str = "output") -> None:
    """`write(tmp_path)` fills a temporary sibling, which is then renamed onto `target`.

    `target` must be absent or a regular file (checked before and again just before the rename).
    Missing parent folders are created, and removed again if the write fails.
    """
    target = Path(target)
    check_replaceable_file(target, flag)
    created = make_parents(target.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        share_per_umask(tmp)
        check_replaceable_file(target, flag)
        os.replace(tmp, target)
    except BaseException:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
        remove_empty(created)
        raise


def atomic_text(target: Path, text: str, flag: str = "output") -> None:
    atomic_write(target, lambda p: Path(p).write_text(text, encoding="utf-8"), flag)


def ensure_writable_dir(folder: Path, flag: str) -> Path:
    """Check that `folder` exists or can be created, and that we may write in it; create nothing."""
    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{flag} {folder}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: no permission to write in {probe}; choose a folder you can write to")
    try:  # permissions do not tell everything (read-only mounts, /proc): try it, leaving nothing behind
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UserError(f"{flag} {folder}: cannot write in {probe} ({err.strerror or err}); "
                        "choose a folder you can write to") from None
    return folder


def check_output_file(path: Path, flag: str, overwrite: bool = False) -> Path:
    """An output file path whose folder is writable, refusing to replace an existing file unless told to
    (and anything but a regular file always)."""
    path = Path(path).expanduser()
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    check_replaceable_file(path, flag)
    if os.path.lexists(path) and not overwrite:
        raise UserError(f"{flag} {path} already exists; choose another name or pass --overwrite")
    ensure_writable_dir(path.parent, flag)
    return path
