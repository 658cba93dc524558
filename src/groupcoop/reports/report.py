"""Self-contained HTML reports: one run (`metrics.json`) or the demo (`summary.json`).

A report is one file that opens anywhere, offline: no network, no external CSS, scripts or
fonts; charts are PNGs drawn with matplotlib (Agg, on `Figure` objects, never pyplot's
global state) and inlined as data: URIs. Every string that comes from the data (names,
hyper-parameters, tokens) is HTML-escaped.

What a run report reads from metrics.json: method, dataset, backbone, groups_source,
selection, selection_groups, hidden_bias_labels, report_groups, trainable_params,
total_params, seed, hyperparameters, best_epoch, epochs_run, splits.<split>.{avg_acc,
worst_group_acc, unbiased_acc, any other number, groups[{name, n, acc}], empty_groups},
history[{epoch (0-based), loss, val_worst_group_acc or val_worst_class_acc, val_avg_acc}],
discovery (`groups.plan_groups`) and group_quality (`labelers.quality`). Missing keys are left
out of the page, never guessed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from ..io.write import atomic_text
from ..metrics import HEADLINE

LABELS = {**HEADLINE, "gap": "gap (average − worst)", "train_weighted_acc": "train-weighted"}
SPLIT_COLOURS = {"val": "#9ecae1", "test": "#2171b5"}
METHOD_COLOURS = ["#969696", "#fd8d3c", "#2171b5", "#31a354", "#756bb1", "#e6550d", "#636363"]

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0; background: #f6f7f9; color: #1f2328; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 1.5rem 3rem; }
header h1 { margin: 0 0 .2rem; font-size: 1.6rem; }
header p { margin: 0; color: #57606a; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 1rem 1.25rem;
          margin-top: 1.25rem; }
h2 { margin: 0 0 .75rem; font-size: 1.2rem; }
h3 { margin: 1rem 0 .4rem; font-size: 1rem; }
table { border-collapse: collapse; margin: .4rem 0 .8rem; font-size: .9rem; }
th, td { border-bottom: 1px solid #e5e8eb; padding: .25rem .7rem; text-align: left; vertical-align: top; }
th { background: #f0f2f4; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.worst { color: #b42318; font-weight: 600; }
td.best { font-weight: 700; }
table.kv th { background: none; font-weight: 500; color: #57606a; }
.scroll { overflow-x: auto; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0; }
.note { color: #57606a; font-size: .85rem; }
code { background: #f0f2f4; padding: 0 .25rem; border-radius: 3px; }
.slots { display: flex; flex-wrap: wrap; gap: .4rem; margin: .3rem 0 1rem; }
.slot { border: 1px solid #d0d7de; border-radius: 6px; padding: .25rem .5rem; min-width: 4.5rem;
        font-size: .85rem; background: #fafbfc; }
.slot small { display: block; color: #8c959f; font-size: .7rem; }
.slot b { display: block; }
.slot span { display: block; color: #57606a; font-size: .78rem; }
.kvgrid { display: flex; flex-wrap: wrap; gap: 0 2.5rem; align-items: flex-start; }
footer { margin-top: 1.5rem; color: #8c959f; font-size: .8rem; }
"""


# ---------------------------------------------------------------- small helpers


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _mpl(text) -> str:
    """A data string as literal matplotlib text (no mathtext from '$')."""
    return str(text).replace("$", r"\$")


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _pct(value, std=None) -> str:
    v = _number(value)
    if v is None:
        return "–"
    s = _number(std)
    return f"{100 * v:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def _plain(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return "none"
    return str(value)


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), cls: str = "") -> str:
    """An HTML table; `header` and `rows` are already-escaped HTML cell contents
    (a cell may be a (html, css class) pair)."""
    def cell(tag, content, i):
        classes = []
        if isinstance(content, tuple):
            content, extra = content
            classes.append(extra)
        if i in numeric:
            classes.append("num")
        attr = f' class="{" ".join(classes)}"' if classes else ""
        return f"<{tag}{attr}>{content}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", c, i) for i, c in enumerate(r)) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _kv_table(pairs: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}</td></tr>" for k, v in pairs)
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _page(title: str, subtitle: str, sections: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header>\n"
        + "\n".join(sections)
        + "\n<footer>groupcoop report: accuracies in %; a self-contained page (no network).</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{_e(title)}</h2>\n{body}\n</section>'


# ---------------------------------------------------------------- run report: sections


def _headline_keys(splits: dict) -> list[str]:
    keys = [k for k in (*HEADLINE, "gap") if any(k in block for block in splits.values())]
    for block in splits.values():
        for k, v in block.items():
            if k not in keys and _number(v) is not None:
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
    parts = [_kv_table(pairs)]

    splits = metrics.get("splits") or {}
    if splits:
        keys = _headline_keys(splits)
        header = ["split"] + [_e(LABELS.get(k, k)) for k in keys]
        rows = [[_e(s)] + [_pct(block.get(k)) for k in keys] for s, block in splits.items()]
        parts.append("<h3>Accuracy (%)</h3>" + _table(header, rows, numeric=set(range(1, len(header)))))
        for s, block in splits.items():
            if block.get("empty_groups"):
                names = [g["name"] for g in block.get("groups", []) if g.get("n") == 0]
                parts.append(f'<p class="note">{_e(s)}: no images in {_e(", ".join(names))}; '
                             "left out of worst-group and unbiased accuracy.</p>")
    if isinstance(metrics.get("hyperparameters"), dict) and metrics["hyperparameters"]:
        items = list(metrics["hyperparameters"].items())
        per_column = max(6, math.ceil(len(items) / 3))
        columns = [_kv_table(items[i:i + per_column]) for i in range(0, len(items), per_column)]
        parts.append('<h3>Hyper-parameters</h3><div class="kvgrid">' + "".join(columns) + "</div>")
    return _section("summary", "Summary", "\n".join(parts))


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
    fig = _figure(9.5, 1.2 + 0.3 * n_bars + 0.15 * len(names))
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
            acc = _number(g.get("acc"))
            ax.barh(y, 0 if acc is None else 100 * acc, height * 0.92, color=colour,
                    label=split if i == 0 else None)
            n = f"{g['n']:,}" if isinstance(g.get("n"), int) else "?"
            text = f"empty (n={n})" if acc is None else f"{100 * acc:.1f}  n={n}"
            ax.text((0 if acc is None else 100 * acc) + 1, y, text, va="center", fontsize=8)
    ax.set_yticks(range(len(names)), [_mpl(n) for n in names], fontsize=9)
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
    return _png(fig)


def _groups_section(metrics: dict) -> str:
    splits = {s: b for s, b in (metrics.get("splits") or {}).items() if b.get("groups")}
    if not splits:
        return _section("groups", "Per-group accuracy", '<p class="note">no per-group numbers in this run</p>')
    names = _group_rows(splits)
    header = ["group"]
    for s in splits:
        header += [f"{_e(s)} n", f"{_e(s)} acc"]
    worst = {}
    for s, block in splits.items():
        accs = [(g["acc"], g["name"]) for g in block["groups"] if _number(g.get("acc")) is not None]
        worst[s] = min(accs)[1] if accs else None
    rows = []
    for name in names:
        row = [_e(name)]
        for s, block in splits.items():
            g = next((g for g in block["groups"] if g["name"] == name), None)
            if g is None:
                row += ["", ""]
                continue
            acc = _pct(g.get("acc")) if g.get("acc") is not None else "empty"
            row += [f"{g.get('n', 0):,}", (acc, "worst") if worst[s] == name else acc]
        rows.append(row)
    body = [_img(_groups_chart(splits), "per-group accuracy bars for " + ", ".join(splits)),
            _table(header, rows, numeric=set(range(1, len(header)))),
            '<p class="note">worst group of each split in red.</p>']
    if isinstance(metrics.get("report_groups"), dict):
        body.append('<p class="note">groups: ' + _e("; ".join(f"{s}: {g}" for s, g in metrics["report_groups"].items()))
                    + "</p>")
    return _section("groups", "Per-group accuracy", "\n".join(body))


WORST_KEYS = {"val_worst_group_acc": "worst-group", "val_worst_class_acc": "worst-class"}


def _worst_key(history: list[dict]) -> str | None:
    """The history's worst-part accuracy (groups or classes, by the selection rule), if any."""
    return next((k for k in WORST_KEYS if any(k in h for h in history)), None)


def _training_chart(history: list[dict], best_epoch: int | None) -> bytes:
    epochs = [int(h.get("epoch", i)) + 1 for i, h in enumerate(history)]
    worst_key = _worst_key(history)

    def series(key, scale=1.0):
        return [scale * v if (v := _number(h.get(key))) is not None else float("nan") for h in history]

    fig = _figure(10, 3.4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, series("loss"), marker="o", ms=3, color="#636363")
    ax_loss.set_title("training loss", fontsize=10)
    if worst_key:
        ax_acc.plot(epochs, series(worst_key, 100), marker="o", ms=3, color="#b42318",
                    label=f"val {WORST_KEYS[worst_key]}")
    ax_acc.plot(epochs, series("val_avg_acc", 100), marker="o", ms=3, color="#2171b5", label="val average")
    ax_acc.set_title("validation accuracy (%)", fontsize=10)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
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
    return _png(fig)


def _training_section(metrics: dict) -> str:
    history = metrics["history"]
    best = metrics.get("best_epoch")
    body = [_img(_training_chart(history, best), "training loss and validation accuracy per epoch")]
    if best is not None and 1 <= best <= len(history):
        h = history[best - 1]
        loss = _number(h.get("loss"))
        worst_key = _worst_key(history)
        rule = f"validation {WORST_KEYS[worst_key]} accuracy" if worst_key else "validation average accuracy"
        worst = f"val {WORST_KEYS[worst_key]} {_pct(h.get(worst_key))}%, " if worst_key else ""
        body.append(f"<p>Selected epoch <b>{_e(best)}</b> of {len(history)} run (highest {rule}): {worst}"
                    f"val average {_pct(h.get('val_avg_acc'))}%"
                    + ("" if loss is None else f", training loss {loss:.4f}") + ".</p>")
    return _section("training", "Training", "\n".join(body))


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
    cols = [pred_ids[j] for j in order]
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    nr, nc = matrix.shape
    fig = _figure(min(3.5 + 0.85 * nc, 16), min(1.6 + 0.45 * nr, 14))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    fontsize = 8 if nr * nc <= 64 else 6
    for i in range(nr):
        for j in range(nc):
            ax.text(j, i, f"{int(matrix[i, j]):,}", ha="center", va="center", fontsize=fontsize,
                    color="white" if share[i, j] > 0.6 else "#1f2328")
    ax.set_yticks(range(nr), [_mpl(names.get(t, t)) for t in true_ids], fontsize=8)
    ax.set_xticks(range(nc), [_mpl(c) for c in cols], fontsize=8)
    ax.set_ylabel("true group")
    ax.set_xlabel("labeler group id")
    fig.colorbar(im, ax=ax, label="share of the true group", shrink=0.9)
    ax.set_title("labeler groups vs true groups (training split)", fontsize=10)
    return _png(fig)


def _pseudo_section(metrics: dict) -> str:
    q = metrics["group_quality"]
    recalls = [g["recall"] for g in q.get("groups", []) if _number(g.get("recall")) is not None]
    min_recall = q.get("min_recall", min(recalls) if recalls else None)
    source = metrics.get("groups_source", "labeler")
    numbers = [
        ("accuracy (best one-to-one matching)", _pct(q.get("accuracy"))),
        ("accuracy (same ids)", _pct(q.get("named_accuracy"))),
        ("NMI", f"{q['nmi']:.3f}" if _number(q.get("nmi")) is not None else "–"),
        ("ARI", f"{q['ari']:.3f}" if _number(q.get("ari")) is not None else "–"),
        ("min per-group recall", _pct(min_recall)),
        ("training images compared", f"{q['n']:,}" if "n" in q else "–"),
    ]
    body = [f"<p>How the <code>{_e(source)}</code> groups used for training agree with the dataset's true "
            "groups on the training split (accuracies in %).</p>",
            _table(["measure", "value"], [[_e(k), v] for k, v in numbers], numeric={1})]
    chart = _confusion_chart(q)
    if chart is not None:
        body.append(_img(chart, "confusion heatmap of labeler groups against true groups"))
        body.append('<p class="note">cell: number of images; colour: share of the true group (row). '
                    "Columns are ordered so that each true group's matched labeler group is on the diagonal.</p>")
    if q.get("groups"):
        rows = [[_e(g.get("name", g["group"])), f"{g.get('n_true', 0):,}",
                 _e("–" if g.get("pred") is None else g["pred"]), f"{g.get('n_pred', 0):,}",
                 _pct(g.get("precision")), _pct(g.get("recall"))] for g in q["groups"]]
        body.append(_table(["true group", "n", "matched labeler group", "its n", "precision", "recall"],
                           rows, numeric={1, 2, 3, 4, 5}))
    return _section("pseudo-groups", "Pseudo-group quality", "\n".join(body))


def _discovery_section(metrics: dict) -> str:
    d = metrics["discovery"]
    used = set(d.get("used") or [])
    intro = (f"<p>Attributes of the vocabulary <code>{_e(d.get('vocabulary', '?'))}</code> ranked by how strongly "
             f"their zero-shot value assignments on the training split go with the class "
             f"(<code>{_e(d.get('score', '?'))}</code>); <code>bias_prompts: auto</code> uses those above "
             f"{_e(d.get('threshold', '?'))}, at most {_e(d.get('top', '?'))}, values given to fewer than "
             f"{_pct(d.get('min_value_share'))}% of the training images dropped.</p>")
    if d.get("fallback"):
        verdict = (f"<p><b>Nothing was discovered</b>: {_e(d['fallback'])}. The groups come from that labeler's "
                   "unnamed clusters.</p>")
    else:
        verdict = f"<p>Used: <b>{_e(', '.join(d.get('used') or []))}</b>.</p>"
    rows = []
    for rank, c in enumerate(d.get("candidates") or [], 1):
        phrases, shares = list(c.get("values") or []), list(c.get("shares") or [])
        values = ", ".join(f"{v} ({_pct(sh)}%)" for v, sh in zip(phrases, shares)) if len(shares) == len(phrases) \
            else ", ".join(map(str, phrases))
        score, name = _number(c.get("score")), _e(c.get("attribute"))
        chosen = c.get("attribute") in used
        rows.append([str(rank), (name, "best") if chosen else name, "–" if score is None else f"{score:.3f}",
                     _e(values), "yes" if chosen else ""])
    table = _table(["rank", "attribute", "score", "values (share of training images)", "used"], rows, numeric={0, 2})
    return _section("discovery", "Bias discovery", intro + verdict + table)


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
            near = [f"<b>{_e(tokens[0])}</b>"] if tokens else []
            near += [f"<span>{_e(t)}</span>" for t in tokens[1:]]
            title = (f' title="distances: {_e(", ".join(f"{d:.3f}" for d in dists[m]))}"'
                     if m < len(dists) and dists[m] else "")
            chips.append(f'<div class="slot"{title}><small>V{m + 1}</small>{"".join(near)}</div>')
        reading = " ".join(s[0] for s in slots if s)
        name = entry.get("prompt", "")
        body.append(f"<h3>{_e(name)}</h3><p>nearest reading: <code>{_e(reading)}</code>"
                    + ("" if name == "shared context" else f" <code>{_e(name)}.</code>") + "</p>")
        body.append(f'<div class="slots">{"".join(chips)}</div>')
    return _section("prompts", "Learned prompts", "\n".join(body))


def run_report_html(metrics: dict, nearest_tokens: list[dict] | None = None) -> str:
    """One self-contained HTML page for one run's metrics.json content.

    Sections: summary, groups, training (with `history`), bias discovery (with `discovery`),
    pseudo-groups (with `group_quality`), prompts (with `nearest_tokens`, from
    `prompts.nearest_tokens`).
    """
    sections = [_summary_section(metrics), _groups_section(metrics)]
    if metrics.get("history"):
        sections.append(_training_section(metrics))
    if metrics.get("discovery"):
        sections.append(_discovery_section(metrics))
    if metrics.get("group_quality"):
        sections.append(_pseudo_section(metrics))
    if nearest_tokens:
        sections.append(_prompts_section(nearest_tokens))
    title = f"{metrics.get('method', 'run')} on {metrics.get('dataset', '?')}"
    return _page(title, f"backbone {metrics.get('backbone', '?')}", sections)


# ---------------------------------------------------------------- demo report


def _demo_splits(summary: dict) -> list[str]:
    first = next(iter(summary.values()))["over_seeds"]
    present = [s for s in first if s != "seeds" and isinstance(first[s], dict)]
    return [s for s in ("test", "val") if s in present] + [s for s in present if s not in ("test", "val")]


def _n_seeds(summary: dict) -> int:
    return len(next(iter(summary.values()))["over_seeds"].get("seeds", [0]))


def _demo_chart(summary: dict, splits) -> bytes:
    methods = list(summary)
    multi = _n_seeds(summary) > 1
    fig = _figure(10, 0.6 + 3.6 * len(splits))
    axes = fig.subplots(len(splits), 1, squeeze=False)[:, 0]
    for ax, split in zip(axes, splits):
        groups = summary[methods[0]]["over_seeds"][split]["groups"]
        sizes = [g.get("n") for g in summary[methods[0]].get("splits", {}).get(split, {}).get("groups", [])]
        x = np.arange(len(groups))
        width = 0.8 / len(methods)
        label_bars = len(groups) * len(methods) <= 30
        for i, m in enumerate(methods):
            over = summary[m]["over_seeds"][split]["groups"]
            means = [100 * (_number(g["acc"].get("mean")) or 0.0) for g in over]
            stds = [100 * (_number(g["acc"].get("std")) or 0.0) for g in over]
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, means, width * 0.92, yerr=stds if multi else None, capsize=3 if multi else 0,
                   color=METHOD_COLOURS[i % len(METHOD_COLOURS)], label=_mpl(m),
                   error_kw={"elinewidth": 1, "ecolor": "#1f2328"})
            if label_bars:
                for p, v, s in zip(pos, means, stds):
                    ax.text(p, v + (s if multi else 0) + 1.5, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
        ticks = [_mpl(g["name"]) + (f"\nn={sizes[k]:,}" if k < len(sizes) and sizes[k] is not None else "")
                 for k, g in enumerate(groups)]
        ax.set_xticks(x, ticks, fontsize=8)
        ax.set_ylim(0, 110)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.grid(axis="y", color="#e5e8eb")
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        seeds = f"mean ± std over {_n_seeds(summary)} seeds" if multi else "1 seed"
        ax.set_title(f"per-group {split} accuracy ({seeds}; n = images in the group)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(fig)


def demo_groups_png(summary: dict, splits: tuple[str, ...] = ("test",)) -> bytes:
    """The demo's per-group accuracy chart (grouped bars per method, error bars over seeds,
    group sizes under the names) as PNG bytes; `splits` picks the panels."""
    available = _demo_splits(summary)
    chosen = [s for s in splits if s in available]
    if not chosen:
        raise ValueError(f"summary has none of the splits {list(splits)} (it has {available})")
    return _demo_chart(summary, chosen)


DEMO_NEEDS = {"train": "group labels on the training split",  # a method's `needs_groups`, in words
              "val": "group labels on the validation split (it trains on val)", "none": "no group labels"}


def needs_line(summary: dict) -> str:
    """One sentence on the group labels each method needs (its metrics' `needs_groups`)."""
    by_need: dict[str, list[str]] = {}
    for m, entry in summary.items():
        by_need.setdefault(entry.get("needs_groups", "none"), []).append(m)
    return "What they need: " + "; ".join(f"{', '.join(ms)}: {DEMO_NEEDS.get(need, need)}"
                                          for need, ms in by_need.items()) + "."


def conclusion(summary: dict, split: str = "test") -> str:
    """The demo in one line: the best worst-group accuracy, and its margin over zero-shot."""
    wga = {m: e["over_seeds"][split]["worst_group_acc"]["mean"] for m, e in summary.items()}
    best = max(wga, key=wga.get)
    line = f"On the {split} split {best} has the best worst-group accuracy, {100 * wga[best]:.1f}%"
    if "zeroshot" in wga and best != "zeroshot":
        line += f", {100 * (wga[best] - wga['zeroshot']):+.1f} points over zero-shot ({100 * wga['zeroshot']:.1f}%)"
    others = sorted((v, m) for m, v in wga.items() if m != best)
    if others:
        line += f"; next best {others[-1][1]} ({100 * others[-1][0]:.1f}%)"
    return line + "."


def demo_report_html(summary: dict) -> str:
    """A self-contained HTML page for `groupcoop demo`'s summary.json: a one-line conclusion, the
    method comparison (mean ± std over seeds) with the groups each trained on ("none" for a method
    that trains on no groups) and what it needs, the training split's group sizes, per-group bars
    with error bars and group sizes, per-group table."""
    if not summary:
        raise ValueError("empty demo summary")
    methods = list(summary)
    first = summary[methods[0]]
    n_seeds = _n_seeds(summary)
    splits = _demo_splits(summary)
    multi = n_seeds > 1

    def fmt(stat: dict) -> str:
        return _pct(stat.get("mean"), stat.get("std") if multi else None)

    parts = []
    for split in splits:
        rows = []
        for m in methods:
            o = summary[m]["over_seeds"][split]
            rows.append([_e(m)] + [fmt(o[k]) for k in HEADLINE])
        best = max(range(len(methods)),
                   key=lambda i: summary[methods[i]]["over_seeds"][split]["worst_group_acc"].get("mean") or 0)
        rows[best][2] = (rows[best][2], "best")
        parts.append(f"<h3>{_e(split)} split</h3>"
                     + _table(["method", *HEADLINE.values()], rows, numeric={1, 2, 3}))
    seeds = f"{n_seeds} seeds ({', '.join(str(s) for s in first['over_seeds'].get('seeds', []))}), mean ± std" \
        if multi else "1 seed"
    def trained_on(entry: dict) -> str:
        groups = entry.get("training_groups")
        if groups is None:  # a summary from before `training_groups`
            groups = entry.get("groups_source", "–") if entry.get("needs_groups", "train") == "train" else "none"
        return groups["source"] if isinstance(groups, dict) else groups

    details = [[_e(m), _e(trained_on(summary[m])), _e(summary[m].get("selection_groups", "–")),
                f"{summary[m].get('trainable_params', 0):,}"] for m in methods]
    sizes = next((e["training_groups"]["sizes"] for e in summary.values()
                  if isinstance(e.get("training_groups"), dict) and isinstance(e["training_groups"].get("sizes"), dict)),
                 None)
    size_table = ("<h3>Training groups</h3><p>Images per group in the training split (what group-balanced "
                  "methods balance; methods that train on no groups see only the classes).</p>"
                  + _table(["group", "training images"], [[_e(g), f"{int(n):,}"] for g, n in sizes.items()],
                           numeric={1})) if sizes else ""
    comparison = (f"<p>Accuracy in % ({_e(seeds)}).</p>" + "\n".join(parts)
                  + "<h3>Methods</h3>"
                  + _table(["method", "training groups", "model selection on", "trainable parameters"],
                           details, numeric={3})
                  + f"<p>{_e(needs_line(summary))}</p>" + size_table)

    chart = _img(_demo_chart(summary, splits), "per-group accuracy per method, " + ", ".join(splits))
    tables = []
    for split in splits:
        groups = summary[methods[0]]["over_seeds"][split]["groups"]
        sizes = [g.get("n") for g in first.get("splits", {}).get(split, {}).get("groups", [])]
        header = ["method"] + [_e(g["name"]) + (f"<br><span class=\"note\">n={sizes[k]:,}</span>"
                                                if k < len(sizes) and sizes[k] is not None else "")
                               for k, g in enumerate(groups)]
        rows = [[_e(m)] + [fmt(g["acc"]) for g in summary[m]["over_seeds"][split]["groups"]] for m in methods]
        tables.append(f"<h3>{_e(split)} split</h3>" + _table(header, rows, numeric=set(range(1, len(header)))))
    per_group = chart + "\n" + "\n".join(tables)

    sections = [f'<p class="conclusion"><b>{_e(conclusion(summary, splits[0]))}</b></p>',
                _section("comparison", "Comparison", comparison),
                _section("groups", "Per-group accuracy", per_group)]
    title = f"groupcoop demo on {first.get('dataset', '?')}"
    return _page(title, f"backbone {first.get('backbone', '?')}; methods: {', '.join(methods)}", sections)


# ---------------------------------------------------------------- sweep report


def md_cell(text) -> str:
    """A label as one markdown table cell: `|` escaped, line breaks made spaces (`md_cells` reads it back)."""
    return " ".join(str(text).replace("\\", "\\\\").replace("|", "\\|").splitlines()) or " "


def md_cells(line: str) -> list[str]:
    """The cells of one markdown table row (`| a | b\\|c |` -> ['a', 'b|c']), as `md_cell` wrote them."""
    cells, cell, chars = [], [], iter(line.strip())
    for c in chars:
        if c == "\\":
            cell.append(next(chars, ""))
        elif c == "|":
            cells.append("".join(cell).strip())
            cell = []
        else:
            cell.append(c)
    cells.append("".join(cell).strip())
    return cells[1:-1]  # the row's leading and trailing `|`


def _markdown_tables(text: str) -> str:
    """The sweep's table.md as HTML: markdown tables become tables, other lines paragraphs."""
    out, block = [], []

    def flush():
        if block:
            cells = [md_cells(line) for line in block if not set(line.replace("|", "").strip()) <= set("-: ")]
            out.append(_table([_e(c) for c in cells[0]], [[_e(c) for c in r] for r in cells[1:]],
                              numeric=set(range(1, len(cells[0])))))
            block.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            block.append(line)
            continue
        flush()
        if line.strip():
            out.append(f'<p class="note">{_e(line)}</p>')
    flush()
    return "\n".join(out)


def method_label(row: dict) -> str:
    """How a sweep's tables name a run's method: with its group source when it trains on groups."""
    return row["method"] if row["groups"] == "-" else f"{row['method']} [{row['groups']}]"


def _sweep_chart(rows: list[dict]) -> bytes | None:
    """Test worst-group accuracy per task (mean over seeds), one column of dots per method."""
    by: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        value = r.get("test_worst_group_acc")
        if value is None:
            continue
        by.setdefault(method_label(r), {}).setdefault(r["dataset"], []).append(100 * value)
    if not by:
        return None
    methods = list(by)
    fig = _figure(max(5.0, 1.1 * len(methods) + 2), 3.6)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, m in enumerate(methods):
        values = [float(np.mean(v)) for v in by[m].values()]
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(values)), values, s=14, alpha=0.6,
                   color=METHOD_COLOURS[i % len(METHOD_COLOURS)])
        ax.hlines(np.mean(values), i - 0.3, i + 0.3, color="black", linewidth=2)
    ax.set_xticks(range(len(methods)), [_mpl(m) for m in methods], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test worst-group accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("one dot per task (mean over seeds); bar = mean over tasks", fontsize=9)
    return _png(fig)


def _run_links(rows: list[dict]) -> str:
    """One row per run, linking to its own report.html (relative to the sweep folder, so the pages
    work wherever the folder is copied)."""
    from urllib.parse import quote

    body = []
    for r in rows:
        folder = r.get("run_folder")
        link = f'<a href="{_e(quote(folder + "/report.html"))}">{_e(folder)}</a>' if folder else "–"
        body.append([_e(r["dataset"]), _e(method_label(r)), _e(r["seed"]), _pct(r.get("test_worst_group_acc")),
                     _pct(r.get("test_avg_acc")), link])
    return _table(["dataset", "method", "seed", "test worst-group", "test average", "run page"], body,
                  numeric={2, 3, 4})


def sweep_report_html(name: str, rows: list[dict], table_text: str) -> str:
    """A sweep's page: the per-task chart, the methods x datasets table and the suite aggregate."""
    chart = _sweep_chart(rows)
    sections = []
    if chart:
        sections.append(_section("tasks", "Worst-group accuracy per task", _img(chart, "per-task worst-group accuracy")))
    sections.append(_section("tables", "Tables", _markdown_tables(table_text)))
    if any(r.get("run_folder") for r in rows):
        sections.append(_section("runs", "Runs", _run_links(rows)))
    n_tasks = len({r["dataset"] for r in rows})
    return _page(f"groupcoop sweep {name}", f"{len(rows)} finished runs on {n_tasks} dataset(s)", sections)


def write_html(path, html: str) -> Path:  # noqa: F811 (the parameter shadows the module here only)
    """Write a report atomically (a reader never sees half a page)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_text(path, html)
    return path
