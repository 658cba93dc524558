"""Your own data, easily: the CSV schema page and its example, random splits, --method's default,
config paths that work from any folder, groups from a file, what discovery dropped, and the small
messages that must be true. Each test runs on a tiny CSV dataset (8x8 PNGs) with the bundled tiny CLIP."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from test_cli import assert_one_line_error
from test_hostile import TINY, csv_args, make_csv_root, no_extraction, refused, write_png  # noqa: F401 (fixtures)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def fast(tmp_path) -> list:
    return ["--workers", "0", "--cache-dir", tmp_path / "cache", "--quiet"]


def unsplit_root(root: Path, n: int = 40) -> Path:
    """root/img/<i>.png and root/meta.csv (path,label,place): no split column, 10 rows per group."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,place"]
    for i in range(n):
        write_png(root / "img" / f"{i}.png", i)
        lines.append(f"img/{i}.png,{('cat', 'dog')[i % 2]},{('land', 'water')[(i // 2) % 2]}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    return root


def test_docs_example_csv_trains_and_the_datasets_listing_is_the_commands_output(tmp_path, cli):
    text = DOCS.read_text(encoding="utf-8")
    rows = re.search(r"```csv\n(.*?)```", text, re.S).group(1)
    root = tmp_path / "animals"
    for k, line in enumerate(rows.splitlines()[1:]):
        write_png(root / line.split(",")[0], k)
    (root / "meta.csv").write_text(rows)
    command = re.search(r"```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ").splitlines()[-1]
    argv = [a for a in shlex.split(command)[1:] if a != "~/data/animals"]
    argv.insert(argv.index("--root") + 1, str(root))
    argv[argv.index("--backbone") + 1:argv.index("--pretrained") + 2] = ["groupcoop-tiny"]
    argv[argv.index("--out") + 1] = str(tmp_path / "run")
    result = cli(*argv, "--method", "zeroshot", *fast(tmp_path))  # the example's method trains; zeroshot is enough
    assert result.code == 0, result.err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["groups"]["source"] == "gt"
    listing = re.search(r"<!-- groupcoop datasets -->\n```text\n(.*?)```", text, re.S).group(1)
    assert cli("datasets").out == listing


def test_random_splits_are_stratified_seeded_and_recorded(tmp_path, cli):
    from groupcoop.data.registry import load_dataset

    root = unsplit_root(tmp_path / "data")
    options = dict(csv_path="meta.csv", path_col="path", label_col="label", attr_cols=["place"],
                   val_fraction=0.25, test_fraction=0.25)
    first, again = (load_dataset("csv", root, **options, split_seed=3) for _ in range(2))
    other = load_dataset("csv", root, **options, split_seed=4)
    assert (first.split == again.split).all() and (first.split != other.split).any()
    assert np.bincount(first.split).tolist() == [20, 10, 10]
    for split in range(3):  # stratified by group: 10 rows per group make 5 / 2-3 / 2-3
        counts = np.bincount(first.groups[first.split == split], minlength=4)
        assert counts.min() >= 2 and counts.max() - counts.min() <= 1, (split, counts)
    out = tmp_path / "run"
    args = ["train", *csv_args(root), *TINY, "--method", "zeroshot", "--val-fraction", "0.25", "--test-fraction",
            "0.25", "--seed", "3", "--out", out, *fast(tmp_path)]
    assert cli(*args).code == 0
    options = yaml.safe_load((out / "config.yaml").read_text())["dataset_options"]
    assert (options["val_fraction"], options["test_fraction"], options["split_seed"]) == (0.25, 0.25, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(g["n"] for g in metrics["splits"]["test"]["groups"]) == 10


@pytest.mark.parametrize("case", ["split-column", "one-fraction", "sum", "too-few-rows", "not-csv"])
def test_random_splits_refused(case, tmp_path, refused, no_extraction):
    split = make_csv_root(tmp_path / "split")  # has a split column
    root = unsplit_root(tmp_path / "data", n=12)
    run = ["train", *TINY, "--method", "zeroshot", "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache"]
    cases = {
        "split-column": ([*csv_args(split), "--val-fraction", "0.2", "--test-fraction", "0.2"], "has a split column"),
        "one-fraction": ([*csv_args(root), "--val-fraction", "0.2"], "--test-fraction"),
        "sum": ([*csv_args(root), "--val-fraction", "0.5", "--test-fraction", "0.5"], "train split empty"),
        "too-few-rows": ([*csv_args(root), "--val-fraction", "0.9", "--test-fraction", "0.05"], "train split empty"),
        "not-csv": (["--dataset", "synth-waterbirds", "--val-fraction", "0.2", "--test-fraction", "0.2"],
                    "its own splits"),
    }
    flags, fragment = cases[case]
    refused([*run, *flags], fragment)
    if case == "one-fraction":  # and a CSV without a split column and without fractions says how to split it
        refused([*run, *csv_args(root)], "missing split column", "--val-fraction")


def test_method_defaults_to_groupcoop(tmp_path, cli):
    from groupcoop.cli.args import run_settings_from_args
    from groupcoop.cli.main import build_parser

    args = build_parser().parse_args(["train", "--dataset", "synth-waterbirds", *TINY, "--out", str(tmp_path / "r")])
    assert run_settings_from_args(args).method == "groupcoop"
    config = tmp_path / "c.yaml"
    config.write_text("dataset: synth-waterbirds\nbackbone: groupcoop-tiny\nmethod: coop\n")
    args = build_parser().parse_args(["train", "--config", str(config), "--out", str(tmp_path / "r")])
    assert run_settings_from_args(args).method == "coop"  # a config's method is kept
    assert "default groupcoop" in " ".join(cli("train", "--help").out.split())


def test_config_paths_are_absolute_and_a_run_replays_from_another_folder(tmp_path, cli, monkeypatch):
    make_csv_root(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    vocabulary = tmp_path / "vocab.yaml"
    vocabulary.write_text("attributes:\n  place: ['{} indoors', '{} outdoors']\n")
    args = ["train", *csv_args(Path("data")), *TINY, "--method", "zeroshot", "--out", "run", *fast(tmp_path)]
    assert cli(*args).code == 0
    config = yaml.safe_load(Path("run/config.yaml").read_text())
    assert config["root"] == str(tmp_path / "data")
    assert config["dataset_options"]["csv_path"] == str(tmp_path / "data" / "meta.csv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("train", "--config", tmp_path / "run" / "config.yaml", "--out", tmp_path / "again", *fast(tmp_path))
    assert result.code == 0, result.err
    same = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("run", "again")]
    assert [{k: v for k, v in m.items() if k != "provenance"} for m in same][0] == \
        [{k: v for k, v in m.items() if k != "provenance"} for m in same][1]
    # a hand-written config's relative paths are read from its own folder, not the current one
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "dataset": "csv", "root": "data", "backbone": "groupcoop-tiny", "method": "zeroshot",
        "dataset_options": {"csv_path": "meta.csv", "path_col": "path", "label_col": "label"},
        "groups": {"source": "pseudo", "bias_prompts": "auto", "vocabulary": "vocab.yaml"}}))
    from groupcoop.cli.args import run_settings_from_args
    from groupcoop.cli.main import build_parser

    settings = run_settings_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"),
                                                                 "--out", "x"]))
    assert settings.root == str(tmp_path / "data") and settings.groups.vocabulary == str(vocabulary)
    assert settings.dataset_options["csv_path"] == str(tmp_path / "data" / "meta.csv")


def test_groups_csv_has_paths_and_trains_from_a_file(tmp_path, cli, refused):
    root = make_csv_root(tmp_path / "data")
    groups = tmp_path / "groups"
    result = cli("groups", *csv_args(root), *TINY, "--labeler", "kmeans", "--out", groups, *fast(tmp_path))
    assert result.code == 0, result.err
    table = pd.read_csv(groups / "groups.csv")
    assert list(table.columns[:2]) == ["index", "path"] and table["path"].str.startswith("img/").all()
    out = tmp_path / "run"
    result = cli("train", *csv_args(root), *TINY, "--method", "group_linear", "--set", "epochs=1",
                 "--groups", f"file:{groups / 'groups.csv'}", "--out", out, *fast(tmp_path))
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["groups_source"] == "file" and "group_quality" in metrics
    assert yaml.safe_load((out / "config.yaml").read_text())["groups"]["file"] == str(groups / "groups.csv")
    run = ["train", *csv_args(root), *TINY, "--method", "group_linear", "--out", tmp_path / "bad"]
    (tmp_path / "short.csv").write_text("\n".join((groups / "groups.csv").read_text().splitlines()[:-1]) + "\n")
    refused([*run, "--groups", f"file:{tmp_path / 'short.csv'}"], "1 training images of csv have no row")
    (tmp_path / "stray.csv").write_text('path,group_name\n"img/4.png","cat, x"\n')  # a val image
    refused([*run, "--groups", f"file:{tmp_path / 'stray.csv'}"], "line 2", "not in the training split")


def test_discover_lists_the_attributes_it_dropped(tmp_path, cli, monkeypatch):
    from groupcoop.grouping.discovery import rank_candidates

    x = np.random.default_rng(0).normal(size=(200, 4))
    x[:, 3] = 1.0  # a feature every image has: "bright" never beats "dim"
    y = (x[:, 0] > 0).astype(np.int64)
    texts = {"side": (("{} left", "{} right"), np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])),
             "glow": (("{} dim", "{} bright"), np.array([[0, 0, 0, 0.0], [0, 0, 0, -1.0]]))}
    unkept: list = []
    candidates = rank_candidates(x, y, texts, unkept=unkept, image_side=False)
    assert [c["attribute"] for c in candidates] == ["side"]
    assert [u["attribute"] for u in unkept] == ["glow"] and "fewer than two of its 2 values" in unkept[0]["reason"]

    def fake_discover(dataset, unkept=None, **kwargs):  # the CLI shows what discovery hands back
        unkept.append({"attribute": "glow", "reason": "only one value matched"})
        return []

    monkeypatch.setattr("groupcoop.api.discover", fake_discover)
    root = make_csv_root(tmp_path / "data")
    result = cli("discover", *csv_args(root, attrs=False), *TINY, *fast(tmp_path))
    assert result.code == 0, result.err
    assert "dropped (no candidate):\n  glow (only one value matched)" in result.out


def test_small_messages_are_true(tmp_path, cli):
    from groupcoop.data.world.random_tasks import RANDOM_BIAS_ATTRIBUTES

    line = next(s for s in cli("datasets").out.splitlines() if s.startswith("synth-random"))
    assert all(a in line for a in RANDOM_BIAS_ATTRIBUTES)
    assert "}}}" not in cli("train", "--help").out and "{attributes: {NAME:" in cli("discover", "--help").out
    root = make_csv_root(tmp_path / "data")
    run = tmp_path / "run"
    assert cli("train", *csv_args(root), *TINY, "--method", "zeroshot", "--out", run, *fast(tmp_path)).code == 0
    bare = tmp_path / "bare"  # a classifier without the config.yaml that names its backbone
    bare.mkdir()
    (bare / "head.safetensors").write_bytes((run / "head.safetensors").read_bytes())
    (tmp_path / "x.png").write_bytes((root / "img" / "0.png").read_bytes())
    line = assert_one_line_error(cli("predict", bare, "--images", tmp_path / "x.png", "--out", tmp_path / "p.csv"),
                                 "no config.yaml")
    assert "--backbone" not in line  # predict has no such flag
    assert_one_line_error(cli("evaluate", "--prompts", bare, *csv_args(root), *fast(tmp_path)), "--backbone")


def test_tiny_warns_once_outside_the_synthetic_world(tmp_path, cli, capsys):
    from groupcoop.cli.args import warn_tiny
    from groupcoop.data.world.datasets import make_task_dataset
    from groupcoop.io.progress import shown

    root = make_csv_root(tmp_path / "data")
    result = cli("train", *csv_args(root), *TINY, "--method", "zeroshot", "--out", tmp_path / "run",
                 "--workers", "0", "--cache-dir", tmp_path / "cache")
    assert result.code == 0, result.err
    warnings = [s for s in result.err.splitlines() if s.startswith("groupcoop: warning: groupcoop-tiny")]
    assert len(warnings) == 1 and "--backbone ViT-B-16 --pretrained openai" in warnings[0]

    class Args:
        quiet = False

    capsys.readouterr()
    with shown():
        warn_tiny(Args, "groupcoop-tiny", make_task_dataset("synth-waterbirds"))
    assert "warning" not in capsys.readouterr().err
