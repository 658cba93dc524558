"""One run, start to finish: dataset -> features -> groups -> prompts -> training -> metrics -> run folder.

`check_run` does every cheap check a run needs (settings, dataset metadata, groups, backbone,
prompt lengths) before `prepare` does the expensive, shared part (cached features), so that
bad input is refused before any image is read. `run_method` trains (or not) one method with
one seed and returns a `Run`: its settings, the metrics.json value, the classifier head and the
learned prompts. `Run.save` stores a run folder atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from . import labelers
from .backbone import Backbone, check_device, load_backbone
from .data.base import GroupDataset, GroupSpec
from .errors import UserError
from .csv_safe import csv_text
from .features import Features, extract_features
from .files import atomic_folder, atomic_text, check_replaceable, output_lock
from .head import Head
from .methods import DFRParams, GroupLinearParams, JTTParams, LinearProbeBalancedParams, get_method
from .metrics import format_group_table, split_metrics
from .prompts import PromptLearner, check_prompts_fit, nearest_tokens
from .report import run_report_html
from .settings import GroupingOptions, RunSettings
from .train import SplitData, train_prompts

ZEROSHOT_TEMPLATES = ("a photo of a {}.", "a {}.")


@dataclass
class Prepared:
    dataset: GroupDataset
    backbone: Backbone
    feats: Features  # one row per dataset row; rows come back L2-normalised

    def __post_init__(self):
        if isinstance(self.feats, torch.Tensor):
            self.feats = Features.from_tensor(self.feats)


def prepare(dataset: GroupDataset, backbone: Backbone | str, pretrained: str | None = None, device: str = "cpu",
            cache_dir: Path | None = None, feature_dtype: str = "float32", workers: int | None = None,
            progress: bool = True, verify_cache: bool = False) -> Prepared:
    """The dataset's image features through the cache (extracted only where missing or stale)."""
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, pretrained, device=device)
    feats = extract_features(backbone, dataset.images, cache_dir=cache_dir, dtype=feature_dtype, workers=workers,
                             progress=progress, verify=verify_cache)
    return Prepared(dataset, backbone, feats)


# --- groups ----------------------------------------------------------------------------

def text_features(backbone: Backbone, texts: list[str], templates=ZEROSHOT_TEMPLATES) -> torch.Tensor:
    """Normalised text features per text, averaged over templates (the usual CLIP ensemble)."""
    return torch.stack([F.normalize(backbone.encode_text([t.format(x) for t in templates], normalize=True).mean(0),
                                    dim=-1) for x in texts])


def attribute_scores(prep: Prepared, rows: np.ndarray, phrases, chunk: int = 65536) -> list[np.ndarray]:
    """Per attribute: cosine of each image with '<its class> <value phrase>' prompts (template ensemble)."""
    from .data.base import apply_phrase

    ds = prep.dataset
    texts = [torch.stack([text_features(prep.backbone, [apply_phrase(v, c) for v in values])
                          for c in ds.class_names]).cpu() for values in phrases]  # (C, V, D) per attribute
    scores = [[] for _ in phrases]
    for start in range(0, len(rows), chunk):  # a chunk of features at a time: memory stays flat
        part = rows[start:start + chunk]
        feats, y = prep.feats.rows(part), torch.as_tensor(ds.y[part])
        for out, text in zip(scores, texts):
            out.append(torch.einsum("nd,nvd->nv", feats, text[y]).numpy())
    return [np.concatenate(s) if s else np.zeros((0, len(v)), dtype=np.float32) for s, v in zip(scores, phrases)]


def resolve_grouping(ds: GroupDataset, options: GroupingOptions) -> GroupingOptions:
    """The options with the source decided, checked against what the dataset offers (no features needed)."""
    train_rows = ds.split_indices("train")
    if options.source is None and ds.attribute_names and not ds.has_group_labels and (ds.attrs >= 0).any():
        missing = int((ds.attrs < 0).any(axis=1).sum())
        columns = ", ".join(a for j, a in enumerate(ds.attribute_names) if (ds.attrs[:, j] < 0).any())
        raise UserError(f"{ds.name}: {missing} rows have no value for bias attribute {columns} while others have "
                        "one; fill them in, or pass --groups pseudo (or zeroshot, kmeans) to label every row "
                        "with a labeler")
    options = options.resolved(ds.has_group_labels)
    if options.source == "gt" and not ds.labelled(train_rows):
        raise UserError(f"--groups gt needs bias labels, but {ds.name} has none for its training split; "
                        "use --groups pseudo, zeroshot or kmeans")
    spec = labeler_spec(ds, options)
    if options.source in ("zeroshot", "pseudo") and spec.phrases is None:
        raise UserError(f"--groups {options.source} needs attribute phrases, and {ds.name} has none; pass "
                        '--bias-prompts "on land,on water" (one phrase per value) or use --groups kmeans')
    return options


def resolve_method_grouping(recipe, ds: GroupDataset, options: GroupingOptions) -> GroupingOptions:
    """`resolve_grouping`, plus what the method needs of the data (no features needed).

    A recipe that trains on the true groups of the validation split (DFR) is refused when
    that split lacks them or when `--groups` names a labeler; it never looks at the training
    split's labels. Zero-shot group prompts need value phrases for their groups.
    """
    if recipe.needs_groups == "val":
        val_rows = ds.split_indices("val")
        if not len(val_rows) or not ds.labelled(val_rows):
            raise UserError(f"--method {recipe.name} trains on the true group labels of the validation split, and "
                            f"{ds.name} has none there; use a method that takes --groups pseudo (groupcoop, "
                            "linear_probe_balanced, group_linear) or one without groups (coop, jtt, linear_probe)")
        if options.source not in (None, "gt"):
            raise UserError(f"--method {recipe.name} trains on the validation split's true groups, so --groups "
                            f"{options.source} does not apply to it; drop --groups (or use groupcoop, which trains "
                            "on pseudo-groups)")
        return options.model_copy(update={"source": "gt"})
    options = resolve_grouping(ds, options)
    if recipe.kind == "text" and recipe.prompts == "group" and labeler_spec(ds, options).phrases is None:
        why = "kmeans clusters have no names" if options.source == "kmeans" else f"{ds.name} has none"
        raise UserError(f"--method {recipe.name} writes one prompt per group from the groups' value phrases, and "
                        f"{why}; pass --bias-prompts \"on land,on water\" (one phrase per value) and --groups "
                        "zeroshot, pseudo or gt")
    return options


def labeler_spec(ds: GroupDataset, options: GroupingOptions) -> GroupSpec:
    """How the labeler's groups are numbered, named and phrased in prompts.

    A dataset without bias attributes takes them from --bias-prompts (one attribute per
    ';'-separated list) or, for kmeans, from --clusters (default 2); kmeans clusters have no names.
    """
    bias_prompts = options.bias_prompts
    if ds.attribute_names:
        if bias_prompts and [len(p) for p in bias_prompts] != ds.attr_sizes:
            raise UserError(f"--bias-prompts gives {[len(p) for p in bias_prompts]} phrases per attribute, but "
                            f"{ds.name} has attribute sizes {ds.attr_sizes}; give one phrase per value")
        values = ds.attribute_values
        phrases = bias_prompts or ds.attribute_phrases
    elif bias_prompts:
        values, phrases = bias_prompts, bias_prompts
    else:
        values, phrases = [[f"cluster {k}" for k in range(options.clusters or 2)]], None
    if options.source == "kmeans":
        sizes = labelers.group_sizes("kmeans", [len(v) for v in values], options.clusters)
        values, phrases = [[f"cluster {k}" for k in range(s)] for s in sizes], None
    as_tuple = lambda lists: tuple(tuple(x) for x in lists)  # noqa: E731
    return GroupSpec(tuple(ds.class_names), as_tuple(values), as_tuple(phrases) if phrases else None)


@dataclass
class GroupPlan:
    """Group ids used for training, selection and reporting, and where each came from."""

    source: str
    spec: GroupSpec
    train: np.ndarray | None  # None when the method does not read the training split's groups
    val_select: np.ndarray
    selection_source: str
    report: dict  # split -> (group ids, whether they are the true groups)
    quality: dict | None = None


def plan_groups(prep: Prepared, options: GroupingOptions, seed: int, train_groups: bool = True) -> GroupPlan:
    """The groups of every split. `train_groups=False` (a method that never trains on the training
    split, DFR) leaves the training split's labels unread: `train` is None, no quality report."""
    ds = prep.dataset
    options = resolve_grouping(ds, options) if train_groups else options
    source, spec = options.source, labeler_spec(ds, options)
    rows = {s: ds.split_indices(s) for s in ("train", "val", "test")}
    labelled: dict[str, np.ndarray] = {}

    def label(split: str) -> np.ndarray:
        r = rows[split]
        if split not in labelled:
            if source == "gt":
                labelled[split] = ds.groups[r]
            else:
                scores = attribute_scores(prep, r, spec.phrases) if source in ("zeroshot", "pseudo") else None
                feats = prep.feats.numpy(r) if labelers.LABELERS[source].needs_feats else None
                labelled[split] = labelers.assign_groups(
                    source, feats, ds.y[r], [len(v) for v in ds.attribute_values] or spec.sizes,
                    attr_scores=scores, clusters=options.clusters, seed=seed, variant=options.variant)
        return labelled[split]

    report = {s: ((ds.groups[rows[s]], True) if ds.labelled(rows[s]) else (label(s), False))
              for s in ("val", "test") if len(rows[s])}
    if report.get("val", (None, False))[1] and spec.sizes == ds.attr_sizes:
        val_groups, selection = report["val"][0], "true val groups"
    else:
        val_groups, selection = label("val"), f"{source} val groups"
    quality = None
    if train_groups and source != "gt" and ds.labelled(rows["train"]):
        quality = labelers.quality(ds.groups[rows["train"]], label("train"), names=ds.group_names())
    return GroupPlan(source, spec, label("train") if train_groups else None, val_groups, selection, report, quality)


# --- one method, one seed --------------------------------------------------------------

@dataclass
class Run:
    """A finished run: what it was asked to do, what it measured, and the classifier it made."""

    settings: RunSettings
    metrics: dict
    head: Head
    learner: PromptLearner | None = None

    def save(self, folder: Path, overwrite: bool = False) -> Path:
        """Write the run folder atomically (refusing a folder that holds anything but a groupcoop run)."""
        folder = Path(folder)
        check_replaceable(folder, overwrite)
        with output_lock(folder):
            write_run(folder, self)
        return folder


def evaluate_split(head: Head, prep: Prepared, split: str, groups: np.ndarray | None = None,
                   names: list[str] | None = None) -> dict:
    """The metrics.json block of one split: by the given groups, else the true groups, else per class."""
    ds = prep.dataset
    rows = ds.split_indices(split)
    pred = head.predict_classes(prep.feats.subset(rows))
    true_groups = groups is None and ds.labelled(rows)
    if groups is None:
        groups, names = (ds.groups[rows], ds.group_names()) if true_groups else (ds.y[rows], list(ds.class_names))
    train_counts = ds.group_counts("train") if true_groups and ds.has_group_labels else None
    return split_metrics(pred, ds.y[rows], groups, names, train_counts=train_counts,
                         family=ds.info.get("metric_family") if true_groups else None)


def check_run(settings: RunSettings, backbone: Backbone | None = None, allow_symlinks_outside: bool = False):
    """Every check that needs no image: dataset metadata, groups, backbone, prompt lengths.

    Returns (dataset, settings with the group source resolved, backbone).
    """
    from .data.registry import load_dataset

    dataset = load_dataset(settings.dataset, settings.root, allow_symlinks_outside=allow_symlinks_outside,
                           **settings.dataset_options)
    recipe, hp = get_method(settings.method), settings.params
    grouping = resolve_method_grouping(recipe, dataset, settings.groups)
    settings = settings.replace(groups=grouping.model_dump())
    if backbone is None:
        check_device(settings.device)
        backbone = load_backbone(settings.backbone, settings.pretrained, device=settings.device)
    if recipe.kind == "prompt":
        spec = labeler_spec(dataset, grouping)
        check_prompts_fit(backbone, _prompt_names(recipe, hp, spec), hp.n_ctx, hp.ctx_init)
    return dataset, settings, backbone


def run_method(prep: Prepared, settings: RunSettings, log=print) -> Run:
    """Train (or not) one method with one seed on prepared features.

    The recipe's kind picks the trainer: hand-written prompts (nothing trained), learned
    prompts (train.py's loop; JTT runs it twice), or a linear head (linear.py).
    """
    recipe, hp, seed = get_method(settings.method), settings.params, settings.seed
    ds, bb = prep.dataset, prep.backbone
    grouping = resolve_method_grouping(recipe, ds, settings.groups)
    plan = plan_groups(prep, grouping, seed, train_groups=recipe.needs_groups != "val")
    settings = settings.replace(groups={**settings.groups.model_dump(), "source": plan.source})
    rows = {s: ds.split_indices(s) for s in ("train", "val", "test")}
    learner, extra, trainable = None, {}, 0
    row_names = plan.spec.names() if recipe.prompts == "group" else list(ds.class_names)
    if recipe.kind == "text":
        texts = plan.spec.prompt_texts() if recipe.prompts == "group" else list(ds.class_names)
        aggregate = hp.aggregate if recipe.prompts == "group" else "max"
        head = Head.from_text(text_features(bb, texts, hp.templates), bb.logit_scale, ds.n_classes, aggregate)
    elif recipe.kind == "linear":
        head, trainable, extra = _fit_linear(recipe, hp, prep, plan, rows, seed, log)
    else:
        learner, trainable, extra = _train_prompt_method(recipe, hp, prep, plan, rows, seed, log)
        with torch.no_grad():
            head = Head.from_text(learner(), bb.logit_scale, ds.n_classes, hp.objective().aggregate)
    head.class_names = list(ds.class_names)
    head.row_names = row_names
    head.info = {"backbone": bb.identity, "method": recipe.name}
    splits = {}
    for split in ("val", "test"):
        if len(rows[split]):
            groups, true_labels = plan.report[split]
            splits[split] = evaluate_split(head, prep, split, *(() if true_labels else (groups, plan.spec.names())))
    val_trained = recipe.needs_groups == "val"
    metrics = {
        "method": recipe.name,
        "backbone": bb.identity,
        "dataset": ds.name,
        "groups_source": plan.source,
        "needs_groups": recipe.needs_groups,
        "val_used_for_training": val_trained,
        "selection_groups": plan.selection_source if not val_trained else "true val groups (half-splits of val)",
        "report_groups": {s: ("true groups" if plan.report[s][1] else f"{plan.source} groups") for s in splits},
        "trainable_params": int(trainable),
        "total_params": int(bb.parameter_count() + trainable),
        "seed": seed,
        "hyperparameters": hp.model_dump(),
        "grouping": settings.groups.model_dump(),
        "splits": splits,
        **({"group_quality": plan.quality} if plan.quality else {}),
        **extra,
    }
    if val_trained:
        metrics["note"] = ("val was used for training: its accuracies are training-set accuracies, "
                           "not held-out ones; compare methods on test")
    if learner is not None:
        learner.info.update({"classes": list(ds.class_names), "groups": head.row_names, "method": recipe.name,
                             "groups_source": plan.source, "aggregate": head.aggregate})
    return Run(settings, metrics, head, learner)


def _split_data(prep: Prepared, plan: GroupPlan, rows: dict) -> tuple[SplitData, SplitData]:
    ds = prep.dataset
    train = SplitData(prep.feats.subset(rows["train"]), ds.y[rows["train"]], plan.train)
    val = SplitData(prep.feats.subset(rows["val"]), ds.y[rows["val"]], plan.val_select)
    return train, val


def _epochs_block(result) -> dict:
    return {"best_epoch": result.best_epoch + 1, "epochs_run": len(result.history), "history": result.history}


def _train_prompt_method(recipe, hp, prep: Prepared, plan: GroupPlan, rows: dict, seed: int, log):
    """Learned prompts through train.py's loop: (learner, trainable parameters, metrics extras)."""
    ds, bb = prep.dataset, prep.backbone
    train, val = _split_data(prep, plan, rows)
    names = _prompt_names(recipe, hp, plan.spec)
    shared = hp.shared_ctx

    def new_learner() -> PromptLearner:
        return PromptLearner(bb, names, n_ctx=hp.n_ctx, init=hp.ctx_init, shared=shared,
                             generator=torch.Generator().manual_seed(seed))

    extra, repeats = {}, None
    if isinstance(hp, JTTParams):
        log(f"  JTT: first (ERM) run, {hp.first_epochs} epoch(s)")
        first = train_prompts(recipe, hp.model_copy(update={"epochs": hp.first_epochs}), new_learner(), train, val,
                              ds.n_classes, seed, log=log, keep="last")
        repeats, block = jtt_repeats(first.model.head(ds.n_classes, "max"), train, hp.upweight)
        names_by_group = plan.spec.names()
        block["errors_per_group"] = {names_by_group[g]: int(n) for g, n in
                                     enumerate(np.bincount(train.groups[repeats > 1], minlength=plan.spec.n_groups))}
        block["first_run_history"] = first.history
        extra["jtt"] = block
        log(f"  JTT: {block['errors']} training errors upsampled x{hp.upweight}; second run")
    result = train_prompts(recipe, hp, new_learner(), train, val, ds.n_classes, seed, log=log, repeats=repeats)
    if "groupdro" in result.extra:  # per group, by name (groups after the last one present in training: 0)
        block, names_by_group = result.extra["groupdro"], plan.spec.names()
        for key in ("final_q", "cumulative_group_loss"):
            block[key] = {name: (block[key][g] if g < len(block[key]) else 0.0) for g, name in enumerate(names_by_group)}
    extra.update(result.extra)
    extra.update(_epochs_block(result))
    return result.learner, result.learner.trainable_parameters(), extra


def jtt_repeats(head: Head, train: SplitData, upweight: int) -> tuple[np.ndarray, dict]:
    """JTT's upsampling: `upweight` copies of each training example the first model misclassifies, 1 otherwise."""
    errors = head.predict_classes(train.feats) != train.y
    repeats = np.where(errors, upweight, 1).astype(np.int64)
    return repeats, {"errors": int(errors.sum()),
                     "error_rate": float(errors.mean()), "upweight": upweight}


def _fit_linear(recipe, hp, prep: Prepared, plan: GroupPlan, rows: dict, seed: int, log):
    """A linear head on the image features: (head, trainable parameters, metrics extras)."""
    from . import linear

    ds = prep.dataset
    if isinstance(hp, DFRParams):
        val_groups, true_labels = plan.report["val"]
        assert true_labels  # resolve_method_grouping refused data without true val groups
        val = SplitData(prep.feats.subset(rows["val"]), ds.y[rows["val"]], val_groups)
        fit = linear.fit_dfr(hp, val, ds.n_classes, seed, log=log)
        return fit.head, fit.trainable, {"dfr": fit.details}
    train, val = _split_data(prep, plan, rows)
    if isinstance(hp, GroupLinearParams):
        result = linear.fit_group_linear(hp, train, val, ds.n_classes, plan.spec.n_groups, prep.feats.dim, seed,
                                         device=prep.backbone.device, log=log)
        head = result.model.head(ds.n_classes, hp.objective().aggregate)
        return head, result.model.trainable_parameters(), _epochs_block(result)
    fit = linear.fit_linear_probe(hp, train, val, ds.n_classes, seed,
                                  balanced=isinstance(hp, LinearProbeBalancedParams), log=log)
    return fit.head, fit.trainable, {"linear_probe": fit.details}


def _prompt_names(recipe, hp, spec: GroupSpec) -> list[str]:
    """The frozen text after the context: class names, or group names with their attribute words."""
    if recipe.prompts == "class":
        return list(spec.class_names)
    if hp.group_words:
        return spec.prompt_texts()
    return [spec.class_names[y] for y in spec.class_of(np.arange(spec.n_groups))]


# --- run folders -------------------------------------------------------------------------

def same_run(out: Path, settings: RunSettings) -> bool:
    """Whether `out` already holds a finished run of exactly these settings."""
    from .predict import read_run_config

    return read_run_config(out) == settings.dump() and (Path(out) / "metrics.json").is_file()


def fill_run_folder(folder: Path, run: Run) -> None:
    """Write a run's files into `folder` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(run.settings.dump(), sort_keys=False), encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps(run.metrics, indent=1) + "\n", encoding="utf-8")
    (folder / "report.txt").write_text(run_report(run.metrics) + "\n", encoding="utf-8")
    tokens = nearest_tokens(run.learner) if run.learner is not None else None
    (folder / "report.html").write_text(run_report_html(run.metrics, tokens), encoding="utf-8")
    run.head.save(folder / "head.safetensors")
    if run.learner is not None:
        run.learner.save(folder)


def write_run(out: Path, run: Run) -> None:
    """Write the run folder into a temporary sibling, then move it into place."""
    with atomic_folder(Path(out), kind="run") as tmp:
        fill_run_folder(tmp, run)


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


def write_groups(prep: Prepared, out: Path, options: GroupingOptions, seed: int = 0) -> str:
    """Label the training split with a labeler; write groups.csv and quality.json; return a summary."""
    import pandas as pd

    ds = prep.dataset
    plan = plan_groups(prep, options, seed)
    rows = ds.split_indices("train")
    names = plan.spec.names()
    table = pd.DataFrame({"index": rows, "y": ds.y[rows], "group": plan.train,
                          "group_name": [names[g] for g in plan.train]})
    if ds.has_group_labels:
        table["true_group"] = ds.groups[rows]
    quality = plan.quality or {"note": "the dataset has no bias labels to compare with"}
    with atomic_folder(Path(out), kind="groups") as tmp:
        atomic_text(tmp / "groups.csv", csv_text(table.to_dict("records")))
        atomic_text(tmp / "quality.json", json.dumps(quality, indent=1) + "\n")
    method = options.source
    if plan.quality:
        q = plan.quality
        return (f"{method} groups on {ds.name} train ({len(rows)} images): accuracy {100 * q['accuracy']:.1f}  "
                f"NMI {q['nmi']:.3f}  ARI {q['ari']:.3f}; wrote {out}/groups.csv and quality.json")
    return f"{method} groups on {ds.name} train ({len(rows)} images); no true groups to compare; wrote {out}/groups.csv"
