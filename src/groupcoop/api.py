"""The Python entry points: train a run, load one back, list what there is.

The CLI's `train` and the demo are users of the same functions (`check_run`, `prepare`,
`run_method`), so a run made here and one made on the command line are the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path

from .data.base import GroupDataset
from .errors import UserError
from .pipeline import check_run, prepare, run_method
from .runs import Run, read_run_config
from .settings import RunSettings, make_settings


def fit(dataset: str | GroupDataset, backbone: str = "groupcoop-tiny", pretrained: str | None = None,
        method: str = "groupcoop", groups: str | dict | None = None, config: RunSettings | dict | None = None, *,
        root: str | None = None, seed: int = 0, device: str = "cpu", cache_dir: str | Path | None = None,
        workers: int | None = None, progress: bool = False, log=None) -> Run:
    """Train `method` on `dataset` (a name, or a loaded GroupDataset) and return the finished Run.

    `config` is a RunSettings, or a dict of its keys (validated into one); the other arguments
    fill in what it leaves out. `groups` is a source name ('gt', 'pseudo', ...) or a dict of
    grouping options.
    """
    loaded = dataset if isinstance(dataset, GroupDataset) else None
    values = config.dump() if isinstance(config, RunSettings) else dict(config or {})
    defaults = {"dataset": loaded.name if loaded else dataset, "root": root, "backbone": backbone,
                "pretrained": pretrained, "method": method, "groups": groups, "seed": seed, "device": device}
    for key, value in defaults.items():
        if value is not None:
            values.setdefault(key, value)
    settings = make_settings(values, "fit()")
    ds, settings, bb = check_run(settings, dataset=loaded)
    prep = prepare(ds, bb, cache_dir=cache_dir, feature_dtype=settings.feature_dtype, workers=workers,
                   progress=progress)
    return run_method(prep, settings, log=log or (lambda s: None))


def load_run(folder: str | Path) -> Run:
    """A saved run: its settings, metrics and classifier head (prompts stay in the folder)."""
    from .head import load_head

    from .files import read_if_present

    folder = Path(folder).expanduser()
    metrics_path = folder / "metrics.json"
    text = read_if_present(metrics_path, "run metrics")
    if text is None:
        raise UserError(f"{folder} holds no groupcoop run (no metrics.json); give a folder written by train or Run.save")
    try:
        metrics = json.loads(text)
    except ValueError as err:
        raise UserError(f"cannot read {metrics_path}: {err}; train the run again") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{metrics_path} holds a {type(metrics).__name__}, not a run's metrics; train the run again")
    settings = make_settings(read_run_config(folder), f"{folder}/config.yaml")
    return Run(settings, metrics, load_head(folder / "head.safetensors"))


def list_methods() -> dict[str, str]:
    """Method names and one-line summaries."""
    from .methods import METHODS

    return {name: recipe.summary for name, recipe in METHODS.items()}
