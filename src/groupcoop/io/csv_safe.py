"""The one CSV writer: every CSV groupcoop writes (preds.csv, groups.csv, runs.csv) comes from here.

File names, class names and labels are the user's text, and a spreadsheet runs a cell that
starts with `=`, `+`, `-` or `@` as a formula. Following the OWASP advice on CSV injection,
a text cell that starts with one of `= + - @`, a tab, a carriage return or their full-width
forms gets a leading `'` (the spreadsheet shows the text instead of running it), and every text
cell is quoted, so a `;` inside a cell cannot start a new cell in a spreadsheet that splits on
semicolons. A text cell that is a plain number (`-0.5`) or that one character alone (`-`, the
sweep's "no groups") cannot be a formula and is kept as it is; numbers (int, float) are written
unquoted.

Text that is not valid UTF-8 (a file name in another encoding, which Python holds as lone
surrogates) is written with `\\xNN` escapes for the bytes that are not, so the file stays UTF-8.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def utf8_text(text: str) -> str:
    """`text` as valid UTF-8: undecodable file-name bytes (surrogate escapes) become `\\xNN`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "backslashreplace").decode(
            "utf-8", "backslashreplace")


def _only_escapes(text: str) -> bool:
    """Whether every lone surrogate in `text` is one of os.fsdecode's byte escapes (U+DC80..U+DCFF)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def neutralise(cell: str) -> str:
    """A text cell a spreadsheet shows as text (see the module docstring)."""
    cell = utf8_text(cell)
    if len(cell) > 1 and cell.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def read_back(cell: str) -> str:
    """A text cell as it was before `neutralise` (the leading `'` it added taken off again)."""
    if cell.startswith("'") and neutralise(cell[1:]) == cell:
        return cell[1:]
    return cell


def _cell(value):
    if value is None:
        return ""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return value
    return neutralise(str(value))


def csv_text(rows: Iterable[dict], columns: Sequence[str] | None = None) -> str:
    """Rows (dicts) as CSV text: a header, then one line per row; missing keys are empty cells."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writerow([_cell(c) for c in columns])
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()
