"""Run folders: a finished run, how it is written, and whether a folder already holds it.

A run folder holds config.yaml (the resolved settings), metrics.json, head.safetensors, the
learned prompts (when there are any), report.txt and report.html; it is written whole into a
temporary sibling and moved into place (`files.atomic_folder`). `holds_run` is the one answer
to "is this folder a finished run of these settings", for `train` (an identical run may be
redone in place) and `sweep` (finished runs are skipped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError
from ..io.folders import atomic_folder, check_replaceable, output_lock
from ..io.read import NotYaml, parse_yaml, read_if_present
from ..limits import YAML_MAX_BYTES
from ..methods.head import Head
from ..metrics import format_group_table
from ..methods.prompts import PromptLearner, nearest_tokens
from ..reports.run import run_report_html
from .settings import RunSettings


@dataclass
class Run:
    """A finished run: what it was asked to do, what it measured, and the classifier it made."""

    settings: RunSettings
    metrics: dict
    head: Head
    learner: PromptLearner | None = None
    started: float | None = None  # time.time() when it started (metrics.json's provenance)
    wall_s: float | None = None  # seconds from its start to its end
    figures: dict[str, bytes] = field(default_factory=dict)  # PNG files of the run folder, shown in report.html

    def folder_metrics(self) -> dict:
        """metrics.json's value: the metrics with their provenance (versions, host, start, wall time)."""
        from .provenance import PROVENANCE, provenance

        if self.started is None and PROVENANCE in self.metrics:  # a run read back from its folder
            return self.metrics
        return {**self.metrics, PROVENANCE: provenance(self.started, self.wall_s)}

    def save(self, folder: Path, overwrite: bool = False) -> Path:
        """Write the run folder atomically (refusing a folder that holds anything but a groupcoop run)."""
        folder = Path(folder)
        check_replaceable(folder, overwrite, "run", flag="folder", overwrite_flag="overwrite=True")
        with output_lock(folder):
            write_run(folder, self)
        return folder


def read_run_config(folder: Path) -> dict:
    """A run folder's config.yaml as a dict ({} when absent or not a YAML mapping).

    Anything but a regular file there (a FIFO, a device) is one error line, never a hang."""
    text = read_if_present(Path(folder) / "config.yaml", "run config", limit=YAML_MAX_BYTES)
    try:
        config = parse_yaml(text, "run config") if text is not None else None
    except NotYaml:
        return {}
    return config if isinstance(config, dict) else {}


def read_metrics(folder: Path) -> dict | None:
    """A run folder's metrics.json, or None when it is missing or damaged: not a regular file, not
    JSON, not a mapping, or a split without the headline numbers (a damaged run is redone, never
    an internal error)."""
    from ..io.read import read_text
    from ..metrics import HEADLINE

    try:
        metrics = json.loads(read_text(Path(folder) / "metrics.json", "metrics"))
    except (UserError, ValueError):
        return None
    splits = metrics.get("splits") if isinstance(metrics, dict) else None
    if not isinstance(splits, dict) or not splits or not all(
            isinstance(m, dict) and all(isinstance(m.get(k), (int, float)) for k in HEADLINE) for m in splits.values()):
        return None
    return metrics


def same_settings(folder: Path, settings: dict) -> bool:
    """Whether `folder`'s config.yaml equals `settings` (a `RunSettings.dump()`); a group source left
    unresolved (None) matches the one the run resolved. A config.yaml that cannot be read (not
    UTF-8, a FIFO: never waited on) matches nothing."""
    try:
        done = read_run_config(folder)
    except UserError:
        return False
    wanted = dict(settings)
    groups = wanted.get("groups")
    if isinstance(groups, dict) and groups.get("source") is None and isinstance(done.get("groups"), dict):
        wanted["groups"] = {**groups, "source": done["groups"].get("source")}
    return done == wanted


def holds_run(folder: Path, settings: dict) -> bool:
    """Whether `folder` holds a finished run of `settings` (`same_settings`) with intact metrics
    (`read_metrics`)."""
    return same_settings(folder, settings) and read_metrics(folder) is not None


def fill_run_folder(folder: Path, run: Run) -> None:
    """Write a run's files into `folder` (created if needed); its epochs go to epochs.csv."""
    from ..io.csv_safe import csv_text
    from .tracking import EPOCH_COLUMNS, epoch_rows

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(run.settings.dump(), sort_keys=False), encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps(run.folder_metrics(), indent=1) + "\n", encoding="utf-8")
    (folder / "epochs.csv").write_text(csv_text(epoch_rows(run.metrics), EPOCH_COLUMNS), encoding="utf-8")
    (folder / "report.txt").write_text(run_report(run.metrics) + "\n", encoding="utf-8")
    tokens = nearest_tokens(run.learner) if run.learner is not None else None
    for name, png in run.figures.items():
        (folder / name).write_bytes(png)
    (folder / "report.html").write_text(run_report_html(run.metrics, tokens, run.figures), encoding="utf-8")
    run.head.save(folder / "head.safetensors")
    if run.learner is not None:
        run.learner.save(folder)


def write_run(out: Path, run: Run, trackers: list[str] | tuple = ()) -> None:
    """Write the run folder into a temporary sibling and move it into place; only then send it to
    `trackers` (`tracking.send`), so that a tracker that fails never costs the run."""
    with atomic_folder(Path(out), kind="run") as tmp:
        fill_run_folder(tmp, run)
    if trackers:
        from .tracking import send

        send(list(trackers), Path(out), str(out), run.settings.dump(), run.metrics)


def discovery_line(d: dict) -> str:
    """What bias discovery found for `bias_prompts: auto`, in one line."""
    if d.get("fallback"):
        return f"bias discovery ({d['score']}): nothing kept, {d['fallback']}"
    scores = {c["attribute"]: c["score"] for c in d.get("candidates", [])}
    used = ", ".join(f"{a} ({scores.get(a, float('nan')):.3f})" for a in d.get("used", []))
    return f"bias discovery ({d['score']}, threshold {d['threshold']}): using {used}"


def run_report(metrics: dict) -> str:
    parts = [f"{metrics['method']} on {metrics['dataset']} with {metrics['backbone']}  "
             f"(groups: {metrics['groups_source']}; model selection on {metrics['selection_groups']})"]
    if metrics.get("hidden_bias_labels"):
        parts.append(f"bias labels hidden on: {', '.join(metrics['hidden_bias_labels'])}")
    if "discovery" in metrics:
        parts.append(discovery_line(metrics["discovery"]))
    for split, m in metrics["splits"].items():
        parts.append(format_group_table(m, title=f"{split}:"))
    if "group_quality" in metrics:
        q = metrics["group_quality"]
        parts.append(f"pseudo-group agreement with true train groups: accuracy {100 * q['accuracy']:.1f}  "
                     f"NMI {q['nmi']:.3f}  ARI {q['ari']:.3f}")
    return "\n".join(parts)
