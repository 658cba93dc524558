"""The demo's report page (report.html of `groupcoop demo`) and its per-group chart, drawn from
the demo's summary.json; `runs.demo` writes the sentences that say what the numbers mean.
"""

from __future__ import annotations

import numpy as np

from ..metrics import HEADLINE
from .html import METHOD_COLOURS, esc, figure, img, mpl_text, number, page, pct, png, section, table


def demo_splits(summary: dict) -> list[str]:
    """The splits the page shows, in its order: test, val, then any other."""
    first = next(iter(summary.values()))["over_seeds"]
    present = [s for s in first if s != "seeds" and isinstance(first[s], dict)]
    return [s for s in ("test", "val") if s in present] + [s for s in present if s not in ("test", "val")]


def _n_seeds(summary: dict) -> int:
    return len(next(iter(summary.values()))["over_seeds"].get("seeds", [0]))


def _demo_chart(summary: dict, splits) -> bytes:
    methods = list(summary)
    multi = _n_seeds(summary) > 1
    fig = figure(10, 0.6 + 3.6 * len(splits))
    axes = fig.subplots(len(splits), 1, squeeze=False)[:, 0]
    for ax, split in zip(axes, splits):
        groups = summary[methods[0]]["over_seeds"][split]["groups"]
        sizes = [g.get("n") for g in summary[methods[0]].get("splits", {}).get(split, {}).get("groups", [])]
        x = np.arange(len(groups))
        width = 0.8 / len(methods)
        label_bars = len(groups) * len(methods) <= 30
        for i, m in enumerate(methods):
            over = summary[m]["over_seeds"][split]["groups"]
            means = [100 * (number(g["acc"].get("mean")) or 0.0) for g in over]
            stds = [100 * (number(g["acc"].get("std")) or 0.0) for g in over]
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, means, width * 0.92, yerr=stds if multi else None, capsize=3 if multi else 0,
                   color=METHOD_COLOURS[i % len(METHOD_COLOURS)], label=mpl_text(m),
                   error_kw={"elinewidth": 1, "ecolor": "#1f2328"})
            if label_bars:
                for p, v, s in zip(pos, means, stds):
                    ax.text(p, v + (s if multi else 0) + 1.5, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
        ticks = [mpl_text(g["name"]) + (f"\nn={sizes[k]:,}" if k < len(sizes) and sizes[k] is not None else "")
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
    return png(fig)


def demo_groups_png(summary: dict, splits: tuple[str, ...] = ("test",)) -> bytes:
    """The demo's per-group accuracy chart (grouped bars per method, error bars over seeds,
    group sizes under the names) as PNG bytes; `splits` picks the panels."""
    available = demo_splits(summary)
    chosen = [s for s in splits if s in available]
    if not chosen:
        raise ValueError(f"summary has none of the splits {list(splits)} (it has {available})")
    return _demo_chart(summary, chosen)


def _run_links(method: str, entry: dict) -> str:
    """Links to a method's run folders (OUT/<method>/seed-<k>/, their report.html), relative to the
    demo folder so the page works wherever the folder is copied."""
    from urllib.parse import quote

    seeds = entry.get("over_seeds", {}).get("seeds", [entry.get("seed", 0)])
    return " ".join(f'<a href="{esc(quote(f"{method}/seed-{k}/report.html"))}">{esc(f"{method}/seed-{k}")}</a>'
                    for k in seeds)


def demo_report_html(summary: dict, conclusion: str, needs: str) -> str:
    """A self-contained HTML page for `groupcoop demo`'s summary.json: the one-line `conclusion`, the
    method comparison (mean ± std over seeds) with the groups each trained on ("none" for a method
    that trains on no groups) and what they need (`needs`), the training split's group sizes,
    per-group bars with error bars and group sizes, per-group table. The two sentences come from
    `runs.demo`, which decides what the demo shows."""
    if not summary:
        raise ValueError("empty demo summary")
    methods = list(summary)
    first = summary[methods[0]]
    n_seeds = _n_seeds(summary)
    splits = demo_splits(summary)
    multi = n_seeds > 1

    def fmt(stat: dict) -> str:
        return pct(stat.get("mean"), stat.get("std") if multi else None)

    parts = []
    for split in splits:
        rows = []
        for m in methods:
            o = summary[m]["over_seeds"][split]
            rows.append([esc(m)] + [fmt(o[k]) for k in HEADLINE])
        best = max(range(len(methods)),
                   key=lambda i: summary[methods[i]]["over_seeds"][split]["worst_group_acc"].get("mean") or 0)
        rows[best][2] = (rows[best][2], "best")
        parts.append(f"<h3>{esc(split)} split</h3>"
                     + table(["method", *HEADLINE.values()], rows, numeric={1, 2, 3}))
    seeds = f"{n_seeds} seeds ({', '.join(str(s) for s in first['over_seeds'].get('seeds', []))}), mean ± std" \
        if multi else "1 seed"
    def trained_on(entry: dict) -> str:
        groups = entry.get("training_groups")
        if groups is None:  # a summary from before `training_groups`
            groups = entry.get("groups_source", "–") if entry.get("needs_groups", "train") == "train" else "none"
        return groups["source"] if isinstance(groups, dict) else groups

    details = [[esc(m), esc(trained_on(summary[m])), esc(summary[m].get("selection_groups", "–")),
                f"{summary[m].get('trainable_params', 0):,}", _run_links(m, summary[m])] for m in methods]
    sizes = next((e["training_groups"]["sizes"] for e in summary.values() if isinstance(e.get("training_groups"), dict)
                  and isinstance(e["training_groups"].get("sizes"), dict)), None)
    size_table = ("<h3>Training groups</h3><p>Images per group in the training split (what group-balanced "
                  "methods balance; methods that train on no groups see only the classes).</p>"
                  + table(["group", "training images"], [[esc(g), f"{int(n):,}"] for g, n in sizes.items()],
                          numeric={1})) if sizes else ""
    comparison = (f"<p>Accuracy in % ({esc(seeds)}).</p>" + "\n".join(parts)
                  + "<h3>Methods</h3>"
                  + table(["method", "training groups", "model selection on", "trainable parameters", "run folders"],
                          details, numeric={3})
                  + f"<p>{esc(needs)}</p>" + size_table)

    chart = img(_demo_chart(summary, splits), "per-group accuracy per method, " + ", ".join(splits))
    tables = []
    for split in splits:
        groups = summary[methods[0]]["over_seeds"][split]["groups"]
        sizes = [g.get("n") for g in first.get("splits", {}).get(split, {}).get("groups", [])]
        header = ["method"] + [esc(g["name"]) + (f"<br><span class=\"note\">n={sizes[k]:,}</span>"
                                                 if k < len(sizes) and sizes[k] is not None else "")
                               for k, g in enumerate(groups)]
        rows = [[esc(m)] + [fmt(g["acc"]) for g in summary[m]["over_seeds"][split]["groups"]] for m in methods]
        tables.append(f"<h3>{esc(split)} split</h3>" + table(header, rows, numeric=set(range(1, len(header)))))
    per_group = chart + "\n" + "\n".join(tables)

    sections = [f'<p class="conclusion"><b>{esc(conclusion)}</b></p>',
                section("comparison", "Comparison", comparison),
                section("groups", "Per-group accuracy", per_group)]
    title = f"groupcoop demo on {first.get('dataset', '?')}"
    return page(title, f"backbone {first.get('backbone', '?')}; methods: {', '.join(methods)}", sections)

