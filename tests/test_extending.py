"""docs/extending.md's walk-throughs, run as written on a copy of the package: each extension is
its module plus one table entry (exactly the files the doc names change), and it then appears in
the listings, `--help`, a sweep's `--dry-run` and a training run with no other edit."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import replicas
from groupcoop.data import registry
from groupcoop.errors import UserError
from groupcoop.grouping import labelers, pseudo
from groupcoop.grouping.quality import quality as group_quality

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "groupcoop"
TINY_TRAIN = ["--backbone", "groupcoop-tiny", "--quiet", "--workers", "0"]


def block(marker: str) -> str:
    """The ```python block that follows `<!-- test: marker -->` in docs/extending.md."""
    match = re.search(rf"<!-- test: {marker} -->\s*```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, f"docs/extending.md has no python block marked {marker}"
    return match.group(1)


def new_module(marker: str) -> tuple[str, str]:
    """(path inside the package, text) of a doc block whose first line names its new file."""
    text = block(marker)
    first, _, rest = text.partition("\n")
    assert first.startswith("# src/groupcoop/"), first
    return first.removeprefix("# src/groupcoop/"), rest


def insert_entry(path: Path, opener: str, closer: str, entry: str, import_line: str | None = None,
                 code: str | None = None) -> None:
    """Put `entry` last in the table whose first line starts with `opener` and whose last line is
    `closer`, `code` (the function the entry names) just before the table, and `import_line` after
    the module's last relative import above it: what a person following the doc would do."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(opener))
    end = lines.index(closer, start)
    lines[end:end] = entry.rstrip("\n").splitlines()
    if code is not None:
        lines[start:start] = [line for line in code.splitlines() if not line.startswith("# in src/")] + ["", ""]
    if import_line is not None:
        last = max(i for i, line in enumerate(lines[:start]) if line.startswith("from ."))
        lines.insert(last + 1, import_line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def changed_files(copy: Path) -> list[str]:
    """Files of the copy that differ from the package, relative to it."""
    changed = []
    for path in copy.rglob("*.py"):
        original = PACKAGE / path.relative_to(copy)
        if not original.exists() or not filecmp.cmp(path, original, shallow=False):
            changed.append(path.relative_to(copy).as_posix())
    return sorted(changed)


def package_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "src" / "groupcoop"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


RUNNER = """
import contextlib, io, json, sys
from groupcoop.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    results.append({"code": code or 0, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
"""


def run_cli(copy: Path, *argvs: list) -> list[dict]:
    """Each argv through the copy's `groupcoop` CLI, in one fresh process: [{code, out, err}, ...]."""
    argv_json = json.dumps([[str(a) for a in argv] for argv in argvs])
    proc = subprocess.run([sys.executable, "-c", RUNNER, argv_json], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(copy.parent)}, cwd=copy.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def grid(tmp_path: Path, **values) -> Path:
    """A sweep grid file: one seed, the given datasets, backbones, methods and groups."""
    path = tmp_path / "grid.yaml"
    lines = ["name: extension", "seeds: [0]"] + [f"{key}: {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def as_module(monkeypatch):
    """Run code as module `name` (relative imports resolve inside groupcoop; gone after the test)."""
    def make(name: str, code: str, scope: dict | None = None) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__package__ = name.rsplit(".", 1)[0]
        module.__dict__.update(scope or {})
        monkeypatch.setitem(sys.modules, name, module)  # pydantic resolves the schema's annotations there
        exec(compile(code, f"docs/extending.md ({name})", "exec", dont_inherit=True), module.__dict__)
        return module

    return make


# --- a dataset --------------------------------------------------------------------------------------

def test_the_dataset_example_loads_and_is_checked(tmp_path, monkeypatch, cli, as_module):
    folders = as_module("groupcoop.data.folders", block("dataset"))
    entry = eval("{" + block("dataset-entry") + "}", {**vars(registry), **vars(folders)})
    monkeypatch.setitem(registry.LOADERS, "folders", entry["folders"])
    root = tmp_path / "tree"
    for i, (split, cls, value) in enumerate((s, c, v) for s in ("train", "val", "test") for c in ("cat", "dog")
                                            for v in ("grass", "water") for _ in range(2)):
        replicas.write_image(root / split / cls / value / f"{i}.png", i)
    ds = registry.load_dataset("folders", root, attribute="place")
    assert ds.class_names == ["cat", "dog"] and ds.attribute_names == ["place"] and len(ds.y) == 24
    assert ds.group_names()[1] == "cat, water" and list(ds.group_counts("val")) == [2, 2, 2, 2]
    result = cli("datasets", "check", "folders", "--root", root, "--option", "colour=red")
    assert result.code == 2 and "there is no --option colour" in result.err
    (root / "holdout" / "cat" / "grass").mkdir(parents=True)
    replicas.write_image(root / "holdout" / "cat" / "grass" / "x.png")
    with pytest.raises(UserError, match="holdout is not a split"):
        registry.load_dataset("folders", root)


# --- a method: its module and two lines of the table -------------------------------------------------

def folder_tree(root: Path) -> Path:
    """The dataset example's layout: <split>/<class>/<value>/*.png, two images of each group."""
    for i, (split, cls, value) in enumerate((s, c, v) for s in ("train", "val", "test") for c in ("cat", "dog")
                                            for v in ("grass", "water") for _ in range(2)):
        replicas.write_image(root / split / cls / value / f"{i}.png", i)
    return root


@pytest.mark.slow  # a fresh process imports torch and open_clip
def test_the_dataset_walkthrough_touches_two_files_and_appears_everywhere(tmp_path):
    copy = package_copy(tmp_path)
    path, text = new_module("dataset")
    (copy / path).write_text(text, encoding="utf-8")
    insert_entry(copy / "data" / "registry.py", "    table = {", "    }", block("dataset-entry"),
                 import_line="from .folders import FoldersOptions, load_folders")
    assert changed_files(copy) == ["data/folders.py", "data/registry.py"]

    root, out = folder_tree(tmp_path / "tree"), tmp_path / "run"
    listing, check, dry, train = run_cli(
        copy, ["datasets"], ["datasets", "check", "folders", "--root", root],
        ["sweep", grid(tmp_path, datasets=[{"name": "folders", "root": str(root)}], backbones=["groupcoop-tiny"],
                       methods=["zeroshot"]), "--dry-run", "--out", tmp_path / "sweep"],
        ["train", "--dataset", "folders", "--root", root, "--option", "attribute=place", "--method", "zeroshot",
         *TINY_TRAIN, "--out", out])
    assert "folders" in listing["out"] and check["code"] == 0, check["err"]
    assert dry["code"] == 0 and "folders" in dry["out"] and "todo" in dry["out"], dry["err"]
    assert train["code"] == 0, train["err"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "folders" and [g["name"] for g in metrics["splits"]["test"]["groups"]][1] == \
        "cat, water"


@pytest.mark.slow  # a fresh process imports torch and open_clip
def test_the_method_walkthrough_touches_two_files_and_appears_everywhere(tmp_path, waterbirds_prep):
    copy = package_copy(tmp_path)
    path, text = new_module("method")
    (copy / path).write_text(text, encoding="utf-8")
    import_line, entry_line = block("method-table").splitlines()
    insert_entry(copy / "methods" / "__init__.py", "METHODS: dict[str, Recipe] = {", ")}", entry_line, import_line)
    assert changed_files(copy) == ["methods/__init__.py", "methods/group_centroids.py"]

    out = tmp_path / "run"
    listing, help_, dry, train = run_cli(
        copy, ["methods"], ["train", "--help"],
        ["sweep", grid(tmp_path, datasets=["synth-waterbirds"], backbones=["groupcoop-tiny"],
                       methods=["group_centroids"], groups=["gt"]), "--dry-run", "--out", tmp_path / "sweep"],
        ["train", "--dataset", "synth-waterbirds", "--method", "group_centroids", "--set", "scale=50", *TINY_TRAIN,
         "--out", out])
    assert "group_centroids" in listing["out"] and "C*G*D" in listing["out"]
    assert "group_centroids" in help_["out"]
    assert dry["code"] == 0 and "group_centroids" in dry["out"], dry["err"]
    assert train["code"] == 0, train["err"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "group_centroids" and metrics["hyperparameters"] == {"scale": 50.0}
    assert metrics["trainable_params"] == 4 * waterbirds_prep.feats.dim and metrics["needs_groups"] == "train"
    assert metrics["splits"]["test"]["worst_group_acc"] > 0.5


# --- a labeler --------------------------------------------------------------------------------------

@pytest.mark.slow  # a fresh process imports torch and open_clip
def test_the_unnamed_labeler_walkthrough_touches_one_file_and_appears_everywhere(tmp_path, waterbirds_prep):
    copy = package_copy(tmp_path)
    insert_entry(copy / "grouping" / "labelers.py", "LABELERS: dict[str, Labeler] = {", "}",
                 block("labeler-source-entry"), code=block("labeler-source"))
    assert changed_files(copy) == ["grouping/labelers.py"]

    task = ["--dataset", "synth-waterbirds", *TINY_TRAIN]
    help_, groups, train, refused, dry = run_cli(
        copy, ["train", "--help"], ["groups", "--labeler", "pc_bins", *task, "--out", tmp_path / "groups"],
        ["train", "--method", "groupcoop", "--groups", "pc_bins", "--set", "epochs=1", *task, "--out", tmp_path / "run"],
        ["train", "--method", "zeroshot_groups", "--groups", "pc_bins", *task, "--out", tmp_path / "refused"],
        ["sweep", grid(tmp_path, datasets=["synth-waterbirds"], backbones=["groupcoop-tiny"], methods=["groupcoop"],
                       groups=["pc_bins"]), "--dry-run", "--out", tmp_path / "sweep"])
    assert "pc_bins" in help_["out"]
    assert groups["code"] == 0 and "round shape, cluster 1" in (tmp_path / "groups" / "groups.csv").read_text(), groups["err"]
    assert train["code"] == 0, train["err"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["groups_source"] == "pc_bins" and metrics["splits"]["test"]["worst_group_acc"] > 0
    assert refused["code"] == 2 and "pc_bins clusters have no names" in refused["err"]
    assert dry["code"] == 0 and "pc_bins" in dry["out"], dry["err"]


def test_the_labeler_example_labels_every_class(waterbirds_prep, monkeypatch, as_module):
    from groupcoop.grouping.plan import attribute_scores, labeler_spec, plan_groups
    from groupcoop.grouping.options import GroupingOptions

    scope = as_module("groupcoop.labelers_example", block("labeler"), vars(pseudo))
    monkeypatch.setitem(pseudo.PSEUDO_VARIANTS, "nearest_mean", pseudo.Variant(scope._pseudo_nearest_mean))
    ds = waterbirds_prep.dataset
    options = GroupingOptions(source="pseudo")
    rows = ds.split_indices("train")
    scores = attribute_scores(waterbirds_prep, rows, labeler_spec(ds, options).phrases)
    groups = labelers.assign_groups("pseudo", waterbirds_prep.feats.numpy(rows), ds.y[rows], ds.attr_sizes,
                                    attr_scores=scores, variant="nearest_mean")
    assert (groups // 2 == ds.y[rows]).all(), "a group never crosses classes"
    quality = group_quality(ds.groups[rows], groups)
    zeroshot = group_quality(ds.groups[rows], labelers.assign_groups("zeroshot", None, ds.y[rows], ds.attr_sizes,
                                                                          attr_scores=scores))
    assert quality["named_accuracy"] > 0.7 and abs(quality["named_accuracy"] - zeroshot["named_accuracy"]) < 0.2
    plan = plan_groups(waterbirds_prep, options.model_copy(update={"variant": "recall"}), seed=0)
    assert plan.source == "pseudo"  # the table's own variants are untouched


# --- a backbone family ------------------------------------------------------------------------------

def test_the_backbone_example_is_a_backbone_that_trains(tmp_path, as_module):
    from groupcoop.backbones.protocol import Backbone
    from groupcoop.data.registry import load_dataset
    from groupcoop.runs.pipeline import check_run, prepare, run_method
    from groupcoop.methods.prompts import PromptLearner
    from groupcoop.runs.settings import make_settings

    adapter = as_module("groupcoop.backbones.bow", new_module("backbone")[1])
    bb = adapter.load("bow:tiny")
    assert isinstance(bb, Backbone)
    texts = ["a photo of a cat.", "x", "dog on indoor"]
    ids = bb.tokenize(texts)
    with torch.no_grad():
        assert torch.allclose(bb.encode_text(texts), bb.encode_text_embeddings(bb.token_embeddings(ids),
                                                                               bb.pool_positions(ids), cut=False))
        learner = PromptLearner(bb, ["cat"], n_ctx=4, init="a photo of a")
        assert torch.allclose(learner(), bb.encode_text(["a photo of a cat."]), atol=1e-6)

    root = replicas.csv_replica(tmp_path)
    dataset = load_dataset("csv", root, csv_path="labels.csv", path_col="image", label_col="animal",
                           attr_cols="background", split_col="fold")
    settings = make_settings({"dataset": "csv", "root": str(root), "backbone": "bow:tiny", "method": "groupcoop",
                              "dataset_options": {"csv_path": "labels.csv", "path_col": "image", "label_col": "animal",
                                                  "attr_cols": ["background"], "split_col": "fold"},
                              "hyperparameters": {"epochs": 2, "batch_size": 4}})
    dataset, settings, bb = check_run(settings, dataset, bb)
    prep = prepare(dataset, bb, cache_dir=tmp_path / "cache", workers=0, progress=False)
    run = run_method(prep, settings, log=lambda s: None)
    assert run.metrics["trainable_params"] == 2 * 2 * 4 * bb.token_width and run.metrics["epochs_run"] == 2
    assert np.isfinite(run.metrics["history"][-1]["loss"])
    (tmp_path / "export").mkdir()  # a family that does not write its models for `export` is one line, nothing written
    with pytest.raises(UserError, match="^backbone bow:tiny: export cannot write this model family; [^\n]+$"):
        bb.export_model(tmp_path / "export")
    assert not any((tmp_path / "export").iterdir())


CSV_OPTIONS = ["--option", "csv_path=labels.csv", "--option", "path_col=image", "--option", "label_col=animal",
               "--option", "attr_cols=[background]", "--option", "split_col=fold"]


@pytest.mark.slow  # a fresh process imports torch and open_clip
def test_the_backbone_walkthrough_touches_two_files_and_appears_everywhere(tmp_path):
    copy = package_copy(tmp_path)
    path, text = new_module("backbone")
    (copy / path).write_text(text, encoding="utf-8")
    insert_entry(copy / "backbones" / "families.py", "FAMILIES: tuple[Family, ...] = (", ")", block("backbone-entry"))
    assert changed_files(copy) == ["backbones/bow.py", "backbones/families.py"]

    root = replicas.csv_replica(tmp_path)
    listing, help_, dry, train = run_cli(
        copy, ["backbones"], ["train", "--help"],
        ["sweep", grid(tmp_path, datasets=["synth-waterbirds"], backbones=["bow:tiny"], methods=["groupcoop"],
                       groups=["gt"]), "--dry-run", "--out", tmp_path / "sweep"],
        ["train", "--dataset", "csv", "--root", root, *CSV_OPTIONS, "--backbone", "bow:tiny", "--method", "groupcoop",
         "--set", "epochs=2", "--set", "batch_size=4", "--quiet", "--workers", "0", "--out", tmp_path / "run"])
    assert "bow:<name> for the bag-of-words example model" in listing["out"]
    assert "bow:<name> for the bag-of-words example model" in " ".join(help_["out"].split())
    assert dry["code"] == 0 and "no size or FLOPs known" not in dry["out"], dry["out"] + dry["err"]
    assert train["code"] == 0, train["err"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["backbone"] == "bow:tiny@seed0" and metrics["epochs_run"] == 2  # its identity


@pytest.mark.slow  # a fresh process imports torch and open_clip
def test_the_wrapper_walkthrough_wraps_any_backbone_with_its_own_cache_key(tmp_path, as_module):
    copy = package_copy(tmp_path)
    path, text = new_module("wrapper")
    (copy / path).write_text(text, encoding="utf-8")
    insert_entry(copy / "backbones" / "families.py", "FAMILIES: tuple[Family, ...] = (", ")", block("wrapper-entry"))
    assert changed_files(copy) == ["backbones/families.py", "backbones/lowres.py"]

    root = replicas.csv_replica(tmp_path)
    csv = ["--dataset", "csv", "--root", root, *CSV_OPTIONS, "--method", "zeroshot", "--quiet", "--workers", "0"]
    listing, dry, wrapped = run_cli(
        copy, ["backbones"],
        ["sweep", grid(tmp_path, datasets=["synth-waterbirds"], backbones=["lowres:groupcoop-tiny"],
                       methods=["coop"]), "--dry-run", "--out", tmp_path / "sweep"],
        ["train", *csv, "--backbone", "lowres:groupcoop-tiny", "--out", tmp_path / "run"])
    assert "lowres:<backbone> for any backbone shown 32-pixel images" in listing["out"]
    assert dry["code"] == 0 and "no size or FLOPs known" not in dry["out"], dry["out"] + dry["err"]
    assert wrapped["code"] == 0, wrapped["err"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["backbone"].startswith("lowres32:groupcoop-tiny@")

    from PIL import Image

    from groupcoop.backbones.families import TINY, load_backbone

    inner = load_backbone(TINY)
    wrapper = as_module("groupcoop.backbones.lowres", text).LowResolution(inner)
    assert wrapper.identity != inner.identity and repr(wrapper.preprocess) != repr(inner.preprocess)  # the cache key
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    with torch.no_grad():
        ours, theirs = (bb.encode_images(bb.preprocess(image)[None]) for bb in (wrapper, inner))
    assert not torch.allclose(ours, theirs)  # its own features
    assert torch.equal(wrapper.encode_text(["a cat"]), inner.encode_text(["a cat"]))  # the rest is the inner one's
