"""Writing without losing anything: files and folders appear whole or not at all, only
folders groupcoop made are ever replaced, and two runs never write one folder at once.

Every output folder groupcoop writes holds a manifest (`.groupcoop.json`) listing the files it
wrote. `--overwrite` may replace a folder only when the manifest accounts for everything in
it; a folder holding anything else (a user's notes, their data) is never deleted, nor is the
current directory or one of its parents. Outputs follow the umask, like any other tool's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


def atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` fills a temporary sibling, which is then renamed onto `target`."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _share(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_text(target: Path, text: str) -> None:
    atomic_write(target, lambda p: Path(p).write_text(text, encoding="utf-8"))


def write_manifest(folder: Path, kind: str) -> None:
    """Record every file under `folder` as groupcoop's own (written last, inside the folder)."""
    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    (folder / MANIFEST).write_text(json.dumps({"kind": kind, "files": files}, indent=1) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
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
    `overwrite`; anything else is never replaced.
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"--out {out} exists and is not a folder; choose a new folder")
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
    """An output file path whose folder is writable, refusing to replace an existing file unless told to."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UserError(f"{flag} {path} already exists; choose another name or pass --overwrite")
    ensure_writable_dir(path.parent, flag)
    return path


@contextmanager
def atomic_folder(out: Path, kind: str = "run") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it gets a manifest and replaces `out`.

    On error the temporary folder vanishes and `out` is untouched. A replaced `out` was checked
    with `check_replaceable` by the caller; here it is checked once more just before removal.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    _share(tmp, folder=True)
    try:
        yield tmp
        write_manifest(tmp, kind)
        for path in tmp.rglob("*"):  # libraries create some files private (0600); share them like the rest
            _share(path, folder=path.is_dir())
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
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


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
    created = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]  # removed again if left empty
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
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
        for folder in created:  # deepest first: a refused or failed run leaves no empty parents behind
            try:
                folder.rmdir()
            except OSError:
                break


# --- reading what users hand us ------------------------------------------------------------

def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file holding a mapping, or one UserError line saying what is wrong with it."""
    import yaml

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a YAML file")
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {p} is not UTF-8 text; give a YAML file") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {p}: {err.strerror}") from None
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
