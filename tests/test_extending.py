"""docs/extending.md's worked examples, run as written: a dataset, a method (added to a copy of
the package, touching two files), a labeler and a backbone family."""

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
from groupcoop.grouping import labelers, pseudo
from groupcoop.grouping.quality import quality as group_quality
from groupcoop.data import registry
from groupcoop.errors import UserError

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "groupcoop"


def block(marker: str) -> str:
    """The ```python block that follows `<!-- test: marker -->` in docs/extending.md."""
    match = re.search(rf"<!-- test: {marker} -->\s*```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, f"docs/extending.md has no python block marked {marker}"
    return match.group(1)


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


# --- a method: its module and two lines of the table, in a copy of the package -----------------------

@pytest.mark.slow  # a fresh process imports torch and open_clip
def test_the_method_example_touches_two_files_and_trains(tmp_path, waterbirds_prep):
    copy = tmp_path / "src" / "groupcoop"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "methods" / "group_centroids.py").write_text(block("method"), encoding="utf-8")
    import_line, entry_line = block("method-table").splitlines()
    table = (copy / "methods" / "__init__.py").read_text(encoding="utf-8").splitlines()
    last_import = max(i for i, line in enumerate(table) if line.startswith("from ."))
    table.insert(last_import + 1, import_line)
    table.insert(table.index(")}"), entry_line)
    (copy / "methods" / "__init__.py").write_text("\n".join(table) + "\n", encoding="utf-8")

    changed = []
    for path in copy.rglob("*.py"):
        original = PACKAGE / path.relative_to(copy)
        if not original.exists() or not filecmp.cmp(path, original, shallow=False):
            changed.append(path.relative_to(copy).as_posix())
    assert sorted(changed) == ["methods/__init__.py", "methods/group_centroids.py"]

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(copy.parent)}
    argv = [sys.executable, "-m", "groupcoop", "train", "--dataset", "synth-waterbirds", "--backbone",
            "groupcoop-tiny", "--method", "group_centroids", "--set", "scale=50", "--out", str(out), "--quiet"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "group_centroids" and metrics["hyperparameters"] == {"scale": 50.0}
    assert metrics["trainable_params"] == 4 * waterbirds_prep.feats.dim and metrics["needs_groups"] == "train"
    assert metrics["splits"]["test"]["worst_group_acc"] > 0.5
    listed = subprocess.run([sys.executable, "-m", "groupcoop", "methods"], capture_output=True, text=True, env=env)
    assert "group_centroids" in listed.stdout and "C*G*D" in listed.stdout


# --- a labeler --------------------------------------------------------------------------------------

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

    adapter = as_module("groupcoop.backbone_bow", block("backbone"))
    assert 'name.startswith("bow:")' in block("backbone-branch")
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
