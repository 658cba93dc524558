"""The Python API's arguments, checked at its boundary as the CLI checks its flags.

`fit`, `fit_many`, `discover`, `load_run` and `Classifier` call `check` first: a wrong type, a
count out of range, a file where a folder goes, a config that is neither settings nor a YAML file
is one UserError line before any dataset, model or image is read. The checks are the CLI's:
`ensure_writable_dir` for `--cache-dir`, `check_output_file` for `--grid`, `read_yaml_mapping` for
`--config`, whole numbers >= 0 for `--workers`; the settings themselves are RunSettings' to check.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def _fail(where: str, name: str, value, wanted: str):
    raise UserError(f"{where}: {name}={_shown(value)} is not valid; give {wanted}")


def _whole(minimum: int, optional: bool = True):
    def check(value, name: str, where: str):
        if (value is not None or not optional) and (isinstance(value, bool) or not isinstance(value, int)
                                                    or value < minimum):
            _fail(where, name, value, f"a whole number >= {minimum}" + (", or None for the default" if optional else ""))
        return value
    return check


def _flag(value, name: str, where: str):
    if not isinstance(value, bool):
        _fail(where, name, value, "True or False")
    return value


def _text(value, name: str, where: str):
    if value is not None and (not isinstance(value, str) or not value.strip()):
        _fail(where, name, value, "a non-empty string, or None")
    return value


def _path(value, name: str, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        _fail(where, name, value, "a path (str or pathlib.Path)")
    return Path(value).expanduser()


def _folder_text(value, name: str, where: str) -> str | None:
    """A folder path as the settings hold it (text)."""
    path = _path(value, name, where)
    return None if path is None else str(path)


def _log(value, name: str, where: str):
    if value is not None and not callable(value):
        _fail(where, name, value, "a function taking one line of text (e.g. print), or None")
    return value


def _cache_dir(value, name: str, where: str) -> Path:
    """The feature cache folder, writable (or creatable) before any work, as `--cache-dir`."""
    from ..features.cache import default_cache_dir
    from ..io.write import ensure_writable_dir

    path = _path(value, name, where)
    return ensure_writable_dir(path if path is not None else default_cache_dir(), f"{where}: {name}")


def _grid(value, name: str, where: str) -> Path | None:
    """`discover`'s PNG, as `--grid` (a folder, a device or a missing parent is refused; a file is replaced)."""
    from ..io.write import check_output_file

    path = _path(value, name, where)
    if path is None:
        return None
    if path.suffix.lower() != ".png":
        _fail(where, name, value, "a file name ending in .png (the grid is a PNG image)")
    return check_output_file(path, f"{where}: {name}", overwrite=True)


def _config(value, name: str, where: str) -> dict:
    """A RunSettings, a dict of its keys, or the path of a YAML file of them (a run's config.yaml)."""
    from .settings import RunSettings

    if value is None:
        return {}
    if isinstance(value, RunSettings):
        return value.dump()
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (str, os.PathLike)):
        from .paths import read_settings_file

        return read_settings_file(value, f"{where}: {name} file")  # its relative paths: from its folder
    _fail(where, name, value, "a RunSettings, a dict of its keys, or the path of a YAML file of them")


def _dataset(value, name: str, where: str):
    from ..data.base import GroupDataset

    if not isinstance(value, GroupDataset) and (not isinstance(value, str) or not value.strip()):
        _fail(where, name, value, "a dataset name (groupcoop.list_datasets()) or a loaded GroupDataset")
    return value


def _vocabulary(value, name: str, where: str):
    from ..grouping.discovery import Vocabulary

    return value if value is None or isinstance(value, Vocabulary) else _path(value, name, where)


CHECKS = {  # argument name: its check, which returns the value to use
    "dataset": _dataset,
    "vocabulary": _vocabulary,
    "workers": _whole(0),  # 0: decode in this process, as --workers 0
    "seed": _whole(0, optional=False),
    "top": _whole(1),
    "max_prompts": _whole(1),
    "progress": _flag,
    "fuse": _flag,
    "backbone": _text,
    "pretrained": _text,
    "device": _text,
    "score": _text,
    "root": _folder_text,
    "folder": _path,
    "log": _log,
    "cache_dir": _cache_dir,
    "grid": _grid,
    "config": _config,
}


def check(where: str, **given) -> dict:
    """`given` checked by name (`CHECKS`), in order, cheapest first as given; returns the values to use."""
    return {name: CHECKS[name](value, name, where) for name, value in given.items()}


# --- images given to Classifier.predict ------------------------------------------------------------

def check_batch(images, expected, where: str = "predict()"):
    """`images` as a batch (one image gets a batch dimension): shape (batch >= 1, *expected.shape) and
    expected's dtype (what the backbone's preprocess makes; uint8 pixels or float64 are refused, never
    silently converted)."""
    shape = tuple(expected.shape)
    batch = images if images.ndim == 4 else images[None]
    if batch.ndim != 4 or batch.shape[0] == 0 or tuple(batch.shape[1:]) != shape:
        raise UserError(f"{where} needs a preprocessed batch of shape (batch >= 1, {', '.join(map(str, shape))}), "
                        f"got {tuple(images.shape)}; or pass PIL images or image paths")
    if batch.dtype != expected.dtype:
        raise UserError(f"{where} needs a batch of {expected.dtype} as the backbone's preprocess makes it, got "
                        f"{batch.dtype}; pass PIL images or image paths (raw pixels are not preprocessed), or "
                        f"convert a preprocessed batch with .to({expected.dtype})")
    return batch


def check_image_size(image, index: int, where: str = "predict()") -> None:
    """An image of at least one pixel each way (a 0-wide image cannot be resized)."""
    if image.width < 1 or image.height < 1:
        raise UserError(f"{where}: image {index} is {image.width}x{image.height} pixels; give images of at least 1x1")
