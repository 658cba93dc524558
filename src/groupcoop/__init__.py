"""groupcoop: group-robust prompt tuning of frozen CLIP models (GroupCoOp).

The public API, in the spirit of open_clip's handful of entry points::

    import groupcoop
    run = groupcoop.fit("synth-waterbirds", backbone="groupcoop-tiny", method="groupcoop")
    run.save("runs/wb")
    clf = groupcoop.Classifier.from_run("runs/wb")
    pred = clf.predict(["photo.png"])

Names are imported on first use, so `import groupcoop` (and `groupcoop --help`) stays fast.
"""

from __future__ import annotations

__version__ = "0.2.0"

_API = {
    "fit": "api",
    "fit_many": "api",
    "Run": "runs.folder",
    "load_run": "api",
    "RunSettings": "runs.settings",
    "GroupingOptions": "grouping.options",
    "Classifier": "runs.predict",
    "GroupCoOpClassifier": "runs.predict",  # Classifier's older name
    "GroupCoOpEstimator": "runs.estimator",  # scikit-learn estimator on image features
    "Prediction": "methods.head",
    "load_dataset": "data.registry",
    "list_datasets": "data.registry",
    "load_backbone": "backbones.families",
    "list_methods": "api",
    "discover": "api",
    "GroupDataset": "data.base",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'groupcoop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
