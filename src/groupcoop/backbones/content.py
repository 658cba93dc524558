"""What a model is made of, as bytes: the digests that key the feature cache and that an export
records, so that a changed weights, config, tokenizer or preprocessing file makes a new model
wherever its folder lies and whatever it is called.

A model folder's content is every regular, non-hidden file at its top level (we cannot know which
of them a library reads, so all of them count), less groupcoop's own `head.safetensors` (an export
folder is also a model folder). Hashing large weights on every run is slow, so a file's sha256 is
memoised in a small side file in the cache folder, keyed by (path, size, modification and change
time, inode, device): any write to a file moves its change time, so a memo entry never outlives
the bytes it describes. The digests themselves are of content only.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from ..errors import UserError

OWN_FILES = ("head.safetensors",)  # groupcoop's classifier beside an exported model: not the model
MEMO_FILE = "file-sha256.json"
MEMO_ENTRIES = 256
_memo: dict[str, list] | None = None  # this process's copy of the side file


def _memo_path() -> Path:
    from ..io.environment import cache_folder

    return Path(cache_folder()) / MEMO_FILE


def _load_memo() -> dict[str, list]:
    global _memo
    if _memo is None:
        _memo = {}
        path = _memo_path()
        try:
            if stat.S_ISREG(os.stat(path).st_mode):  # never block on a FIFO planted there
                loaded = json.loads(path.read_text(encoding="utf-8"))
                _memo = {k: v for k, v in loaded.items() if isinstance(v, list) and len(v) == 6} \
                    if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            pass
    return _memo


def _save_memo(memo: dict[str, list]) -> None:
    """Best effort: a memo that cannot be written only costs hashing again next time."""
    from ..io.write import atomic_write

    kept = dict(list(memo.items())[-MEMO_ENTRIES:])
    try:
        atomic_write(_memo_path(), lambda p: Path(p).write_text(json.dumps(kept), encoding="utf-8"))
    except (OSError, UserError):
        pass


def file_sha256(path: Path | str) -> str:
    """sha256 (hex) of a regular file's bytes, memoised by its stat (see the module's note)."""
    from ..io.read import open_regular

    path = Path(path)
    with open_regular(path, "model file", "give the model's folder as its library saved it") as fh:
        st = os.fstat(fh.fileno())
        key = os.path.realpath(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
        memo = _load_memo()
        if memo.get(key, [None])[:5] == stamp:
            return memo[key][5]
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    memo.pop(key, None)
    memo[key] = [*stamp, digest.hexdigest()]
    _save_memo(memo)
    return memo[key][5]


def folder_files(folder: Path | str) -> dict[str, str]:
    """{file name: sha256} of every model file of a folder (regular, non-hidden, top level, not
    groupcoop's own); anything else under a file name there (a FIFO, a device) is one line."""
    from ..io.read import not_regular

    folder = Path(folder)
    out = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name in OWN_FILES or entry.is_dir():
            continue
        odd = not_regular(entry)
        if odd:
            raise UserError(f"{entry} is {odd}, not a file; a model folder holds only files the model's library wrote")
        out[entry.name] = file_sha256(entry)
    return out


def digest(parts: dict) -> str:
    """sha256 (hex) of named parts (JSON values: file digests, configs, settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def state_dict_sha256(module) -> str:
    """sha256 of a module's tensors as loaded (names, dtypes, shapes, bytes), for weights that come
    from no file we can read (a pretrained tag, a hub model, seeded random weights)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def check_export_files(folder: Path | str, info: dict) -> None:
    """An export folder's model files, checked against the sha256 of each that its head recorded:
    a changed, missing or added file is one line."""
    folder = Path(folder)
    recorded = info.get("files_sha256")
    if not isinstance(recorded, dict) or not recorded:
        raise UserError(f"{folder / 'head.safetensors'} records no sha256 of its model files (an export from an "
                        "older groupcoop, or a damaged head); export the run again")
    now = folder_files(folder)
    for name in sorted(set(recorded) | set(now)):
        if name not in now:
            raise UserError(f"{folder / name} is missing from the export; export the run again")
        if name not in recorded:
            raise UserError(f"{folder / name} was not written by export and could change what the model does; "
                            "remove it, or export the run again")
        if now[name] != recorded[name]:
            raise UserError(f"{folder / name} does not match the sha256 recorded when it was exported "
                            f"({str(recorded[name])[:16]}...); the file was changed or damaged; export the run again")
