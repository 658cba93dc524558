"""Dataset names -> loaders: the one table the CLI and the Python API look names up in.

Each entry is a `LoaderSpec`: the loader (called as `loader(root, **options)`), a line saying
what folder it expects, and the schema of its options (types, defaults), so that options are
checked before anything is read. An entry may also give the dataset's size and shape, which
`groupcoop sweep --dry-run` reads (`dataset_facts`). Add a dataset by adding an entry; nothing
registers itself. Synthetic random tasks are named `synth-random:<seed>` and need no entry of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from ..errors import UserError, close_matches
from ..schema import Frozen, NoOptions, Seed, build
from .base import GroupDataset, PathImages
from .celeba import CelebAOptions, load_celeba
from .csv_dataset import CsvOptions, load_csv
from .multiceleba import MultiCelebAOptions, load_multiceleba
from .subpopbench import KnownSubpopOptions, SubpopBenchOptions, load_subpopbench
from .world.datasets import make_task_dataset
from .world.random_tasks import RANDOM_TASK_PREFIX, describe_random_tasks, parse_random_task_name, random_task
from .world.tasks import TASKS, SyntheticTask
from .waterbirds import load_waterbirds


class SyntheticOptions(Frozen):
    seed: Seed = 0  # render seed of the images


def load_synthetic(name: str, root=None, seed: int = 0) -> GroupDataset:
    """A task of the built-in synthetic world (made in memory, no folder)."""
    return make_task_dataset(name, seed=seed)


@dataclass(frozen=True)
class LoaderSpec:
    loader: Callable[..., GroupDataset]
    description: str
    options: type[Frozen] = NoOptions
    needs_root: bool = True  # False for datasets made in memory (no folder to check)
    size: tuple[int, int] | None = None  # (all images, training images), for the dry-run cost estimate
    shape: tuple[int, int] | None = None  # (classes, groups per class), likewise


def task_facts(task: SyntheticTask) -> tuple[tuple[int, int], tuple[int, int]]:
    """A synthetic task's size and shape, read from its definition: its group counts and biases."""
    size = (sum(sum(counts) for counts in task.counts.values()), sum(task.counts.get("train", ())))
    return size, (len(task.classes), math.prod(len(values) for _, values in task.biases))


def _loaders() -> dict[str, LoaderSpec]:
    table = {
        "waterbirds": LoaderSpec(
            load_waterbirds,
            "group_DRO's waterbird_complete95_forest2water2/ or WILDS's waterbirds_v1.0/ (metadata.csv + species folders)",
            size=(11_788, 4_795), shape=(2, 2),
        ),
        "celeba": LoaderSpec(
            load_celeba,
            "CelebA folder: img_align_celeba/ + list_attr_celeba.txt/.csv + list_eval_partition.txt/.csv; "
            "options target=, biases=", CelebAOptions, size=(202_599, 162_770), shape=(2, 2),
        ),
        "multiceleba": LoaderSpec(
            load_multiceleba,
            "a CelebA folder (as for celeba); MultiCelebA's train subset is built from it; option mouth_slightly_open=",
            MultiCelebAOptions, size=(107_000, 67_000), shape=(2, 4),
        ),
        "subpopbench": LoaderSpec(
            load_subpopbench,
            "a dataset folder with SubpopBench's metadata CSV (filename,y,a,split); options name=, metadata=",
            SubpopBenchOptions,
        ),
        "metashift": LoaderSpec(partial(load_subpopbench, name="metashift"),
                                "SubpopBench's metashift/ folder (metadata_metashift.csv)", KnownSubpopOptions,
                                size=(3_499, 2_276), shape=(2, 2)),
        "imagenetbg": LoaderSpec(partial(load_subpopbench, name="imagenetbg"),
                                 "SubpopBench's backgrounds_challenge/ folder (metadata.csv)", KnownSubpopOptions,
                                 size=(50_000, 45_000), shape=(9, 1)),
        "nicopp": LoaderSpec(partial(load_subpopbench, name="nicopp"), "SubpopBench's nicopp/ folder (metadata.csv)",
                             KnownSubpopOptions),
        "chexpert": LoaderSpec(partial(load_subpopbench, name="chexpert"),
                               "SubpopBench's chexpert/ folder (subpop_bench_meta/metadata_no_finding.csv)",
                               KnownSubpopOptions, size=(190_000, 167_000), shape=(2, 6)),
        "csv": LoaderSpec(
            load_csv, "a folder of images + a CSV; options " + ", ".join(f"{k}=" for k in CsvOptions.model_fields),
            CsvOptions,
        ),
    }
    for name, task in TASKS.items():
        size, shape = task_facts(task)
        table[name] = LoaderSpec(partial(load_synthetic, name), f"built-in synthetic world, {task.description} (no --root)",
                                 SyntheticOptions, needs_root=False, size=size, shape=shape)
    table[f"{RANDOM_TASK_PREFIX}<seed>"] = LoaderSpec(
        load_synthetic, f"a random task of the synthetic world drawn from <seed>: {describe_random_tasks()} (no --root)",
        NoOptions, needs_root=False)
    return table


LOADERS: dict[str, LoaderSpec] = _loaders()


def loader_spec(name: str) -> tuple[LoaderSpec, Callable[..., GroupDataset]]:
    """The spec for a dataset name, and the loader to call as `loader(root, **options)`."""
    if not isinstance(name, str):
        raise UserError(f"dataset must be a name, not {type(name).__name__}")
    if parse_random_task_name(name) is not None:  # one clear line for a bad seed
        spec = LOADERS[f"{RANDOM_TASK_PREFIX}<seed>"]
        return spec, partial(load_synthetic, name)
    spec = LOADERS.get(name)
    if spec is None or name.endswith(":<seed>"):
        raise UserError(f"unknown dataset {name!r}{close_matches(name, LOADERS)}; known: {', '.join(LOADERS)}")
    return spec, spec.loader


def dataset_facts(name: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """A dataset's (all images, training images) and (classes, groups per class), for the dry-run
    cost estimate; a `synth-random:<seed>` task's drawn from its seed. None when its entry gives none."""
    seed = parse_random_task_name(name)
    if seed is not None:
        return task_facts(random_task(seed))
    spec = LOADERS.get(name)
    if spec is None or spec.size is None or spec.shape is None:
        return None
    return spec.size, spec.shape


def is_known(name: str) -> bool:
    """Whether `name` is a registered dataset (or a synth-random:<seed> name)."""
    return name in LOADERS and not name.endswith("<seed>") or name.startswith(RANDOM_TASK_PREFIX)


def dataset_options(name: str, options: dict | None) -> dict:
    """The dataset's options checked against its schema, with defaults filled in."""
    spec, _ = loader_spec(name)
    drawn = [k for k in ("val_fraction", "test_fraction") if isinstance(options, dict) and options.get(k) is not None]
    if drawn and "val_fraction" not in spec.options.model_fields:
        raise UserError(f"--{drawn[0].replace('_', '-')} splits a csv dataset without a split column at random; "
                        f"{name} comes with its own splits, drop it")
    if isinstance(options, dict) and "root" in options:
        raise UserError(f"dataset {name} options: root is not an option; give the dataset folder with --root"
                        + ("" if spec.needs_root else f" ({name} needs none)"))
    return build(spec.options, options or {}, f"dataset {name} options", flag="--option").model_dump()


def load_dataset(name: str, root: str | Path | None = None, /, *, allow_symlinks_outside: bool = False,
                 **options) -> GroupDataset:
    """Load dataset `name` from folder `root` (checked to exist) with loader-specific options.

    Image files must resolve to paths under the root unless `allow_symlinks_outside`. `name` and
    `root` are positional-only, so that an option of those names (SubpopBench's `name=`, a
    mistaken `root=`) reaches the option check instead of colliding with them.
    """
    spec, loader = loader_spec(name)
    options = dataset_options(name, options)
    if not spec.needs_root:
        dataset = loader(None, **options)
    else:
        if root is None:
            raise UserError(f"dataset {name} needs --root: {spec.description}")
        root = Path(root).expanduser()
        if not root.is_dir():
            state = "is not a folder" if root.exists() else "does not exist"
            raise UserError(f"dataset folder {root} {state}; point --root at {spec.description}")
        dataset = loader(root, **options)
    if isinstance(dataset.images, PathImages):
        dataset.images = replace(dataset.images, allow_outside=allow_symlinks_outside)
        dataset.images.check_confined()
    if dataset.n_classes < 2:
        raise UserError(f"dataset {name} has {dataset.n_classes} class; a classifier needs at least two classes")
    return dataset


def list_datasets() -> dict[str, str]:
    """Dataset names and what each expects."""
    return {name: spec.description for name, spec in LOADERS.items()}
