"""Output folders: what `--overwrite` may replace, atomic folders, one writer per folder.

One rule for every output (`check_replaceable`, `check_not_an_input`, `check_cache_folder`): an
output is never one of the command's inputs, never holds one and never lies inside an input folder
groupcoop wrote; an existing folder is replaced only when it holds groupcoop's own output of the
same kind (its manifest `.groupcoop.json` lists every file in it) and `--overwrite` is given; a
folder holding anything else, the current directory and its parents never are. `atomic_folder`
writes a folder under a temporary name and renames it into place; `output_lock` keeps two runs
from writing one folder at once and clears the temporary folders of a writer that was killed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
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


KINDS = {"run": "run", "groups": "groups output", "export": "export", "demo": "demo", "sweep": "sweep"}


def _a(kind: str, before: str = "") -> str:
    """'a run', 'an export', 'a different groupcoop run' (`before` goes between the article and the noun)."""
    words = f"{before} {KINDS.get(kind, kind)}".strip()
    return ("an " if words[0] in "aeiou" else "a ") + words


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_not_an_input(out: Path, inputs: Iterable[tuple[str, Path | str | None]], flag: str = "--out") -> None:
    """Refuse an output that is one of the command's `inputs` ((what, path) pairs), holds one, or lies
    inside an input folder groupcoop wrote (the run or export it reads): writing it would replace or
    change what the command reads. Inputs that do not exist are passed over."""
    target = _real(out)
    for what, given in inputs:
        if given is None or not os.path.lexists(Path(given).expanduser()):
            continue
        source = _real(given)
        if source == target:
            relation = "is"
        elif source.is_relative_to(target):
            relation = "holds"
        elif target.is_relative_to(source) and read_manifest(source) is not None:
            relation = "lies inside"
        else:
            continue
        raise UserError(f"{flag} {out} {relation} {what} {given}, which this command reads; groupcoop never "
                        f"replaces or writes into its own inputs, with or without --overwrite; choose another {flag}")


def files_named_like(out: Path, images, what: str = "the image") -> list[tuple[str, Path]]:
    """The (what, path) inputs among `images` (a `PathImages`; others hold no files) named like `out`:
    the only images `out` could be, found without resolving every path."""
    root, name = getattr(images, "root", None), Path(out).name
    return [(what, Path(root) / p) for p in getattr(images, "paths", ()) if Path(p).name == name] if root else []


def check_replaceable(out: Path, overwrite: bool, kind: str, inputs: Iterable[tuple[str, Path | str | None]] = (),
                      flag: str = "--out", overwrite_flag: str = "--overwrite") -> None:
    """The one rule for an output folder `out` of `kind` ('run', 'groups', 'export', 'demo', 'sweep').

    Never one of the command's `inputs` (`check_not_an_input`). Nothing there, or an empty folder:
    fine. A folder holding only groupcoop's own output of the same kind: replaced only with
    `overwrite`. Anything else (another kind, files groupcoop did not write, a file, a device, a
    FIFO, a link, the current folder or a parent) is never replaced.
    """
    out = Path(out)
    check_not_an_input(out, inputs, flag)
    if not os.path.lexists(out):
        return
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"{flag} {out} exists and is {mode_in_words(os.lstat(out).st_mode)}, not a folder; "
                        "choose a new folder")
    if _is_cwd_or_parent(out):  # even when empty: the output replaces the folder as a whole
        raise UserError(f"{flag} {out} is the current folder or one of its parents; choose a new folder")
    if not any(out.iterdir()):
        return
    found = groupcoop_kind(out)
    if found is None:
        raise UserError(f"{flag} {out} is not empty and holds files groupcoop did not write; choose a new folder "
                        "(groupcoop only ever replaces its own outputs)")
    if found != kind:
        raise UserError(f"{flag} {out} holds {_a(found, 'groupcoop')}, not {_a(kind)}; groupcoop never replaces one "
                        f"with the other, with or without --overwrite; choose another {flag}")
    if not overwrite:
        raise UserError(f"{flag} {out} already holds {_a(kind, 'different groupcoop')}; pass {overwrite_flag} to "
                        f"replace it, or choose another {flag}")


def check_cache_folder(cache_dir: Path, out: Path | None = None) -> None:
    """The feature cache lies outside `out` (replaced as a whole, or checked file by file) and outside
    every folder groupcoop wrote (its manifest lists its files): shards there would be lost, or make
    that folder one --overwrite refuses and a sweep cannot resume."""
    real = _real(cache_dir)
    if out is not None and real.is_relative_to(_real(out)):
        raise UserError(f"--cache-dir {cache_dir} is inside --out {out}, which is groupcoop's output folder; "
                        "choose a --cache-dir outside it")
    owner = next((p for p in (real, *real.parents) if (p / MANIFEST).is_file()), None)
    if owner is not None:
        raise UserError(f"--cache-dir {cache_dir} lies inside {owner}, a folder groupcoop wrote as an output; "
                        "choose a --cache-dir outside it")


def check_inside(path: Path, root: Path, what: str, fix: str) -> Path:
    """`path` resolved (links followed, `..` removed), refused with one line unless it lies inside
    `root` (resolved too): an output built from user text never lands outside its folder."""
    real, base = Path(path).resolve(), Path(root).resolve()
    if not real.is_relative_to(base):
        raise UserError(f"{what} {path} resolves to {real}, outside {base}; nothing was written; {fix}")
    return real


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
            if any(out.iterdir()) and groupcoop_kind(out) != kind:
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


def temporaries(out: Path) -> list[Path]:
    """The temporary folders `atomic_folder` makes beside `out` (`.<name>.tmp-` or `.<name>.old-` plus
    tempfile's 8 random characters); nothing else, and never a link."""
    out = Path(out)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-[a-z0-9_]{{8}}")
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return []
    return [Path(e.path) for e in entries if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]


def _finished_output(tmp: Path, old: bool) -> bool:
    """Whether a temporary folder holds a whole groupcoop output (`.tmp-`), or only the output it
    was replacing (`.old-`, which holds it as `x`)."""
    if old:
        return [p.name for p in tmp.iterdir()] == ["x"] and groupcoop_kind(tmp / "x") is not None
    return groupcoop_kind(tmp) is not None


def _remove_leftovers(out: Path, writer_died: bool) -> None:
    """Remove what a killed writer of `out` left: its temporary folders, all of them when the lock
    taken over was that writer's, else only those holding a whole groupcoop output."""
    for tmp in temporaries(out):
        if writer_died or _finished_output(tmp, old=tmp.name.startswith(f".{out.name}.old-")):
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `.<name>.lock` next to `out` while writing it; a second writer is refused.

    A lock left by a process that died on this host is taken over, and the temporary folders of
    `out` that process left are removed (`_remove_leftovers`).
    """
    out = Path(out).expanduser().absolute()
    lock = out.parent / f".{out.name}.lock"
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    created = make_parents(lock.parent)  # removed again if left empty
    writer_died = False
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
                writer_died = True
                continue
            raise UserError(f"another groupcoop process (pid {holder.get('pid', '?')} on {holder.get('host', '?')}) "
                            f"is writing {out}; wait for it to finish or choose another --out") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        _remove_leftovers(out, writer_died)
        yield
    finally:
        lock.unlink(missing_ok=True)
        remove_empty(created)  # a refused or failed run leaves no empty parents behind
