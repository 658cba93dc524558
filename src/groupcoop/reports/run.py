"""A run's report.html: summary, per-group accuracy, training, bias discovery, pseudo-group
quality and learned-prompt sections, from the run's metrics.json content.

What it reads from metrics.json: method, dataset, backbone, groups_source, selection,
selection_groups, hidden_bias_labels, report_groups, trainable_params, total_params, seed,
hyperparameters, best_epoch, epochs_run, splits.<split>.{avg_acc, worst_group_acc,
unbiased_acc, any other number, groups[{name, n, acc}], empty_groups}, history[{epoch
(0-based), loss, val_worst_group_acc or val_worst_class_acc, val_avg_acc}], discovery
(`grouping.plan.plan_groups`) and group_quality (`grouping.quality.quality`). Missing keys are
left out of the page, never guessed.
"""

from __future__ import annotations

import math

import numpy as np

from ..methods.base import SCORE_WORDS
from ..metrics import HEADLINE
from .html import (METHOD_COLOURS, SPLIT_COLOURS, esc, figure, img, kv_table, mpl_text, number, page, pct, png,
                   section, table)

LABELS = {**HEADLINE, "gap": "gap (average − worst)", "train_weighted_acc": "train-weighted"}


def _headline_keys(splits: dict) -> list[str]:
    keys = [k for k in (*HEADLINE, "gap") if any(k in block for block in splits.values())]
    for block in splits.values():
        for k, v in block.items():
            if k not in keys and number(v) is not None:
                keys.append(k)
    return keys


def _summary_section(metrics: dict) -> str:
    pairs = []
    for key, label in (("method", "method"), ("dataset", "dataset"), ("backbone", "backbone"),
                       ("groups_source", "training groups"), ("selection", "selection rule"),
                       ("selection_groups", "model selection on")):
        if key in metrics:
            pairs.append((label, metrics[key]))
    if metrics.get("hidden_bias_labels"):
        pairs.append(("bias labels hidden on", ", ".join(metrics["hidden_bias_labels"])))
    if isinstance(metrics.get("report_groups"), dict):
        pairs.append(("groups reported", "; ".join(f"{s}: {g}" for s, g in metrics["report_groups"].items())))
    if "trainable_params" in metrics:
        text = f"{metrics['trainable_params']:,}"
        if metrics.get("total_params"):
            text += (f" of {metrics['total_params']:,} "
                     f"({100 * metrics['trainable_params'] / metrics['total_params']:.3g}%)")
        pairs.append(("trainable parameters", text))
    if "seed" in metrics:
        pairs.append(("seed", metrics["seed"]))
    if "best_epoch" in metrics:
        text = f"{metrics['best_epoch']}"
        if "epochs_run" in metrics:
            text += f" of {metrics['epochs_run']} run"
        pairs.append(("selected epoch", text))
    parts = [kv_table(pairs)]

    splits = metrics.get("splits") or {}
    if splits:
        keys = _headline_keys(splits)
        header = ["split"] + [esc(LABELS.get(k, k)) for k in keys]
        rows = [[esc(s)] + [pct(block.get(k)) for k in keys] for s, block in splits.items()]
        parts.append("<h3>Accuracy (%)</h3>" + table(header, rows, numeric=set(range(1, len(header)))))
        for s, block in splits.items():
            if block.get("empty_groups"):
                names = [g["name"] for g in block.get("groups", []) if g.get("n") == 0]
                parts.append(f'<p class="note">{esc(s)}: no images in {esc(", ".join(names))}; '
                             "left out of worst-group and unbiased accuracy.</p>")
    if isinstance(metrics.get("hyperparameters"), dict) and metrics["hyperparameters"]:
        items = list(metrics["hyperparameters"].items())
        per_column = max(6, math.ceil(len(items) / 3))
        columns = [kv_table(items[i:i + per_column]) for i in range(0, len(items), per_column)]
        parts.append('<h3>Hyper-parameters</h3><div class="kvgrid">' + "".join(columns) + "</div>")
    return section("summary", "Summary", "\n".join(parts))


def _group_rows(splits: dict) -> list[str]:
    """Group names in order of first appearance over the splits."""
    names = []
    for block in splits.values():
        for g in block.get("groups", []):
            if g["name"] not in names:
                names.append(g["name"])
    return names


def _groups_chart(splits: dict) -> bytes:
    names = _group_rows(splits)
    split_names = list(splits)
    n_bars = len(names) * len(split_names)
    fig = figure(9.5, 1.2 + 0.3 * n_bars + 0.15 * len(names))
    ax = fig.add_subplot()
    height = 0.8 / len(split_names)
    for j, split in enumerate(split_names):
        by_name = {g["name"]: g for g in splits[split].get("groups", [])}
        colour = SPLIT_COLOURS.get(split, METHOD_COLOURS[j % len(METHOD_COLOURS)])
        for i, name in enumerate(names):
            y = i - 0.4 + height * (j + 0.5)
            g = by_name.get(name)
            if g is None:
                continue
            acc = number(g.get("acc"))
            ax.barh(y, 0 if acc is None else 100 * acc, height * 0.92, color=colour,
                    label=split if i == 0 else None)
            n = f"{g['n']:,}" if isinstance(g.get("n"), int) else "?"
            text = f"empty (n={n})" if acc is None else f"{100 * acc:.1f}  n={n}"
            ax.text((0 if acc is None else 100 * acc) + 1, y, text, va="center", fontsize=8)
    ax.set_yticks(range(len(names)), [mpl_text(n) for n in names], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 122)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("accuracy (%)")
    ax.grid(axis="x", color="#e5e8eb")
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [h for h in ax.get_legend_handles_labels()[0]]
    if handles:
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_title("accuracy per group (n = images in the split)", fontsize=10)
    return png(fig)


def _groups_section(metrics: dict) -> str:
    splits = {s: b for s, b in (metrics.get("splits") or {}).items() if b.get("groups")}
    if not splits:
        return section("groups", "Per-group accuracy", '<p class="note">no per-group numbers in this run</p>')
    names = _group_rows(splits)
    header = ["group"]
    for s in splits:
        header += [f"{esc(s)} n", f"{esc(s)} acc"]
    worst = {}
    for s, block in splits.items():
        accs = [(g["acc"], g["name"]) for g in block["groups"] if number(g.get("acc")) is not None]
        worst[s] = min(accs)[1] if accs else None
    rows = []
    for name in names:
        row = [esc(name)]
        for s, block in splits.items():
            g = next((g for g in block["groups"] if g["name"] == name), None)
            if g is None:
                row += ["", ""]
                continue
            acc = pct(g.get("acc")) if g.get("acc") is not None else "empty"
            row += [f"{g.get('n', 0):,}", (acc, "worst") if worst[s] == name else acc]
        rows.append(row)
    body = [img(_groups_chart(splits), "per-group accuracy bars for " + ", ".join(splits)),
            table(header, rows, numeric=set(range(1, len(header)))),
            '<p class="note">worst group of each split in red.</p>']
    if isinstance(metrics.get("report_groups"), dict):
        groups = "; ".join(f"{s}: {g}" for s, g in metrics["report_groups"].items())
        body.append(f'<p class="note">groups: {esc(groups)}</p>')
    return section("groups", "Per-group accuracy", "\n".join(body))


# the history's keys for the worst part of val (groups or classes); val_avg_acc is every rule's tie-break
WORST_KEYS = tuple(k for k in SCORE_WORDS if k != "val_avg_acc")


def _worst_key(history: list[dict]) -> str | None:
    """The history's worst-part accuracy (groups or classes, by the selection rule), if any."""
    return next((k for k in WORST_KEYS if any(k in h for h in history)), None)


def _training_chart(history: list[dict], best_epoch: int | None) -> bytes:
    from matplotlib.ticker import MaxNLocator

    epochs = [int(h.get("epoch", i)) + 1 for i, h in enumerate(history)]
    worst_key = _worst_key(history)

    def series(key, scale=1.0):
        return [scale * v if (v := number(h.get(key))) is not None else float("nan") for h in history]

    fig = figure(10, 3.4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, series("loss"), marker="o", ms=3, color="#636363")
    ax_loss.set_title("training loss", fontsize=10)
    if worst_key:
        ax_acc.plot(epochs, series(worst_key, 100), marker="o", ms=3, color="#b42318",
                    label=f"val {SCORE_WORDS[worst_key]}")
    ax_acc.plot(epochs, series("val_avg_acc", 100), marker="o", ms=3, color="#2171b5", label="val average")
    ax_acc.set_title("validation accuracy (%)", fontsize=10)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 tick
        ax.grid(color="#e5e8eb")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#31a354", ls="--", lw=1.2,
                       label=f"selected (epoch {best_epoch})" if ax is ax_acc else None)
    if best_epoch is not None and best_epoch in epochs:
        i = epochs.index(best_epoch)
        wg = series(worst_key or "val_avg_acc", 100)[i]
        if not math.isnan(wg):
            ax_acc.plot([best_epoch], [wg], marker="*", ms=12, color="#31a354")
    ax_acc.legend(fontsize=8, frameon=False, loc="lower right")
    return png(fig)


def _training_section(metrics: dict) -> str:
    history = metrics["history"]
    best = metrics.get("best_epoch")
    body = [img(_training_chart(history, best), "training loss and validation accuracy per epoch")]
    if best is not None and 1 <= best <= len(history):
        h = history[best - 1]
        loss = number(h.get("loss"))
        worst_key = _worst_key(history)
        rule = f"validation {SCORE_WORDS[worst_key]} accuracy" if worst_key else "validation average accuracy"
        worst = f"val {SCORE_WORDS[worst_key]} {pct(h.get(worst_key))}%, " if worst_key else ""
        body.append(f"<p>Selected epoch <b>{esc(best)}</b> of {len(history)} run (highest {rule}): {worst}"
                    f"val average {pct(h.get('val_avg_acc'))}%"
                    + ("" if loss is None else f", training loss {loss:.4f}") + ".</p>")
    return section("training", "Training", "\n".join(body))


def _confusion_chart(q: dict) -> bytes | None:
    conf = q.get("confusion")
    if not conf or not conf.get("matrix"):
        return None
    matrix = np.asarray(conf["matrix"], dtype=np.float64)
    true_ids, pred_ids = list(conf["true"]), list(conf["pred"])
    names = {g["group"]: g.get("name", str(g["group"])) for g in q.get("groups", [])}
    matched = [g.get("pred") for g in q.get("groups", [])]
    # columns: each true group's matched labeler group first (agreements on the diagonal)
    order = [pred_ids.index(p) for p in matched if p in pred_ids]
    order += [j for j in range(len(pred_ids)) if j not in order]
    matrix = matrix[:, order]
    pred_names = conf.get("pred_names") or [str(p) for p in pred_ids]  # older runs: ids only
    cols = [pred_names[j] for j in order]
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    nr, nc = matrix.shape
    fig = figure(min(3.5 + 0.85 * nc, 16), min(1.6 + 0.45 * nr, 14))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    fontsize = 8 if nr * nc <= 64 else 6
    for i in range(nr):
        for j in range(nc):
            ax.text(j, i, f"{int(matrix[i, j]):,}", ha="center", va="center", fontsize=fontsize,
                    color="white" if share[i, j] > 0.6 else "#1f2328")
    ax.set_yticks(range(nr), [mpl_text(names.get(t, t)) for t in true_ids], fontsize=8)
    ax.set_xticks(range(nc), [mpl_text(c) for c in cols], fontsize=8)
    ax.set_ylabel("true group")
    ax.set_xlabel("labeler group" if conf.get("pred_names") else "labeler group id")
    fig.colorbar(im, ax=ax, label="share of the true group", shrink=0.9)
    ax.set_title("labeler groups vs true groups (training split)", fontsize=10)
    return png(fig)


def _pseudo_section(metrics: dict) -> str:
    q = metrics["group_quality"]
    recalls = [g["recall"] for g in q.get("groups", []) if number(g.get("recall")) is not None]
    min_recall = q.get("min_recall", min(recalls) if recalls else None)
    source = metrics.get("groups_source", "labeler")
    numbers = [
        ("accuracy (best one-to-one matching)", pct(q.get("accuracy"))),
        ("accuracy (same ids)", pct(q.get("named_accuracy"))),
        ("NMI", f"{q['nmi']:.3f}" if number(q.get("nmi")) is not None else "–"),
        ("ARI", f"{q['ari']:.3f}" if number(q.get("ari")) is not None else "–"),
        ("min per-group recall", pct(min_recall)),
        ("training images compared", f"{q['n']:,}" if "n" in q else "–"),
    ]
    body = [f"<p>How the <code>{esc(source)}</code> groups used for training agree with the dataset's true "
            "groups on the training split (accuracies in %).</p>",
            table(["measure", "value"], [[esc(k), v] for k, v in numbers], numeric={1})]
    chart = _confusion_chart(q)
    if chart is not None:
        body.append(img(chart, "confusion heatmap of labeler groups against true groups"))
        body.append('<p class="note">cell: number of images; colour: share of the true group (row). '
                    "Columns are ordered so that each true group's matched labeler group is on the diagonal.</p>")
    if q.get("groups"):
        rows = [[esc(g.get("name", g["group"])), f"{g.get('n_true', 0):,}",
                 esc("–" if g.get("pred") is None else g.get("pred_name", g["pred"])), f"{g.get('n_pred', 0):,}",
                 pct(g.get("precision")), pct(g.get("recall"))] for g in q["groups"]]
        body.append(table(["true group", "n", "matched labeler group", "its n", "precision", "recall"],
                          rows, numeric={1, 3, 4, 5}))
    return section("pseudo-groups", "Pseudo-group quality", "\n".join(body))


def _discovery_section(metrics: dict, figures: dict[str, bytes]) -> str:
    d = metrics["discovery"]
    used = set(d.get("used") or [])
    intro = (f"<p>Attributes of the vocabulary <code>{esc(d.get('vocabulary', '?'))}</code> ranked by how strongly "
             f"their zero-shot value assignments on the training split go with the class "
             f"(<code>{esc(d.get('score', '?'))}</code>), with the image features' own partition of the classes "
             "(an <i>unnamed</i> attribute where no vocabulary attribute matches it). <code>bias_prompts: auto</code> "
             f"keeps the spurious ones, at most {esc(d.get('top', '?'))}: a score above {esc(d.get('threshold', '?'))} "
             f"and errors (how much a value concentrates the ERM probe's or zero-shot's errors) above "
             f"{esc(d.get('min_concentration', '?'))}; values given to fewer than {pct(d.get('min_value_share'))}% of "
             "the training images dropped.</p>")
    if d.get("fallback"):
        verdict = (f"<p><b>Nothing was kept</b>: {esc(d['fallback'])}. The groups come from that labeler's "
                   "unnamed clusters.</p>")
    else:
        verdict = f"<p>Used: <b>{esc(', '.join(d.get('used') or []))}</b>.</p>"
    rows = []
    for rank, c in enumerate(d.get("candidates") or [], 1):
        phrases, shares = list(c.get("values") or []), list(c.get("shares") or [])
        if c.get("unnamed"):
            phrases = (c.get("value_names") or ["a", "b"])[:len(phrases)]
        values = ", ".join(f"{v} ({pct(sh)}%)" for v, sh in zip(phrases, shares)) if len(shares) == len(phrases) \
            else ", ".join(map(str, phrases))
        if c.get("named_by"):
            values += f"; the same partition as {c['named_by']}"
        if c.get("not_kept"):
            values += f"; not kept: {c['not_kept']}"
        if c.get("named_from"):
            values += f"; {c['named_from']}, named with --name-attribute"
        score, concentration, name = number(c.get("score")), number(c.get("concentration")), esc(c.get("attribute"))
        chosen = c.get("attribute") in used
        rows.append([str(rank), (name, "best") if chosen else name, "–" if score is None else f"{score:.3f}",
                     "–" if concentration is None else f"{concentration:.3f}", esc(values),
                     "yes" if c.get("spurious") else "", "yes" if chosen else ""])
    ranked = table(["rank", "attribute", "score", "errors", "values (share of training images)", "spurious", "used"],
                   rows, numeric={0, 2, 3})
    grid = ""
    if d.get("unnamed") and figures:
        import base64

        name, png = next(iter(figures.items()))
        grid = (f"<p>The run's training groups, with <b>{esc(', '.join(d['unnamed']))}</b> as the image features split "
                "each class (a random sample per group, also in <code>" + esc(name) + "</code>). Look at what tells "
                "a from b; on the next run, name it (<code>--name-attribute mark=plain,marked</code>: the "
                "groups stay the image features' split) or add it with a phrase per value to a vocabulary "
                f'(<code>--vocabulary</code>: zero-shot then labels it).</p><img alt="example images per group" src="data:image/png;base64,'
                f'{base64.b64encode(png).decode()}" style="max-width:100%">')
    return section("discovery", "Bias discovery", intro + verdict + ranked + grid)


def _prompts_section(entries: list[dict]) -> str:
    body = ['<p>Nearest vocabulary tokens (Euclidean distance in the frozen token-embedding space, as in '
            "CoOp's interpretation) of each learned context vector V1, V2, ... (V1 right after the start "
            "token), nearest first; hover a slot for the distances. A trailing '-' marks a word piece. "
            "Learned vectors usually sit far from every token, so these are hints, not the prompt's "
            "meaning.</p>"]
    for entry in entries:
        slots = entry.get("slots", [])
        dists = entry.get("distances") or []
        chips = []
        for m, tokens in enumerate(slots):
            near = [f"<b>{esc(tokens[0])}</b>"] if tokens else []
            near += [f"<span>{esc(t)}</span>" for t in tokens[1:]]
            title = (f' title="distances: {esc(", ".join(f"{d:.3f}" for d in dists[m]))}"'
                     if m < len(dists) and dists[m] else "")
            chips.append(f'<div class="slot"{title}><small>V{m + 1}</small>{"".join(near)}</div>')
        reading = " ".join(s[0] for s in slots if s)
        name = entry.get("prompt", "")
        body.append(f"<h3>{esc(name)}</h3><p>nearest reading: <code>{esc(reading)}</code>"
                    + ("" if name == "shared context" else f" <code>{esc(name)}.</code>") + "</p>")
        body.append(f'<div class="slots">{"".join(chips)}</div>')
    return section("prompts", "Learned prompts", "\n".join(body))


def run_report_html(metrics: dict, nearest_tokens: list[dict] | None = None, figures: dict | None = None) -> str:
    """One self-contained HTML page for one run's metrics.json content.

    Sections: summary, groups, training (with `history`), bias discovery (with `discovery`),
    pseudo-groups (with `group_quality`), prompts (with `nearest_tokens`, from
    `prompts.nearest_tokens`).
    """
    sections = [_summary_section(metrics), _groups_section(metrics)]
    if metrics.get("history"):
        sections.append(_training_section(metrics))
    if metrics.get("discovery"):
        sections.append(_discovery_section(metrics, figures or {}))
    if metrics.get("group_quality"):
        sections.append(_pseudo_section(metrics))
    if nearest_tokens:
        sections.append(_prompts_section(nearest_tokens))
    title = f"{metrics.get('method', 'run')} on {metrics.get('dataset', '?')}"
    return page(title, f"backbone {metrics.get('backbone', '?')}", sections)

