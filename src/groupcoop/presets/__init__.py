"""The sweep grids that ship inside the package, so `groupcoop sweep report` works without a checkout.

- `suites/`: the dev suite (where defaults are chosen) and the report suites (where they are
  reported);
- `paper/`: the paper's protocol per benchmark (its README says what they cost);
- `experiments/`: the dev-suite experiments behind the defaults (docs/defaults.md).

A preset is named by its file name without `.yaml` (`report`, `waterbirds`), or with its
folder (`suites/report`). `groupcoop sweep --list-presets` lists them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import UserError, close_matches

FOLDERS = ("suites", "paper", "experiments")


def available() -> dict[str, Path]:
    """Preset name -> its YAML file, in FOLDERS order."""
    root = Path(str(resources.files(__name__)))
    return {p.stem: p for folder in FOLDERS for p in sorted((root / folder).glob("*.yaml"))}


def summary(path: Path) -> str:
    """What a preset is: the first whole sentence of its leading comment, which may run over several
    lines (it ends at a line that is not a comment, or at an indented command line)."""
    import re

    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        comment = line.startswith("#") and line.lstrip("#").strip() and not line.startswith("#  ")
        if comment:
            words.append(line.lstrip("#").strip())
        elif words:
            break
    text = " ".join(words)
    end = re.search(r"[.?!](?=\s+[A-Z(`\"']|$)", text)
    return text[:end.end()] if end else text


def resolve(grid: str) -> Path:
    """A grid argument as a file: an existing file as given, else a preset by name."""
    path = Path(grid).expanduser()
    if path.is_file() or path.is_dir():
        return path  # a folder is refused, as a folder, by the YAML reader
    presets = available()
    name = grid.removesuffix(".yaml")
    folder, _, stem = name.rpartition("/")
    if stem in presets and (not folder or presets[stem].parent.name == folder):
        return presets[stem]
    if "/" in grid or grid.endswith((".yaml", ".yml")):
        return path  # meant as a file: the YAML reader says it is not there
    raise UserError(f"no grid file or preset named {grid!r}{close_matches(grid, presets)}; give a YAML file or a "
                    f"preset ({', '.join(presets)}; `groupcoop sweep --list-presets`)")
