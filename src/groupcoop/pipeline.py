"""One run, start to finish: dataset -> features -> groups -> prompts -> training -> metrics -> run folder.

`prepare` does the shared, expensive part (dataset, backbone, cached features) once, so that
the demo can run several methods and seeds on it; `run_method` does one method with one
seed and returns the metrics.json value; `write_run` stores a run folder atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from . import groups as labelers
from .backbone import Backbone, load_backbone
from .data.base import GroupDataset
from .errors import UserError
from .features import extract_features
from .files import atomic_folder, atomic_text
from .methods import check_hyperparameters, get_method
from .metrics import format_group_table, split_metrics
from .prompts import PromptLearner
from .train import SplitData, predict, train_prompts

GROUP_SOURCES = ("gt", "zeroshot", "kmeans", "pseudo")
ZEROSHOT_TEMPLATES = ["a photo of a {}.", "a {}."]


@dataclass
class Prepared:
    dataset: GroupDataset
    backbone: Backbone
    feats: torch.Tensor  # (n, d), L2-normalised, for every row of the dataset
    options: dict = field(default_factory=dict)


def prepare(dataset: GroupDataset, backbone_name: str, pretrained: str | None = None, device: str = "cpu",
            cache_dir: Path | None = None, feature_dtype: str = "float32", workers: int | None = None,
            progress: bool = True, backbone: Backbone | None = None) -> Prepared:
    backbone = backbone or load_backbone(backbone_name, pretrained, device=device)
    feats = extract_features(backbone, dataset.images, cache_dir=cache_dir, dtype=feature_dtype,
                             workers=workers, progress=progress)
    return Prepared(dataset, backbone, F.normalize(feats, dim=-1))


# --- groups ----------------------------------------------------------------------------

def apply_phrase(phrase: str, class_name: str) -> str:
    """'{} on water' + 'round shape' -> 'round shape on water'; a phrase without {} is appended."""
    return phrase.replace("{}", class_name) if "{}" in phrase else f"{class_name} {phrase}"


def attribute_scores(prep: Prepared, rows: np.ndarray, phrases: list[list[str]]) -> list[np.ndarray]:
    """Per attribute: cosine of each image with '<its class> <value phrase>' prompts (template ensemble)."""
    ds, bb = prep.dataset, prep.backbone
    feats, y = prep.feats[rows], ds.y[rows]
    scores = []
    for values in phrases:
        text = torch.stack([
            torch.stack([F.normalize(bb.encode_text([t.format(apply_phrase(v, c)) for t in ZEROSHOT_TEMPLATES],
                                                    normalize=True).mean(0), dim=-1) for v in values])
            for c in ds.class_names
        ])  # (C, V, D)
        per_image = torch.einsum("nd,nvd->nv", feats, text.to(feats.device)[torch.as_tensor(y)])
        scores.append(per_image.cpu().numpy())
    return scores


@dataclass
class GroupPlan:
    """Group ids used for training, selection and reporting, and where each came from."""

    source: str
    sizes: list[int]
    names: list[str]  # display name per group
    prompt_names: list[str]  # text after the context vectors, per group prompt
    train: np.ndarray
    val_select: np.ndarray
    selection_source: str
    report: dict = field(default_factory=dict)  # split -> (group ids, whether they are the true groups)
    quality: dict | None = None


def _bias_attributes(ds: GroupDataset, bias_prompts, clusters) -> tuple[list[int], list[list[str]], list[list[str]] | None]:
    """(attribute sizes, value names, prompt phrases) the labelers work with.

    A dataset without bias attributes takes them from --bias-prompts (one attribute per
    ';'-separated list) or, for kmeans, from --clusters (default 2).
    """
    if ds.attribute_names:
        if bias_prompts and [len(p) for p in bias_prompts] != ds.attr_sizes:
            raise UserError(f"--bias-prompts gives {[len(p) for p in bias_prompts]} phrases per attribute, but "
                            f"{ds.name} has attribute sizes {ds.attr_sizes}; give one phrase per value")
        return ds.attr_sizes, ds.attribute_values, bias_prompts or ds.attribute_phrases
    if bias_prompts:
        return [len(p) for p in bias_prompts], [list(p) for p in bias_prompts], bias_prompts
    return [int(clusters or 2)], [[f"cluster {k}" for k in range(int(clusters or 2))]], None


def plan_groups(prep: Prepared, source: str, seed: int, bias_prompts=None, clusters=None,
                variant: str | None = None) -> GroupPlan:
    ds = prep.dataset
    if source not in GROUP_SOURCES:
        raise UserError(f"unknown --groups '{source}'; choose one of: {', '.join(GROUP_SOURCES)}")
    train_rows, val_rows = ds.split_indices("train"), ds.split_indices("val")
    train_labelled = bool((ds.attrs[train_rows] >= 0).all()) and len(ds.attribute_names) > 0
    if source == "gt" and not train_labelled:
        raise UserError(f"--groups gt needs bias labels, but {ds.name} has none for its training split; "
                        "use --groups pseudo, zeroshot or kmeans")
    attr_sizes, value_names, phrases = _bias_attributes(ds, bias_prompts, clusters)
    if source in ("zeroshot", "pseudo") and not phrases:
        raise UserError(f"--groups {source} needs attribute phrases, and {ds.name} has none; pass "
                        '--bias-prompts "on land,on water" (one phrase per value) or use --groups kmeans')
    sizes = labelers.group_sizes(source, attr_sizes, clusters)
    n_codes = int(np.prod(sizes))

    def label(rows):
        if source == "gt":
            return ds.groups[rows]
        scores = attribute_scores(prep, rows, phrases) if source in ("zeroshot", "pseudo") else None
        return labelers.assign_groups(source, prep.feats[rows].cpu().numpy(), ds.y[rows], attr_sizes,
                                      attr_scores=scores, clusters=clusters, seed=seed, variant=variant)

    train_groups = label(train_rows)

    def labelled(rows):
        return len(ds.attribute_names) > 0 and bool((ds.attrs[rows] >= 0).all())

    report = {s: ((ds.groups[r], True) if labelled(r) else (label(r), False))
              for s, r in (("val", val_rows), ("test", ds.split_indices("test"))) if len(r)}
    if "val" in report and report["val"][1] and sizes == ds.attr_sizes:
        val_groups, selection = report["val"][0], "true val groups"
    else:  # the labeler's val groups: reuse them when the report already computed them
        val_groups = report["val"][0] if "val" in report and not report["val"][1] else label(val_rows)
        selection = f"{source} val groups"
    named = source != "kmeans" and phrases is not None
    names, prompt_names = [], []
    for g in range(ds.n_classes * n_codes):
        y, code = divmod(g, n_codes)
        words, text = [ds.class_names[y]], ds.class_names[y]
        for j, size in enumerate(sizes):
            code, a = divmod(code, size)
            if named:
                words.append(value_names[j][a])
                text = apply_phrase(phrases[j][a], text)
            else:
                words.append(f"cluster {a}")
        names.append(", ".join(words))
        prompt_names.append(text)
    quality = None
    if source != "gt" and train_labelled:
        quality = labelers.quality(ds.groups[train_rows], train_groups, names=ds.group_names())
    return GroupPlan(source, sizes, names, prompt_names, train_groups, val_groups, selection, report, quality)


# --- one method, one seed --------------------------------------------------------------

def run_method(prep: Prepared, method: str, groups: str | None = None, seed: int = 0, overrides: dict | None = None,
               bias_prompts=None, clusters=None, log=print) -> tuple[dict, PromptLearner | None]:
    """Train (or not) one method and return (metrics.json value, learner)."""
    recipe = get_method(method)
    hp = recipe.hyperparameters(overrides)
    check_hyperparameters(recipe, hp)
    ds, bb = prep.dataset, prep.backbone
    if groups is None:
        groups = "gt" if ds.has_group_labels else "pseudo"
    torch.manual_seed(seed)
    plan = plan_groups(prep, groups, seed, bias_prompts, clusters)
    rows = {s: ds.split_indices(s) for s in ("train", "val", "test")}
    learner = None
    extra = {}
    if recipe.name == "zeroshot":
        text = torch.stack([F.normalize(bb.encode_text([t.format(c) for t in hp["templates"]], normalize=True).mean(0), dim=-1)
                            for c in ds.class_names])
        aggregate, trainable = "max", 0
    else:
        learner = PromptLearner(bb, _prompt_names(recipe, hp, plan, ds), n_ctx=hp["n_ctx"], init=hp["ctx_init"], shared=hp["shared_ctx"],
                                generator=torch.Generator().manual_seed(seed))
        train = SplitData(prep.feats[rows["train"]], ds.y[rows["train"]], plan.train)
        val = SplitData(prep.feats[rows["val"]], ds.y[rows["val"]], plan.val_select)
        result = train_prompts(recipe, hp, learner, train, val, ds.n_classes, seed, log=log)
        with torch.no_grad():
            text = learner()
        aggregate, trainable = hp.get("aggregate", "max"), learner.trainable_parameters()
        extra = {"best_epoch": result.best_epoch + 1, "epochs_run": len(result.history), "history": result.history}
    train_counts = ds.group_counts("train") if ds.has_group_labels else None
    family = ds.info.get("metric_family")
    splits = {}
    for split in ("val", "test"):
        r = rows[split]
        if len(r) == 0:
            continue
        pred = predict(text, prep.feats[r], ds.n_classes, aggregate)
        report_groups, true_labels = plan.report[split]
        names = ds.group_names() if true_labels else plan.names
        splits[split] = split_metrics(pred, ds.y[r], report_groups, names, train_counts=train_counts, family=family)
    metrics = {
        "method": recipe.name,
        "backbone": bb.identity,
        "dataset": ds.name,
        "groups_source": plan.source,
        "selection_groups": plan.selection_source,
        "report_groups": {split: ("true groups" if plan.report[split][1] else f"{plan.source} groups") for split in splits},
        "trainable_params": int(trainable),
        "total_params": int(bb.parameter_count() + trainable),
        "seed": seed,
        "hyperparameters": hp,
        "splits": splits,
        **({"group_quality": plan.quality} if plan.quality else {}),
        **extra,
    }
    if learner is not None:
        learner.info.update({"classes": list(ds.class_names), "groups": plan.names, "method": recipe.name,
                             "groups_source": plan.source, "aggregate": aggregate})
    return metrics, learner


def _prompt_names(recipe, hp: dict, plan: GroupPlan, ds: GroupDataset) -> list[str]:
    """The frozen text after the context: class names, or group names with their attribute words."""
    if recipe.prompts == "class":
        return list(ds.class_names)
    if hp.get("group_words", True):
        return plan.prompt_names
    per_class = len(plan.names) // ds.n_classes
    return [ds.class_names[g // per_class] for g in range(len(plan.names))]


# --- run folders -------------------------------------------------------------------------

def check_out_dir(out: Path, config: dict, overwrite: bool) -> None:
    """Refuse to replace a folder holding something else, unless told to."""
    if not out.exists() or overwrite:
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    entries = list(out.iterdir())
    if not entries:
        return
    previous = out / "config.yaml"
    if previous.is_file():
        try:
            same = yaml.safe_load(previous.read_text()) == config
        except yaml.YAMLError:
            same = False
        if same:
            return
        raise UserError(f"{out} already holds a different run; pass --overwrite to replace it or choose another --out")
    raise UserError(f"{out} is not empty and holds no groupcoop run; choose another --out or pass --overwrite")


def write_run(out: Path, config: dict, metrics: dict, learner: PromptLearner | None, report: str) -> None:
    """Write the run folder into a temporary sibling, then move it into place."""
    with atomic_folder(Path(out)) as tmp:
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        (tmp / "report.txt").write_text(report + "\n")
        if learner is not None:
            learner.save(tmp)


def run_report(metrics: dict) -> str:
    parts = [f"{metrics['method']} on {metrics['dataset']} with {metrics['backbone']}  "
             f"(groups: {metrics['groups_source']}; model selection on {metrics['selection_groups']})"]
    for split, m in metrics["splits"].items():
        parts.append(format_group_table(m, title=f"{split}:"))
    if "group_quality" in metrics:
        q = metrics["group_quality"]
        parts.append(f"pseudo-group agreement with true train groups: accuracy {100 * q['accuracy']:.1f}  "
                     f"NMI {q['nmi']:.3f}  ARI {q['ari']:.3f}")
    return "\n".join(parts)


def write_groups(prep: Prepared, out: Path, method: str, seed: int = 0, bias_prompts=None, clusters=None,
                 variant: str | None = None) -> str:
    """Label the training split with a labeler; write groups.csv and quality.json; return a summary."""
    import pandas as pd

    ds = prep.dataset
    plan = plan_groups(prep, method, seed, bias_prompts, clusters, variant=variant)
    rows = ds.split_indices("train")
    table = pd.DataFrame({"index": rows, "y": ds.y[rows], "group": plan.train,
                          "group_name": [plan.names[g] for g in plan.train]})
    if ds.has_group_labels:
        table["true_group"] = ds.groups[rows]
    quality = plan.quality or {"note": "the dataset has no bias labels to compare with"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(out / "groups.csv", table.to_csv(index=False))
    atomic_text(out / "quality.json", json.dumps(quality, indent=1) + "\n")
    if plan.quality:
        q = plan.quality
        return (f"{method} groups on {ds.name} train ({len(rows)} images): accuracy {100 * q['accuracy']:.1f}  "
                f"NMI {q['nmi']:.3f}  ARI {q['ari']:.3f}; wrote {out}/groups.csv and quality.json")
    return f"{method} groups on {ds.name} train ({len(rows)} images); no true groups to compare; wrote {out}/groups.csv"

