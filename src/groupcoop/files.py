"""Reading and writing a user's files: every output of every command goes through here.

Writing: files and folders appear whole or not at all (`atomic_write`, `atomic_folder`: written
under a temporary name, then renamed), only regular files and folders groupcoop made are ever
replaced (a device node, a FIFO, a socket or a symbolic link at an output path is refused, with
or without --overwrite), and two runs never write one folder at once. Folders an output needs
are created, and removed again when the output fails.

Every output folder groupcoop writes holds a manifest (`.groupcoop.json`) listing the files it
wrote. `--overwrite` may replace a folder only when the manifest accounts for everything in
it; a folder holding anything else (a user's notes, their data) is never deleted, nor is the
current directory or one of its parents. Outputs follow the umask, like any other tool's.

Reading: `open_regular` opens a user's file without blocking and refuses anything but a
regular file, so a FIFO or a device where a file should be is one error line, never a hang.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

MANIFEST = ".groupcoop.json"
# what a run folder from before manifests could hold
_LEGACY_RUN_FILES = {"config.yaml", "metrics.json", "report.txt", "prompts.json", "prompts.safetensors"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _share(path: Path | str, folder: bool = False) -> None:
    """Give a temporary file or folder (created 0600/0700) the permissions the umask asks for."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


# --- reading a user's file -------------------------------------------------------------------------

def _kind(mode: int) -> str:
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
    return None if stat.S_ISREG(mode) else _kind(mode)


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
        raise UserError(f"{what} {shown} is {_kind(mode)}, not a regular file; {fix}")
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


# --- writing: one writer for every output file ------------------------------------------------------

def check_replaceable_file(path: Path, flag: str = "output") -> None:
    """Refuse an output path that holds something other than a regular file (never followed as a link)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file among its parents is named later)
        return
    if not stat.S_ISREG(mode):
        raise UserError(f"{flag} {path} is {_kind(mode)}; groupcoop only writes regular files and never replaces "
                        f"{_kind(mode)}, with or without --overwrite; choose another path")


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created, deepest first."""
    created = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_empty(created)
        raise UserError(f"cannot create folder {folder}: {err.strerror or err}; choose another path") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
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
    created = _make_parents(target.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        _share(tmp)
        check_replaceable_file(target, flag)
        os.replace(tmp, target)
    except BaseException:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
        _remove_empty(created)
        raise


def atomic_text(target: Path, text: str, flag: str = "output") -> None:
    atomic_write(target, lambda p: Path(p).write_text(text, encoding="utf-8"), flag)


def write_manifest(folder: Path, kind: str) -> None:
    """Record every file under `folder` as groupcoop's own (written last, inside the folder)."""
    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
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
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
    if present and present <= _LEGACY_RUN_FILES and "metrics.json" in present:
        return "run"
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
        raise UserError(f"--out {out} exists and is {_kind(os.lstat(out).st_mode)}, not a folder; choose a new folder")
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


def _check_folder_target(out: Path) -> None:
    """An output folder's path holds nothing, or a real folder (never a file, device, FIFO or link)."""
    if os.path.lexists(out) and (out.is_symlink() or not out.is_dir()):
        raise UserError(f"--out {out} is {_kind(os.lstat(out).st_mode)}, not a folder; nothing was replaced; "
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
    created = _make_parents(out.parent)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    _share(tmp, folder=True)
    try:
        yield tmp
        write_manifest(tmp, kind)
        for path in tmp.rglob("*"):  # libraries create some files private (0600); share them like the rest
            _share(path, folder=path.is_dir())
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
        _remove_empty(created)
        raise


# --- one writer per output folder ------------------------------------------------------------------

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
    created = _make_parents(lock.parent)  # removed again if left empty
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
        _remove_empty(created)  # a refused or failed run leaves no empty parents behind


# --- reading what users hand us ------------------------------------------------------------

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
