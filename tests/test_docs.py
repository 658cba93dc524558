"""The README and the docs site: short enough to read, every page listed, and every `groupcoop`
command they show accepted by the CLI as written (test_doc_commands.py runs them; the python blocks
are run by the tests that own them: test_predict, test_fusion, test_backbone_transformers, test_extending)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import groupcoop
from groupcoop.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(page: Path) -> list[str]:
    """Every `groupcoop ...` line of the page's bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("groupcoop "):
                out.append(line)
    return out


def test_the_readme_is_read_in_five_minutes():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 350


def test_the_api_reference_lists_every_public_name():
    page = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    for name, module in groupcoop._API.items():
        if name != "GroupCoOpClassifier":  # Classifier's older name, the same object
            assert f"::: groupcoop.{module}.{name}\n" in page, name


def test_every_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f": {page.name}" in nav, page.name


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_command_shown_is_one_the_cli_accepts(page, capsys):
    parser = build_parser()
    for line in commands(page):
        argv = shlex.split(line.split(" #")[0].split(" | ")[0].split(" > ")[0])[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            assert exit_.code == 0, f"{page.name}: {line}\n{capsys.readouterr().err}"
