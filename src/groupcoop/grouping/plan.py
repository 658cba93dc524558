"""Group planning: where a run's groups come from, resolved once, and the groups of every split.

`resolve_method_grouping` decides the group source from the dataset and the method, and
`check_selection` the model-selection rule against them (no features needed; `pipeline.check_run`
calls both once, before any image is read, and every later stage trusts the answer).
`labeler_spec` says how those groups are numbered, named and put into prompts. `plan_groups`
then labels the splits (with features, for the labelers that need them) into a `GroupPlan`: the
training groups, the validation partition model selection uses (`Selection`), and the groups
each split is reported by.

With `bias_prompts: auto` the labeler's attributes are discovered on the training split
(discovery.py) when the groups are planned: they may have nothing to do with the dataset's own
attributes, so every split without true groups is reported by the labeler's, the splits with
true groups by those; where nothing is discovered, `labelfree.AUTO_FALLBACK_LABELER` (a labeler
that needs no phrases) makes the groups, and the plan's `discovery` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import labelers
from .adaptive import Reference
from ..io.csv_safe import csv_text
from ..data.base import SPLITS, GroupDataset, GroupSpec, apply_phrase
from ..errors import UserError
from ..io.folders import atomic_folder
from ..io.write import atomic_text
from .options import GroupingOptions
from .quality import quality as group_quality
from .labelfree import AUTO_FALLBACK_LABELER, SELECTION_FALLBACK
from .labelers import FILE_SOURCE

GIVEN = ("gt", FILE_SOURCE)  # sources that read groups given with the data, and label no split without them


# --- resolved once, before any image is read -------------------------------------------------

def _hidden_note(ds: GroupDataset, split: str) -> str:
    return " (hidden by hide_bias_labels)" if split in ds.hidden_splits else ""


def resolve_grouping(ds: GroupDataset, options: GroupingOptions) -> GroupingOptions:
    """The options with the source decided, checked against what the dataset offers (no features needed)."""
    train_rows = ds.split_indices("train")
    # hidden labels are not missing ones, nor are those of a split without any (the label-free case)
    free = [code for s, code in SPLITS.items() if s in ds.hidden_splits or not (ds.attrs[ds.split == code] >= 0).any()]
    attrs = ds.attrs[~np.isin(ds.split, free)]
    if options.source is None and ds.attribute_names and (attrs < 0).any() and (attrs >= 0).any():
        missing = int((attrs < 0).any(axis=1).sum())
        columns = ", ".join(a for j, a in enumerate(ds.attribute_names) if (attrs[:, j] < 0).any())
        raise UserError(f"{ds.name}: {missing} rows have no value for bias attribute {columns} while others have "
                        "one; fill them in, or pass --groups pseudo (or zeroshot, kmeans) to label every row "
                        "with a labeler")
    options = options.resolved(ds.labelled(train_rows))
    if options.source == FILE_SOURCE:
        return _file_grouping(ds, options)
    if options.source == "gt" and not ds.labelled(train_rows):
        raise UserError(f"--groups gt needs bias labels, but {ds.name} has none for its training split"
                        f"{_hidden_note(ds, 'train')}; use --groups pseudo, zeroshot or kmeans")
    if options.discovers:
        if not labelers.LABELERS[options.source].needs_scores:
            raise UserError(f"--bias-prompts auto discovers the attributes a labeler names groups by, and --groups "
                            f"{options.source} names none; use --groups pseudo or zeroshot with it")
        from .discovery import load_vocabulary

        load_vocabulary(options.vocabulary, ds)  # a bad file is refused now, before any image is read
        return options
    if options.vocabulary is not None:
        raise UserError("--vocabulary is the vocabulary of bias discovery; it applies with --bias-prompts auto")
    spec = labeler_spec(ds, options)
    if labelers.LABELERS[options.source].needs_scores and spec.phrases is None:
        raise UserError(f"--groups {options.source} needs attribute phrases, and {ds.name} has none; pass "
                        '--bias-prompts "on land,on water" (one phrase per value), --bias-prompts auto (discovered) '
                        "or use --groups kmeans")
    return options


def _file_grouping(ds: GroupDataset, options: GroupingOptions) -> GroupingOptions:
    """`source: file`: the file read and matched now (no features needed); no labeler knob applies."""
    from .from_file import read_group_file

    given = [flag for flag, value in (("--bias-prompts", options.bias_prompts), ("--clusters", options.clusters),
                                      ("--vocabulary", options.vocabulary)) if value is not None]
    if given:
        raise UserError(f"--groups file: reads the groups from {options.file}, so {given[0]} (a labeler's setting) "
                        f"does not apply; drop {given[0]}")
    read_group_file(ds, options.file)
    return options


def resolve_method_grouping(recipe, ds: GroupDataset, options: GroupingOptions) -> GroupingOptions:
    """`resolve_grouping`, plus what the method needs of the data (no features needed).

    A recipe that trains on the validation split's groups (DFR) never looks at the training
    split's bias labels. Where val has true groups it trains on them, and a labeler is refused (it would
    silently make it another method); where val has none, a labeler's val groups stand in for them
    (`--groups`, by default the label-free one: DFR with inferred groups).
    """
    if recipe.needs_groups != "val":
        return resolve_grouping(ds, options)
    if options.source == FILE_SOURCE:
        raise UserError(f"--method {recipe.name} trains on the validation split's groups, and --groups file: gives the "
                        "training split's; drop --groups, or use a method that trains on the training split")
    val_rows = ds.split_indices("val")
    if not len(val_rows):
        raise UserError(f"--method {recipe.name} trains on the validation split, and {ds.name} has none; "
                        "use a dataset with a val split, or a method that needs no groups (`groupcoop methods`)")
    if not ds.labelled(val_rows):
        if options.source == "gt":
            raise UserError(f"--method {recipe.name} trains on the validation split's groups, and --groups gt cannot "
                            f"label {ds.name}'s validation split, which has no bias labels{_hidden_note(ds, 'val')}; "
                            "drop --groups (pseudo-groups are used) or pass --groups pseudo, zeroshot or kmeans")
        return resolve_grouping(ds, options if options.source else options.model_copy(update={"source": "pseudo"}))
    if options.discovers:
        raise UserError(f"--method {recipe.name} trains on the validation split's true groups, so --bias-prompts "
                        "auto (attributes for a labeler) does not apply to it; drop --bias-prompts")
    if options.source not in (None, "gt"):
        raise UserError(f"--method {recipe.name} trains on the validation split's true groups, so --groups "
                        f"{options.source} does not apply to it; drop --groups, or hide them "
                        "(--hide-bias-labels val) to train on the labeler's val groups")
    return options.model_copy(update={"source": "gt"})


def check_selection(recipe, ds: GroupDataset, options: GroupingOptions, selection: str) -> None:
    """Refuse a model-selection rule the run cannot follow (no features needed): any rule but `auto`
    for a method that tunes on the val groups it trains on by its own rule (DFR), and `labeler` where the
    labeler is gt and val has no bias labels."""
    if recipe.needs_groups == "val" and selection != "auto":
        raise UserError(f"--method {recipe.name} trains on the validation split's groups and tunes itself on "
                        f"held-out halves of them, so --selection {selection} does not apply to it; drop --selection")
    val_rows = ds.split_indices("val")
    if selection == "labeler" and options.source == FILE_SOURCE:
        raise UserError("--selection labeler selects on the labeler's validation groups, and --groups file: gives the "
                        "training split's only; pass --selection auto, worst_class or average")
    if selection == "labeler" and options.source == "gt" and len(val_rows) and not ds.labelled(val_rows):
        raise UserError(f"--selection labeler selects on the labeler's validation groups, and --groups gt cannot "
                        f"label {ds.name}'s validation split, which has no bias labels{_hidden_note(ds, 'val')}; "
                        "pass --selection worst_class or average, or --groups pseudo")


def labeler_spec(ds: GroupDataset, options: GroupingOptions) -> GroupSpec:
    """How the labeler's groups are numbered, named and phrased in prompts.

    A dataset without bias attributes takes them from --bias-prompts (one attribute per
    ';'-separated list) or, for an unnamed labeler (kmeans), from --clusters (default 2); an
    unnamed labeler's groups are "cluster k", never the dataset's value names, and no phrases.
    (With `bias_prompts: auto` the attributes are known only once discovered: `plan_groups`.)
    """
    if options.discovers:
        raise ValueError("bias_prompts auto: the labeler's attributes are discovered in plan_groups")
    if options.source == FILE_SOURCE:
        from .from_file import read_group_file

        return read_group_file(ds, options.file)[0]
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
        values, phrases = _cluster_names([options.clusters or 2]), None
    if labelers.get_labeler(options.source).unnamed:
        values, phrases = _cluster_names(labelers.group_sizes(options.source, [len(v) for v in values],
                                                              options.clusters)), None
    as_tuple = lambda lists: tuple(tuple(x) for x in lists)  # noqa: E731
    return GroupSpec(tuple(ds.class_names), as_tuple(values), as_tuple(phrases) if phrases else None)


def _cluster_names(sizes) -> list[list[str]]:
    """The value names of unnamed groups: "cluster 0", "cluster 1", ... per attribute."""
    return [[f"cluster {k}" for k in range(s)] for s in sizes]


# --- the groups of every split ------------------------------------------------------------------

def attribute_scores(prep, rows: np.ndarray, phrases, chunk: int = 65536) -> list[np.ndarray]:
    """Per attribute: cosine of each image with '<its class> <value phrase>' prompts (template ensemble)."""
    import torch

    ds, bb = prep.dataset, prep.backbone
    texts = [torch.stack([bb.text_features([apply_phrase(v, c) for v in values]) for c in ds.class_names]).cpu()
             for values in phrases]  # (C, V, D) per attribute
    scores = [[] for _ in phrases]
    for start in range(0, len(rows), chunk):  # a chunk of features at a time: memory stays flat
        part = rows[start:start + chunk]
        feats, y = prep.feats.rows(part), torch.as_tensor(ds.y[part])
        for out, text in zip(scores, texts):
            out.append(torch.einsum("nd,nvd->nv", feats, text[y]).numpy())
    return [np.concatenate(s) if s else np.zeros((0, len(v)), dtype=np.float32) for s, v in zip(scores, phrases)]


@dataclass(frozen=True)
class Selection:
    """How a run's validation split selects its model: the rule asked for (`choices.Selection`),
    what it used, in words (metrics.json `selection_groups`), and the name of its worst-part
    accuracy in histories (None for `average`, which has none)."""

    rule: str
    used: str
    key: str | None

    @property
    def describe(self) -> str:
        """The rule in words, for logs and reports."""
        what = {"val_worst_group_acc": "worst-group", "val_worst_class_acc": "worst-class"}.get(self.key)
        return f"validation {what} accuracy (ties: average)" if what else "validation average accuracy"


@dataclass
class GroupPlan:
    """Group ids used for training, selection and reporting, and where each came from."""

    source: str
    spec: GroupSpec
    train: np.ndarray | None  # None when the method does not read the training split's groups
    val_select: np.ndarray  # the validation partition selection takes the worst part of (groups, classes, or one)
    selection: Selection
    report: dict  # split -> (group ids, whether they are the true groups)
    quality: dict | None = None
    discovery: dict | None = None  # bias_prompts auto: what was discovered (metrics.json `discovery`)

    def per_class(self, split: str) -> bool:
        """Whether `report[split]` holds classes: a gt (or file) plan's split without bias labels."""
        return self.source in GIVEN and not self.report[split][1]

    def report_names(self, split: str) -> list[str]:
        """The names of the ids `report[split]` holds: the labeler's groups, or the classes."""
        return list(self.spec.class_names) if self.per_class(split) else self.spec.names()

    def report_words(self, split: str) -> str:
        """What `report[split]` holds, in words (metrics.json `report_groups`)."""
        if self.report[split][1]:
            return "true groups"
        return "classes (no bias labels)" if self.per_class(split) else f"{self.source} groups"


def _discovered(prep, options: GroupingOptions, seed: int) -> tuple[str, GroupSpec, dict]:
    """Source, spec and report of `bias_prompts: auto`: the discovered attributes, or the fallback
    labeler's unnamed clusters (`clusters` per class, default 2) when nothing spurious was found.

    An unnamed attribute (the image features' own partition, unnamed.py) is used only by a labeler
    with a whole-split step (pseudo's adaptive variant), which takes its values from the class margins."""
    from .discovery import discover_for_run

    labels_unnamed = labelers.LABELERS[options.source].whole_split(options.variant) is not None
    found = discover_for_run(prep, options, seed, image_side=labels_unnamed)
    classes = tuple(prep.dataset.class_names)
    if found.used:
        phrases = tuple(tuple(p) for p in found.phrases)
        spec = GroupSpec(classes, tuple(tuple(v) for v in found.value_names), phrases)
        return options.source, spec, found.report(None)
    fallback = AUTO_FALLBACK_LABELER
    spec = GroupSpec(classes, tuple(map(tuple, _cluster_names([options.clusters or 2]))), None)
    return fallback, spec, found.report(fallback)


def plan_groups(prep, options: GroupingOptions, seed: int, train_groups: bool = True,
                selection: str = "auto") -> GroupPlan:
    """The groups of every split, from resolved options (`resolve_method_grouping`), and the
    validation partition of the selection rule (`check_selection` has refused what cannot be).

    `train_groups=False` (a method that never trains on the training split, DFR) leaves the
    training split's labels unread: `train` is None, no quality report."""
    if options.source is None:
        raise ValueError("plan_groups needs resolved grouping options (resolve_method_grouping)")
    ds = prep.dataset
    discovery, from_file = None, None
    if options.discovers:
        source, spec, discovery = _discovered(prep, options, seed)
    elif options.source == FILE_SOURCE:
        from .from_file import read_group_file

        source, (spec, from_file) = FILE_SOURCE, read_group_file(ds, options.file)
    else:
        source, spec = options.source, labeler_spec(ds, options)
    rows = {s: ds.split_indices(s) for s in ("train", "val", "test")}
    labelled: dict[str, np.ndarray] = {}

    whole_split = source in labelers.LABELERS and labelers.LABELERS[source].whole_split(options.variant) is not None
    kept: dict[str, tuple] = {}  # the training split's inputs, kept only for a whole-split variant

    def labeler_inputs(split: str) -> tuple:
        """(zero-shot scores, features) of a split, each None where the labeler reads none."""
        if split in kept:
            return kept[split]
        r, needs = rows[split], labelers.LABELERS[source]
        found = (attribute_scores(prep, r, spec.phrases) if needs.needs_scores else None,
                 prep.feats.numpy(r) if needs.needs_feats else None)
        if whole_split and split == "train":
            kept[split] = found
        return found

    def label(split: str) -> np.ndarray:
        r = rows[split]
        if split not in labelled:
            if source == "gt":
                labelled[split] = ds.groups[r]
            elif source == FILE_SOURCE:
                if split != "train":
                    raise ValueError("a groups file gives the training split's groups only")
                labelled[split] = from_file
            else:
                scores, feats = labeler_inputs(split)
                reference = None
                if whole_split and split != "train":
                    train_scores, train_feats = labeler_inputs("train")
                    reference = Reference(train_feats, ds.y[rows["train"]], train_scores)
                labelled[split] = labelers.assign_groups(
                    source, feats, ds.y[r], spec.sizes, attr_scores=scores, clusters=options.clusters, seed=seed,
                    variant=options.variant, reference=reference)
        return labelled[split]

    def reported(split: str) -> tuple[np.ndarray, bool]:
        if ds.labelled(rows[split]):
            return ds.groups[rows[split]], True
        # gt cannot label a split without bias labels (hidden, or none in the data): it is reported per class
        return (ds.y[rows[split]] if source in GIVEN else label(split)), False

    report = {s: reported(s) for s in ("val", "test") if len(rows[s])}
    val_groups, chosen = _selection(selection, source, report.get("val", (None, False))[1], rows["val"], ds, label)
    quality = None
    if train_groups and source != "gt" and ds.labelled(rows["train"]):
        quality = group_quality(ds.groups[rows["train"]], label("train"), names=ds.group_names(),
                                pred_names=spec.names())
    return GroupPlan(source, spec, label("train") if train_groups else None, val_groups, chosen, report, quality,
                     discovery)


def _selection(rule: str, source: str, val_labelled: bool, val_rows: np.ndarray, ds: GroupDataset,
               label) -> tuple[np.ndarray, Selection]:
    """The validation partition a rule selects on, and the Selection saying so.

    `auto`: the true groups where val has them; else `labelfree.SELECTION_FALLBACK`, except
    that gt (or a groups file) cannot label val, so then worst_class."""
    used = rule
    if rule == "auto":
        used = "true" if val_labelled else SELECTION_FALLBACK if source not in GIVEN else "worst_class"
    if used == "true":
        return ds.groups[val_rows], Selection(rule, "true val groups", "val_worst_group_acc")
    if used == "labeler":
        return label("val"), Selection(rule, f"{source} val groups", "val_worst_group_acc")
    if used == "worst_class":
        return ds.y[val_rows], Selection(rule, "val classes (worst-class accuracy)", "val_worst_class_acc")
    return np.zeros(len(val_rows), dtype=np.int64), Selection(rule, "all of val (average accuracy)", None)


def write_groups(prep, out: Path, options: GroupingOptions, seed: int = 0) -> str:
    """Label the training split with a labeler; write groups.csv (a row per image: its index and path,
    which `--groups file:groups.csv` matches by) and quality.json; return a summary."""
    import pandas as pd

    from .from_file import image_keys

    ds = prep.dataset
    plan = plan_groups(prep, options, seed)
    rows = ds.split_indices("train")
    names = plan.spec.names()
    keys = image_keys(ds)
    table = pd.DataFrame({"index": rows, "path": [keys[r] for r in rows], "y": ds.y[rows], "group": plan.train,
                          "group_name": [names[g] for g in plan.train]})
    if ds.has_group_labels:
        table["true_group"] = ds.groups[rows]
    quality = plan.quality or {"note": "the dataset has no bias labels to compare with"}
    if plan.discovery:
        quality = {**quality, "discovery": plan.discovery}
    with atomic_folder(Path(out), kind="groups") as tmp:
        atomic_text(tmp / "groups.csv", csv_text(table.to_dict("records")))
        atomic_text(tmp / "quality.json", json.dumps(quality, indent=1) + "\n")
    method = plan.source
    if plan.quality:
        q = plan.quality
        return (f"{method} groups on {ds.name} train ({len(rows)} images): accuracy {100 * q['accuracy']:.1f}  "
                f"NMI {q['nmi']:.3f}  ARI {q['ari']:.3f}; wrote {out}/groups.csv and quality.json")
    return f"{method} groups on {ds.name} train ({len(rows)} images); no true groups to compare; wrote {out}/groups.csv"
