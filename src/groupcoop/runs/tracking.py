"""Epoch logs: every run's epochs.csv, and `--log tensorboard|wandb|mlflow` for the user's own tools.

`epoch_rows` turns a run's training history into the rows of `epochs.csv` (epoch, train loss,
validation worst-group or worst-class accuracy under metrics.json's names for them, average
accuracy, whether it is the selected epoch); a method that trains in one go (zero-shot, linear
probes, DFR) has none, and its epochs.csv holds the header only. `send` hands the same rows, the
run's settings and its test numbers to each tracker once the run folder is written, so a tracker
that fails never costs the run. The trackers are imported only when asked for and are no
dependency of groupcoop: `check_trackers` refuses a missing one with one line before any training.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import UserError

TRACKERS = {  # name: (module imported, what to install)
    "tensorboard": ("torch.utils.tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}
# the selection rule's worst part, under the history's own name: groups, or classes for a label-free rule
WORST_COLUMNS = ("val_worst_group_acc", "val_worst_class_acc")
EPOCH_COLUMNS = ("epoch", "train_loss", *WORST_COLUMNS, "val_avg_acc", "selected")
TENSORBOARD_FOLDER = "tensorboard"  # inside the run folder


def check_trackers(names: list[str] | None) -> list[str]:
    """The trackers asked for, each importable, or one UserError line naming what to install."""
    names = list(dict.fromkeys(names or []))
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"--log {name}: unknown; choose from {', '.join(TRACKERS)}")
        module, package = TRACKERS[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(f"--log {name} needs `pip install {package}`") from None
    return names


def epoch_rows(metrics: dict) -> list[dict]:
    """One row per trained epoch (1-based); the worst part the selection rule scores keeps the name
    metrics.json's history gives it (`WORST_COLUMNS`), the other column stays empty."""
    best = metrics.get("best_epoch")
    rows = []
    for i, h in enumerate(metrics.get("history") or []):
        epoch = int(h.get("epoch", i)) + 1
        rows.append({"epoch": epoch, "train_loss": h.get("loss"), **{k: h.get(k) for k in WORST_COLUMNS},
                     "val_avg_acc": h.get("val_avg_acc"), "selected": int(epoch == best)})
    return rows


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _final(metrics: dict) -> dict:
    return {f"{split}/{key}": m[key] for split, m in metrics.get("splits", {}).items()
            for key in ("worst_group_acc", "avg_acc") if isinstance(m.get(key), (int, float))}


def send(names: list[str], folder: Path, name: str, settings: dict, metrics: dict) -> None:
    """The run's epoch rows, settings and final numbers to each tracker in `names`, once its folder is
    written; tensorboard's event files go into `folder`/tensorboard. Every tracker is tried; the ones
    that fail are named in one UserError line (the run folder stays as it is)."""
    rows, final = epoch_rows(metrics), _final(metrics)
    failed = []
    for tracker in names:
        try:
            _SENDERS[tracker](Path(folder), name, settings, rows, final)
        except Exception as err:  # noqa: BLE001 - any tracker backend error: the run is kept either way
            first = (str(err).strip().splitlines() or [""])[0][:200]
            failed.append(f"--log {tracker} failed ({type(err).__name__}: {first})")
    if failed:
        raise UserError(f"the run is written to {folder}, but {'; '.join(failed)}; its epochs are in its epochs.csv; "
                        "fix the tracker and run the command again to log the run")


def _tensorboard(folder: Path, name: str, settings: dict, rows: list[dict], final: dict) -> None:
    """Event files written in a temporary folder inside the run folder, then moved to tensorboard/ and
    added to its manifest: a failure leaves the run folder as it was."""
    import shutil
    import tempfile

    from torch.utils.tensorboard import SummaryWriter

    from ..io.folders import write_manifest
    from ..io.write import share_per_umask

    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{TENSORBOARD_FOLDER}.tmp-"))
    try:
        (tmp / TENSORBOARD_FOLDER).mkdir()
        writer = SummaryWriter(log_dir=str(tmp / TENSORBOARD_FOLDER))
        try:
            for row in rows:
                for key in ("train_loss", *WORST_COLUMNS, "val_avg_acc"):
                    if row[key] is not None:
                        writer.add_scalar(key, row[key], row["epoch"])
            for key, value in final.items():
                writer.add_scalar(key, value, 0)
        finally:
            writer.close()
        for path in tmp.rglob("*"):
            share_per_umask(path, folder=path.is_dir())
        (tmp / TENSORBOARD_FOLDER).rename(folder / TENSORBOARD_FOLDER)
        write_manifest(folder, "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wandb(folder: Path, name: str, settings: dict, rows: list[dict], final: dict) -> None:
    import wandb

    run = wandb.init(project="groupcoop", name=name, config=_flat(settings), reinit=True)
    try:
        for row in rows:
            run.log({k: v for k, v in row.items() if k != "epoch" and v is not None}, step=row["epoch"])
        run.summary.update(final)
    finally:
        run.finish()


def _mlflow(folder: Path, name: str, settings: dict, rows: list[dict], final: dict) -> None:
    import mlflow

    with mlflow.start_run(run_name=name):
        mlflow.log_params(_flat(settings))
        for row in rows:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch" and v is not None}, step=row["epoch"])
        mlflow.log_metrics({k.replace("/", "_"): v for k, v in final.items()})


_SENDERS = {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow}
