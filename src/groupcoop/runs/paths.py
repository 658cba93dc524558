"""The file and folder paths among a run's settings, made absolute.

A run's config.yaml holds absolute paths (the dataset folder, its metadata CSV, a weights file, a
model folder, a vocabulary, a groups file), so `groupcoop train --config RUN/config.yaml` runs from
any folder. Relative paths in a config file are read from the file's folder; those of flags and of
the Python API from the current folder. Names that are no path (a pretrained tag, a hub id) stay.
No torch here: settings are checked before anything heavy loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")  # as open_clip.py reads --pretrained
FOLDER_PREFIXES = ("local-dir:", "transformers:")  # backbone names whose rest may be a folder
FILE_GROUPS = "file:"  # groups read from a file: `--groups file:groups.csv`
DATASET_FILES = ("csv_path", "metadata")  # dataset options naming a file, relative to the folder or root


def _absolute(text: str, base: Path) -> str:
    path = os.path.expanduser(text)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


def _exists(path: str, test=os.path.isfile) -> bool:
    try:
        return test(path)
    except (OSError, ValueError):  # a name too long, a NUL byte: no such file
        return False


def _pretrained(value, base: Path):
    """A weights file (a path, or a checkpoint suffix) made absolute; a tag or `random` as it is."""
    if not isinstance(value, str) or not value.strip():
        return value
    looks_like_file = value.endswith(WEIGHT_SUFFIXES) or "/" in value or value.startswith((".", "~"))
    return _absolute(value, base) if looks_like_file else value


def _backbone(value, base: Path):
    """`local-dir:FOLDER` and `transformers:FOLDER` with the folder absolute; a hub id as it is."""
    for prefix in FOLDER_PREFIXES:
        if isinstance(value, str) and value.startswith(prefix):
            rest = value[len(prefix):].strip()
            if not rest or rest.startswith("hf-hub:"):
                return value
            folder = _absolute(rest, base)
            local = prefix == "local-dir:" or rest.startswith((".", "/", "~")) or _exists(folder, os.path.isdir)
            return prefix + folder if local else value
    return value


def _groups(value, base: Path):
    """A groups file (`file:PATH` or `file: PATH`) and a vocabulary file made absolute."""
    if isinstance(value, str) and value.startswith(FILE_GROUPS):
        return FILE_GROUPS + _absolute(value[len(FILE_GROUPS):].strip(), base)
    if not isinstance(value, dict):
        return value
    out = dict(value)
    if isinstance(out.get("source"), str) and out["source"].startswith(FILE_GROUPS):
        out["source"] = _groups(out["source"], base)
    for key in ("file", "vocabulary"):
        if isinstance(out.get(key), str) and out[key].strip():
            out[key] = _absolute(out[key].strip(), base)
    return out


def _dataset_options(options, root, base: Path):
    """A metadata file named relative to `base` (first) or to the dataset folder made absolute; one
    found in neither stays as given (the loader says it is missing)."""
    if not isinstance(options, dict):
        return options
    out = dict(options)
    for key in DATASET_FILES:
        value = out.get(key)
        if not isinstance(value, str) or not value.strip() or os.path.isabs(os.path.expanduser(value)):
            continue
        for folder in (base, root):
            if isinstance(folder, (str, Path)) and _exists(_absolute(value, Path(folder))):
                out[key] = _absolute(value, Path(folder))
                break
    return out


def absolute_paths(values: dict, base: str | Path) -> dict:
    """Run settings values with every path made absolute, a relative one read from `base`."""
    if not isinstance(values, dict):
        return values
    base = Path(base)
    out = dict(values)
    if isinstance(out.get("root"), str) and out["root"].strip():
        out["root"] = _absolute(out["root"], base)
    if "pretrained" in out:
        out["pretrained"] = _pretrained(out["pretrained"], base)
    if "backbone" in out:
        out["backbone"] = _backbone(out["backbone"], base)
    if "groups" in out:
        out["groups"] = _groups(out["groups"], base)
    if "dataset_options" in out:
        out["dataset_options"] = _dataset_options(out["dataset_options"], out.get("root"), base)
    return out


def read_settings_file(path: str | Path, what: str) -> dict:
    """A YAML file of run settings, its relative paths read from the file's folder."""
    from ..io.read import read_yaml_mapping

    values = read_yaml_mapping(path, what)
    try:
        folder = Path(path).expanduser().absolute().parent
    except (OSError, ValueError) as err:
        raise UserError(f"{what} {path}: {err}") from None
    return absolute_paths(values, folder)
