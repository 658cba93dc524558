"""Make the README's pictures in docs/img/.

    groupcoop demo --seeds 3                              # writes runs/demo/summary.json
    python scripts/readme_figures.py [runs/demo/summary.json] [--out docs/img]

- world-grid.png: the demo task (synth-waterbirds) train split, one row per group
  (`groupcoop.reports.gallery.group_grid`, seed 0);
- demo-groups.png: the demo's per-group test accuracy per method, error bars over seeds,
  group sizes under the names (`groupcoop.reports.demo.demo_groups_png`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from groupcoop.data.world.datasets import make_task_dataset
from groupcoop.io.write import atomic_write
from groupcoop.reports.gallery import group_grid
from groupcoop.reports.demo import demo_groups_png

TASK = "synth-waterbirds"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary", nargs="?", default="runs/demo/summary.json",
                    help="the demo's summary.json (default runs/demo/summary.json)")
    ap.add_argument("--out", default="docs/img", help="folder for the pictures (default docs/img)")
    args = ap.parse_args()
    summary_path, out = Path(args.summary), Path(args.out)
    if not summary_path.is_file():
        raise SystemExit(f"{summary_path} not found; run `groupcoop demo --seeds 3` first or pass its summary.json")
    out.mkdir(parents=True, exist_ok=True)

    grid = group_grid(make_task_dataset(TASK), out / "world-grid.png", split="train", per_group=8, seed=0)
    summary = json.loads(summary_path.read_text())
    png = demo_groups_png(summary, splits=("test",))
    chart = out / "demo-groups.png"
    atomic_write(chart, lambda tmp: Path(tmp).write_bytes(png))
    for path in (grid, chart):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
