"""The progress line of each phase of a run, with what it works on in counts: load, discover, label,
train and evaluate here (extract is features/extract.py's, the epochs' the training loop's). The
pipeline hands them to `io.progress.info` (load) or to the run's `log` (the rest, so that a sweep's
runs, whose log is silent, say nothing)."""

from __future__ import annotations

import numpy as np

from ..data.base import SPLITS


def loaded(ds, backbone, seconds: float) -> str:
    sizes = {s: len(ds.split_indices(s)) for s in SPLITS}
    labelled = [s for s, n in sizes.items() if n and ds.labelled(ds.split_indices(s))]
    bias = f"{ds.n_groups} true groups (bias labels on {', '.join(labelled)})" if labelled else "no bias labels"
    splits = ", ".join(f"{s} {n}" for s, n in sizes.items() if n)
    return (f"load: {ds.name}: {len(ds.y)} images ({splits}), {ds.n_classes} classes, {bias}; backbone "
            f"{backbone.identity} ({seconds:.1f} s)")


def discovered(d: dict) -> str:
    """What `bias_prompts: auto` kept (metrics.json's `discovery` block), or that it kept nothing."""
    how = f"vocabulary {d['vocabulary']}, {d['score']} above {d['threshold']}"
    if not d.get("used"):
        return f"discover: kept nothing; {how}; groups by {d['fallback']}"
    scores = {c["attribute"]: c["score"] for c in d.get("candidates", [])}
    kept = ", ".join(f"{a} (score {scores[a]:.3f})" if a in scores else a for a in d["used"])
    return f"discover: kept {kept}; {how}"


def labelled(plan) -> str:
    """The groups a run trains on (or selects with): source, shape, smallest training group."""
    spec = plan.spec
    shape = " x ".join([f"{len(spec.class_names)} classes", *("/".join(v) for v in spec.value_names)])
    text = f"label: {plan.source} groups, {spec.n_groups} ({shape})"
    if plan.train is not None and len(plan.train):
        counts = np.bincount(plan.train[plan.train >= 0], minlength=spec.n_groups)
        text += f", on {len(plan.train)} training images (smallest group {int(counts.min())})"
    return f"{text}; model selection on {plan.selection.used}"


def training(settings, plan) -> str:
    recipe = settings.recipe
    if not recipe.learned:
        return f"train: {recipe.name}: nothing to learn (hand-written prompts)"
    epochs = getattr(settings.params, "epochs", None) if recipe.start is not None else None
    rows = len(plan.train) if plan.train is not None else "the validation split's"
    return (f"train: {recipe.name} (seed {settings.seed}) on {rows} images, {plan.spec.n_groups} groups"
            + (f", up to {epochs} epochs" if epochs else ""))


def evaluated(metrics: dict, seconds: float) -> str:
    parts = []
    for split, m in metrics["splits"].items():
        worst = "-" if m.get("worst_group_acc") is None else f"{m['worst_group_acc']:.1%}"
        n = sum(g["n"] for g in m["groups"])
        parts.append(f"{split} worst-group {worst}, average {m['avg_acc']:.1%} ({n} images, "
                     f"{metrics['report_groups'][split]})")
    return f"evaluate: {'; '.join(parts) or 'no val or test split'} ({seconds:.1f} s)"
