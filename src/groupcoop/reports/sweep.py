"""The sweep's report page (report.html of `groupcoop sweep`): the per-task chart, the tables of
table.md and links to each run's own page; and how a sweep names a run's method.
"""

from __future__ import annotations

import numpy as np

from .html import METHOD_COLOURS, esc, figure, img, markdown_tables, mpl_text, page, pct, png, section, table


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
    fig = figure(max(5.0, 1.1 * len(methods) + 2), 3.6)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, m in enumerate(methods):
        values = [float(np.mean(v)) for v in by[m].values()]
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(values)), values, s=14, alpha=0.6,
                   color=METHOD_COLOURS[i % len(METHOD_COLOURS)])
        ax.hlines(np.mean(values), i - 0.3, i + 0.3, color="black", linewidth=2)
    ax.set_xticks(range(len(methods)), [mpl_text(m) for m in methods], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test worst-group accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("one dot per task (mean over seeds); bar = mean over tasks", fontsize=9)
    return png(fig)


def _run_links(rows: list[dict]) -> str:
    """One row per run, linking to its own report.html (relative to the sweep folder, so the pages
    work wherever the folder is copied)."""
    from urllib.parse import quote

    body = []
    for r in rows:
        folder = r.get("run_folder")
        link = f'<a href="{esc(quote(folder + "/report.html"))}">{esc(folder)}</a>' if folder else "–"
        body.append([esc(r["dataset"]), esc(method_label(r)), esc(r["seed"]), pct(r.get("test_worst_group_acc")),
                     pct(r.get("test_avg_acc")), link])
    return table(["dataset", "method", "seed", "test worst-group", "test average", "run page"], body,
                 numeric={2, 3, 4})


def sweep_report_html(name: str, rows: list[dict], table_text: str) -> str:
    """A sweep's page: the per-task chart, the methods x datasets table and the suite aggregate."""
    chart = _sweep_chart(rows)
    sections = []
    if chart:
        sections.append(section("tasks", "Worst-group accuracy per task", img(chart, "per-task worst-group accuracy")))
    sections.append(section("tables", "Tables", markdown_tables(table_text)))
    if any(r.get("run_folder") for r in rows):
        sections.append(section("runs", "Runs", _run_links(rows)))
    n_tasks = len({r["dataset"] for r in rows})
    return page(sweep_title(name), f"{len(rows)} finished runs on {n_tasks} dataset(s)", sections)


def sweep_title(name: str) -> str:
    """The page title: "groupcoop sweep: NAME", or "groupcoop sweep" for an unnamed grid (its default
    name is "sweep", which would read "groupcoop sweep sweep")."""
    name = str(name or "").strip()
    return "groupcoop sweep" if name.lower() in ("", "sweep") else f"groupcoop sweep: {name}"

