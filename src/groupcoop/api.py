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
from .predict import read_run_config
from .runs import Run
from .settings import RunSettings, make_settings


def fit(dataset: str | GroupDataset, backbone: str = "groupcoop-tiny", pretrained: str | None = None,
        method: str = "groupcoop", groups: str | dict | None = None, config: RunSettings | dict | None = None, *,
        selection: str | None = None, hide_bias_labels: list[str] | str | None = None,
        root: str | None = None, seed: int = 0, device: str = "cpu", cache_dir: str | Path | None = None,
        workers: int | None = None, progress: bool = False, log=None) -> Run:
    """Train `method` on `dataset` (a name, or a loaded GroupDataset) and return the finished Run.

    `config` is a RunSettings, or a dict of its keys (validated into one); the other arguments
    fill in what it leaves out. `groups` is a source name ('gt', 'pseudo', ...) or a dict of
    grouping options (`{"source": "pseudo", "bias_prompts": "auto"}` discovers the attributes).
    `selection` is the model-selection rule (auto, labeler, worst_class, average);
    `hide_bias_labels` the splits ('train', 'val') whose bias labels are dropped right after loading.
    """
    loaded = dataset if isinstance(dataset, GroupDataset) else None
    values = config.dump() if isinstance(config, RunSettings) else dict(config or {})
    defaults = {"dataset": loaded.name if loaded else dataset, "root": root, "backbone": backbone,
                "pretrained": pretrained, "method": method, "groups": groups, "selection": selection,
                "hide_bias_labels": hide_bias_labels, "seed": seed, "device": device}
    for key, value in defaults.items():
        if value is not None:
            values.setdefault(key, value)
    settings = make_settings(values, "fit()")
    ds, settings, bb = check_run(settings, dataset=loaded)
    prep = prepare(ds, bb, cache_dir=cache_dir, feature_dtype=settings.feature_dtype, workers=workers,
                   progress=progress)
    return run_method(prep, settings, log=log or (lambda s: None))


def discover(dataset: str | GroupDataset, backbone: str = "groupcoop-tiny", pretrained: str | None = None,
             vocabulary=None, top: int | None = 10, cache_dir: str | Path | None = None, *, score: str | None = None,
             root: str | None = None, device: str = "cpu", workers: int | None = None, progress: bool = False,
             seed: int = 0) -> list[dict]:
    """Bias discovery on the dataset's training split: the vocabulary's attributes ranked by how
    strongly their zero-shot value assignments go with the class, best first (at most `top`;
    None: all).

    Each candidate is a dict: `attribute`, `values` (the kept value phrases, "{}" where the class
    name goes), `score` (by `score`, default `labelfree.DISCOVERY_SCORE`), `scores`, `shares` (of
    the training images per value) and `dropped` (values too few images matched). `vocabulary`
    is a YAML file, a `discovery.Vocabulary`, or None for the shipped one (world for synth-*
    datasets, clip otherwise). Reads image features and class labels, never a bias label.
    """
    from .backbone import check_device
    from .data.registry import load_dataset
    from .discovery import DISCOVERY_SCORE, Vocabulary, check_score, discover_on, load_vocabulary

    ds = dataset if isinstance(dataset, GroupDataset) else load_dataset(dataset, root)
    score = check_score(score or DISCOVERY_SCORE)
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise UserError(f"top={top!r}: give a whole number >= 1, or None for every candidate")
    vocab = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary, ds)
    check_device(device)
    prep = prepare(ds, backbone, pretrained, device=device, cache_dir=cache_dir, workers=workers, progress=progress)
    return discover_on(prep, vocab, score, seed=seed)[:top]


def load_run(folder: str | Path) -> Run:
    """A saved run: its settings, metrics and classifier head (prompts stay in the folder)."""
    from .head import load_head

    folder = Path(folder).expanduser()
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{folder} holds no groupcoop run (no metrics.json); give a folder written by train or Run.save")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {metrics_path}: {err}") from None
    settings = make_settings(read_run_config(folder), f"{folder}/config.yaml")
    return Run(settings, metrics, load_head(folder / "head.safetensors"))


def list_methods() -> dict[str, str]:
    """Method names and one-line summaries."""
    from .methods import METHODS

    return {name: recipe.summary for name, recipe in METHODS.items()}
