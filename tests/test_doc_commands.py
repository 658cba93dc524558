"""Every `groupcoop` command the README and the docs show is run, in the order a reader meets them.

The data they name is made first: `~` is a temporary home whose `~/data` holds miniature
replicas of the benchmark folders (replicas.py) and the README's `animals` CSV. Two things this
machine lacks are replaced, and only these: a hub backbone (`--backbone ViT-B-16 --pretrained
openai`) becomes the bundled `groupcoop-tiny`, except in a command that shows `--offline` failing
at once; and a sweep (hours) is run with `--dry-run`, which expands its grid and prices it. A
command that needs a GPU or a finished sweep, or a file the reader brings (`my-grid.yaml`), is
only parsed (test_docs.py). A plain block right after a command block is its expected output
where it is an error line: the command must print that line and exit with status 2.
"""

from __future__ import annotations

import csv
import re
import shlex
import shutil
from pathlib import Path

import pytest

from replicas import (celeba_replica, celeba_rows, metashift_replica, waterbirds_replica, write_image,
                      write_text)

ROOT = Path(__file__).resolve().parents[1]
# usage.md first after the README: it trains the run (runs/wb-groupcoop) the other pages use
PAGES = [ROOT / "README.md", ROOT / "docs" / "usage.md",
         *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "usage.md")]
HUB = re.compile(r"--backbone (?!groupcoop-tiny)\S+ --pretrained \S+")
NOT_HERE = ("--device cuda", "--summary-only", "my-grid.yaml")  # a GPU, a finished sweep, the reader's file


def blocks(page: Path) -> list[tuple[list[str], str | None]]:
    """(the block's `groupcoop` commands, the error line of the plain block after it or None)."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"```(?:bash|sh|console)\n(.*?)```\s*(?:```\n(groupcoop: error: [^\n]*)\n```)?", text, re.S):
        lines = [line.strip().removeprefix("$ ") for line in m.group(1).replace("\\\n", " ").splitlines()]
        commands = [line.split(" #")[0].strip() for line in lines if line.startswith("groupcoop ")]
        if commands:
            out.append((commands, m.group(2)))
    return out


def animals(home: Path) -> None:
    """The README's ~/data/animals/meta.csv: path,label,place,split (every split holds every group)."""
    folder = home / "data" / "animals"
    lines = ["path,label,place,split"]
    for i in range(96):
        label, place, split = ("cat", "dog")[i % 2], ("indoors", "outdoors")[(i // 2) % 2], ("train", "val", "test")[i % 3]
        write_image(folder / "img" / f"{i:04d}.jpg", i)
        lines.append(f"img/{i:04d}.jpg,{label},{place},{split}")
    write_text(folder / "meta.csv", lines)
    write_text(folder / "unsplit.csv", [line.rsplit(",", 1)[0] for line in lines])  # docs/datasets.md's


def mine(home: Path) -> None:
    """docs/benchmarks.md's ~/data/mine: meta.csv with a `place` bias column."""
    folder = home / "data" / "mine"
    rows = [("path", "label", "place", "split")]
    for i in range(48):
        write_image(folder / f"{i}.png", i)
        rows.append((f"{i}.png", ("cat", "dog")[i % 2], ("indoors", "outdoors")[(i // 2) % 2], ("train", "val", "test")[i % 3]))
    with open(folder / "meta.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A home whose ~/data holds the data the pages name, and an empty Hugging Face cache."""
    home = tmp_path_factory.mktemp("home")
    data = home / "data"
    data.mkdir()
    waterbirds_replica(data)
    celeba_replica(data, celeba_rows({"train": [6] * 4, "val": [4] * 4, "test": [4] * 4}))  # also MultiCelebA's
    metashift_replica(data)
    animals(home)
    mine(home)
    return home


def workspace(folder: Path, usage_run: Path | None) -> Path:
    """A page's working folder: a reader's photos, and the run docs/usage.md trains where a page uses it."""
    for i in range(3):
        write_image(folder / "photos" / f"p{i}.png", 100 + i)
    write_image(folder / "more.jpg", 200)
    write_text(folder / "list.csv", ["file", "p0.png", "p1.png"])
    if usage_run is not None and usage_run.is_dir():
        shutil.copytree(usage_run, folder / "runs" / usage_run.name)
    return folder


def runs_here(command: str) -> bool:
    return not any(marker in command for marker in NOT_HERE)


def as_run_here(command: str, home: Path) -> list[str]:
    """The command's arguments as this machine runs them."""
    if "--offline" not in command:
        command = HUB.sub("--backbone groupcoop-tiny", command)
    argv = [a.replace("~/", f"{home}/", 1) if a.startswith("~/") else a for a in shlex.split(command)[1:]]
    if argv[0] == "sweep" and not {"--dry-run", "--list-presets"} & set(argv):
        argv.append("--dry-run")
    return argv


@pytest.mark.parametrize("page", [p for p in PAGES if any(runs_here(c) for cs, _ in blocks(p) for c in cs)],
                         ids=lambda p: p.name)
def test_every_command_shown_runs(page, home, tmp_path_factory, cli, monkeypatch, waterbirds_prep):
    """(`waterbirds_prep`: the synth-waterbirds features a page's run finds in the session cache.)"""
    usage_run = tmp_path_factory.getbasetemp() / "docs-usage" / "runs" / "wb-groupcoop"
    work = workspace(tmp_path_factory.mktemp(f"docs-{page.stem}", numbered=False), usage_run)
    monkeypatch.setenv("HOME", str(home))
    for cache in ("HF_HOME", "HF_HUB_CACHE"):  # nothing cached: --offline fails as the page shows
        monkeypatch.setenv(cache, str(home / "hf"))
    monkeypatch.chdir(work)
    for commands, error in blocks(page):
        for command in filter(runs_here, commands):
            result = cli(*as_run_here(command, home))
            if error is None:
                assert result.code == 0, f"{page.name}: {command}\n{result.err[-2000:]}"
            else:
                assert result.code == 2 and result.err.strip() == error, f"{page.name}: {command}\n{result.err}"
