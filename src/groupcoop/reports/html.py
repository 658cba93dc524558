"""The HTML toolkit of the reports: escaping, tables, charts as inline PNGs, page and sections,
markdown tables, atomic writing.

A report is one file that opens anywhere, offline: no network, no external CSS, scripts or
fonts; charts are PNGs drawn with matplotlib (Agg, on `Figure` objects, never pyplot's
global state) and inlined as data: URIs. Every string that comes from the data (names,
hyper-parameters, tokens) goes through `esc`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from ..io.write import atomic_text

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


def esc(value) -> str:
    """`value` as HTML text, quotes escaped too (safe in attributes)."""
    return html.escape(str(value), quote=True)


def mpl_text(text) -> str:
    """A data string as literal matplotlib text (no mathtext from '$')."""
    return str(text).replace("$", r"\$")


def number(value) -> float | None:
    """A real number as float; None for NaN, booleans and anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def pct(value, std=None) -> str:
    """An accuracy in % with one decimal, "81.2" or with a spread "81.2 ± 1.3"; "–" for no number."""
    v = number(value)
    if v is None:
        return "–"
    s = number(std)
    return f"{100 * v:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def _plain(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return "none"
    return str(value)


def table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), cls: str = "") -> str:
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


def kv_table(pairs: list[tuple[str, object]]) -> str:
    """A two-column key/value table; values that are lists or dicts shown as JSON."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_plain(v))}</td></tr>" for k, v in pairs)
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes, without the Software text chunk (same bytes from run to run)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def img(png: bytes, alt: str) -> str:
    """An <img> with the PNG inlined as a data: URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def page(title: str, subtitle: str, sections: list[str]) -> str:
    """A whole page: the inline style, the title header, the sections and the footer."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>\n"
        + "\n".join(sections)
        + "\n<footer>groupcoop report: accuracies in %; a self-contained page (no network).</footer>\n"
        "</main>\n</body>\n</html>\n"
    )


def section(sid: str, title: str, body: str) -> str:
    """A titled <section> with the id `sid` around already-built HTML."""
    return f'<section id="{sid}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


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


def markdown_tables(text: str) -> str:
    """Markdown text (a sweep's table.md) as HTML: markdown tables become tables, other lines notes."""
    out, block = [], []

    def flush():
        if block:
            cells = [md_cells(line) for line in block if not set(line.replace("|", "").strip()) <= set("-: ")]
            out.append(table([esc(c) for c in cells[0]], [[esc(c) for c in r] for r in cells[1:]],
                             numeric=set(range(1, len(cells[0])))))
            block.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            block.append(line)
            continue
        flush()
        if line.strip():
            out.append(f'<p class="note">{esc(line)}</p>')
    flush()
    return "\n".join(out)


def write_html(path, html: str) -> Path:  # noqa: F811 (the parameter shadows the module here only)
    """Write a report atomically (a reader never sees half a page)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_text(path, html)
    return path
