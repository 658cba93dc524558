"""Dataset names -> loaders: the one table the CLI and the Python API look names up in.

Each entry is a `LoaderSpec`: the loader (called as `loader(root, **options)`) and a line
saying what folder it expects. Add a dataset by adding an entry; nothing registers itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import UserError, close_matches
from .base import GroupDataset
from .celeba import load_celeba
from .csv_dataset import load_csv
from .multiceleba import load_multiceleba
from .subpopbench import load_subpopbench
from .synthetic import TASKS, make_task_dataset
from .waterbirds import load_waterbirds


@dataclass(frozen=True)
class LoaderSpec:
    loader: Callable[..., GroupDataset]
    description: str
    needs_root: bool = True  # False for datasets made in memory (no folder to check)


LOADERS: dict[str, LoaderSpec] = {
    "waterbirds": LoaderSpec(
        load_waterbirds,
        "group_DRO's waterbird_complete95_forest2water2/ or WILDS's waterbirds_v1.0/ (metadata.csv + species folders)",
    ),
    "celeba": LoaderSpec(
        load_celeba,
        "CelebA folder: img_align_celeba/ + list_attr_celeba.txt/.csv + list_eval_partition.txt/.csv; "
        "options target=, biases=",
    ),
    "multiceleba": LoaderSpec(
        load_multiceleba,
        "a CelebA folder (as for celeba); MultiCelebA's train subset is built from it; option mouth_slightly_open=",
    ),
    "subpopbench": LoaderSpec(
        load_subpopbench,
        "a dataset folder with SubpopBench's metadata CSV (filename,y,a,split); options name=, metadata=",
    ),
    "metashift": LoaderSpec(
        partial(load_subpopbench, name="metashift"), "SubpopBench's metashift/ folder (metadata_metashift.csv)"
    ),
    "imagenetbg": LoaderSpec(
        partial(load_subpopbench, name="imagenetbg"), "SubpopBench's backgrounds_challenge/ folder (metadata.csv)"
    ),
    "nicopp": LoaderSpec(partial(load_subpopbench, name="nicopp"), "SubpopBench's nicopp/ folder (metadata.csv)"),
    "chexpert": LoaderSpec(
        partial(load_subpopbench, name="chexpert"),
        "SubpopBench's chexpert/ folder (subpop_bench_meta/metadata_no_finding.csv)",
    ),
    "csv": LoaderSpec(
        load_csv,
        "a folder of images + a CSV; options csv_path=, path_col=, label_col=, attr_cols=, class_names=, "
        "attr_values=, attr_phrases=, split_col=",
    ),
}


def _synthetic_loader(task: str) -> Callable[..., GroupDataset]:
    def load(root=None, seed: int = 0) -> GroupDataset:
        return make_task_dataset(task, seed=int(seed))

    return load


LOADERS.update({
    name: LoaderSpec(_synthetic_loader(name), f"built-in synthetic world, {task.description} (no --root)", needs_root=False)
    for name, task in TASKS.items()
})


def _check_options(name: str, loader: Callable, options: dict) -> None:
    params = list(inspect.signature(loader).parameters.values())[1:]  # the first is the root
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params]
    for option in options:
        if option not in accepted:
            listed = ", ".join(accepted) or "none"
            raise UserError(
                f"dataset {name} has no option {option!r}{close_matches(option, accepted)}; its options: {listed}"
            )
    missing = [p.name for p in params if p.default is p.empty and p.name not in options]
    if missing:
        raise UserError(
            f"dataset {name} needs option(s) {', '.join(missing)}; give them in the config or on the command line"
        )


def load_dataset(name: str, root: str | Path | None, **options) -> GroupDataset:
    """Load dataset `name` from folder `root` (checked to exist) with loader-specific options."""
    spec = LOADERS.get(name)
    if spec is None:
        raise UserError(f"unknown dataset {name!r}{close_matches(name, LOADERS)}; known: {', '.join(LOADERS)}")
    _check_options(name, spec.loader, options)
    if not spec.needs_root:
        return spec.loader(root, **options)
    if root is None:
        raise UserError(f"dataset {name} needs --root: {spec.description}")
    root = Path(root).expanduser()
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise UserError(f"dataset folder {root} {state}; point --root at {spec.description}")
    return spec.loader(root, **options)
