"""Output folders: what `--overwrite` may replace, atomic folders, one writer per folder.

Every output folder groupcoop writes holds a manifest (`.groupcoop.json`) listing the files it
wrote. `--overwrite` may replace a folder only when the manifest accounts for everything in it;
a folder holding anything else (a user's notes, their data) is never deleted, nor is the current
directory or one of its parents. `atomic_folder` writes a folder under a temporary name and
renames it into place; `output_lock` keeps two runs from writing one folder at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from .read import mode_in_words, read_text
from .write import atomic_text, make_parents, remove_empty, share_per_umask

MANIFEST = ".groupcoop.json"


def write_manifest(folder: Path, kind: str, nested: bool = True) -> None:
    """Record every file under `folder` as groupcoop's own (written last, inside the folder). With
    `nested=False` only the folder's own files (a sweep folder: each run folder carries its own)."""
    folder = Path(folder)
    if nested:
        found = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    else:
        found = (p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    files = sorted(found)
    atomic_text(folder / MANIFEST, json.dumps({"kind": kind, "files": files}, indent=1) + "\n")


def read_manifest(folder: Path) -> dict | None:
    """A folder's manifest, or None when it has none (or anything but a readable JSON file there)."""
    try:
        data = json.loads(read_text(Path(folder) / MANIFEST, "manifest"))
    except (UserError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


_OUR_LEFTOVERS = re.compile(r"^\..+\.(tmp|old)-[^/]+$|^\..+\.lock$")  # temp folders and locks we create


def _unaccounted(folder: Path) -> list[str]:
    """Files under `folder` that no groupcoop manifest (its own, or a subfolder's) lists."""
    manifest = read_manifest(folder)
    listed = set(manifest["files"]) if manifest else set()
    stray = []
    for entry in folder.iterdir():
        if entry.name == MANIFEST or _OUR_LEFTOVERS.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if entry.name in listed or any(f.startswith(entry.name + "/") for f in listed):
                inner = {f.split("/", 1)[1] for f in listed if f.startswith(entry.name + "/")}
                stray += [f"{entry.name}/{p.relative_to(entry).as_posix()}" for p in entry.rglob("*")
                          if (p.is_file() or p.is_symlink()) and p.relative_to(entry).as_posix() not in inner]
            else:
                stray += [f"{entry.name}/{f}" for f in _unaccounted(entry)]
        elif entry.name not in listed:
            stray.append(entry.name)
    return stray


def groupcoop_kind(folder: Path) -> str | None:
    """'run', 'demo', 'sweep', 'groups', ... when `folder` holds only what groupcoop wrote there, else None.

    A file counts as groupcoop's when a manifest lists it: the folder's own, or that of a
    subfolder (a sweep's run folders carry their own).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is not None:
        return manifest.get("kind", "run") if not _unaccounted(folder) else None
    return None


def _is_cwd_or_parent(path: Path) -> bool:
    here = Path.cwd().resolve()
    target = path.resolve()
    return target == here or target in here.parents


def check_replaceable(out: Path, overwrite: bool, what: str = "run") -> None:
    """Refuse an `out` that exists and is not ours to replace.

    An empty folder is fine. A folder holding a groupcoop output is replaced only with
    `overwrite`; anything else (a file, a device, a FIFO, a link) is never replaced.
    """
    out = Path(out)
    if not os.path.lexists(out):
        return
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"--out {out} exists and is {mode_in_words(os.lstat(out).st_mode)}, not a folder; choose a new folder")
    if _is_cwd_or_parent(out):  # even when empty: the output replaces the folder as a whole
        raise UserError(f"--out {out} is the current folder or one of its parents; choose a new folder")
    if not any(out.iterdir()):
        return
    kind = groupcoop_kind(out)
    if kind is None:
        raise UserError(f"--out {out} is not empty and holds files groupcoop did not write; "
                        "choose a new folder (--overwrite only replaces groupcoop's own outputs)")
    if not overwrite:
        raise UserError(f"--out {out} already holds a different groupcoop {kind}; pass --overwrite to replace it or choose another --out")


def check_inside(path: Path, root: Path, what: str, fix: str) -> Path:
    """`path` resolved (links followed, `..` removed), refused with one line unless it lies inside
    `root` (resolved too): an output built from user text never lands outside its folder."""
    real, base = Path(path).resolve(), Path(root).resolve()
    if not real.is_relative_to(base):
        raise UserError(f"{what} {path} resolves to {real}, outside {base}; nothing was written; {fix}")
    return real


def check_outside(inner: Path, inner_flag: str, outer: Path, outer_flag: str) -> None:
    """Refuse an `inner` folder (the cache) that lies in `outer` (the output folder, replaced as a whole)."""
    inner, outer = Path(inner).expanduser().absolute(), Path(outer).expanduser().absolute()
    if inner == outer or outer in inner.parents:
        raise UserError(f"{inner_flag} {inner} is inside {outer_flag} {outer}, which is replaced as a whole when the "
                        f"run is written; choose a {inner_flag} outside it")


def _check_folder_target(out: Path) -> None:
    """An output folder's path holds nothing, or a real folder (never a file, device, FIFO or link)."""
    if os.path.lexists(out) and (out.is_symlink() or not out.is_dir()):
        raise UserError(f"--out {out} is {mode_in_words(os.lstat(out).st_mode)}, not a folder; nothing was replaced; "
                        "choose a new folder")


@contextmanager
def atomic_folder(out: Path, kind: str = "run") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it gets a manifest and replaces `out`.

    On error the temporary folder vanishes, `out` is untouched and parent folders created for
    it are removed. A replaced `out` was checked with `check_replaceable` by the caller; here it
    is checked once more just before removal.
    """
    out = Path(out)
    _check_folder_target(out)
    created = make_parents(out.parent)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    share_per_umask(tmp, folder=True)
    try:
        yield tmp
        write_manifest(tmp, kind)
        for path in tmp.rglob("*"):  # libraries create some files private (0600); share them like the rest
            share_per_umask(path, folder=path.is_dir())
        _check_folder_target(out)
        if out.exists():
            if any(out.iterdir()) and groupcoop_kind(out) is None:
                raise UserError(f"{out} changed while groupcoop was working and now holds other files; "
                                f"nothing was replaced, the result is lost; choose another --out")
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.rename(out, old / "x")
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp)
        remove_empty(created)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `.<name>.lock` next to `out` while writing it; a second writer is refused.

    A lock left by a process that died on this host is taken over.
    """
    out = Path(out).expanduser().absolute()
    lock = out.parent / f".{out.name}.lock"
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    created = make_parents(lock.parent)  # removed again if left empty
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                holder = json.loads(read_text(lock, "lock file"))
            except (UserError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise UserError(f"another groupcoop process (pid {holder.get('pid', '?')} on {holder.get('host', '?')}) "
                            f"is writing {out}; wait for it to finish or choose another --out") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        remove_empty(created)  # a refused or failed run leaves no empty parents behind
