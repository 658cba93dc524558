"""Using what was trained: `groupcoop predict`, `groupcoop export` with plain open_clip, the Python API."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from groupcoop.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
TRAIN = ["train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "groupcoop",
         "--set", "epochs=2", "--quiet"]


def readme_block(marker: str) -> str:
    """The ```python block that follows `<!-- test: marker -->` in the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- test: {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no python block marked {marker}"
    return match.group(1)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, waterbirds_prep) -> Path:
    out = tmp_path_factory.mktemp("predict") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def test_images(tmp_path_factory, waterbirds_prep):
    """The synthetic test split written as PNG files (lossless: the same pixels the run was scored on)."""
    ds = waterbirds_prep.dataset
    folder = tmp_path_factory.mktemp("test-images")
    rows = ds.split_indices("test")
    for i in rows:
        ds.images.load(i).save(folder / f"{i:05d}.png")
    return folder, rows


def read_preds(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_reproduces_the_runs_test_accuracy(run_folder, test_images, cli, tmp_path, waterbirds_prep):
    folder, rows = test_images
    out = tmp_path / "preds.csv"
    result = cli("predict", run_folder, "--images", folder, "--out", out, "--quiet", "--workers", "1")
    assert result.code == 0, result.err
    preds = read_preds(out)
    assert len(preds) == len(rows) and all(p["error"] == "" for p in preds)
    ds = waterbirds_prep.dataset
    names = ds.class_names
    by_row = {int(Path(p["path"]).stem): p for p in preds}
    predicted = np.array([names.index(by_row[i]["class"]) for i in rows])
    correct = predicted == ds.y[rows]
    test = json.loads((run_folder / "metrics.json").read_text())["splits"]["test"]
    assert float(correct.mean()) == test["avg_acc"]
    groups = ds.groups[rows]
    per_group = [float(correct[groups == g].mean()) for g in range(ds.n_groups)]
    assert per_group == [g["acc"] for g in test["groups"]] and min(per_group) == test["worst_group_acc"]
    # the predicted group is one of the predicted class's group prompts; probabilities sum to one
    p = by_row[int(rows[0])]
    assert p["group"].startswith(p["class"])
    assert abs(sum(float(p[f"p_{c}"]) for c in names) - 1) < 1e-5


def test_one_unreadable_image_among_many(run_folder, test_images, cli, tmp_path):
    folder, rows = test_images
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in rows[:5]:
        (mixed / f"{i}.png").write_bytes((folder / f"{i:05d}.png").read_bytes())
    (mixed / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    result = cli("predict", run_folder, "--images", mixed, "--out", out, "--quiet", "--workers", "2")
    assert result.code == 0, result.err
    assert "5 of 6" in result.out and "1 could not be read" in result.out
    preds = {Path(p["path"]).name: p for p in read_preds(out)}
    assert preds["broken.png"]["error"] and preds["broken.png"]["class"] == ""
    assert all(p["error"] == "" and p["class"] for n, p in preds.items() if n != "broken.png")
    strict = cli("predict", run_folder, "--images", mixed, "--out", tmp_path / "strict.csv", "--strict", "--quiet")
    assert strict.code == 2 and "broken.png" in strict.err and len(strict.err.strip().splitlines()) == 1
    assert not (tmp_path / "strict.csv").exists()


def test_predict_from_a_csv(run_folder, test_images, cli, tmp_path):
    folder, rows = test_images
    listing = tmp_path / "list.csv"
    listing.write_text("file\n" + "".join(f"{i:05d}.png\n" for i in rows[:4]))
    out = tmp_path / "preds.csv"
    result = cli("predict", run_folder, "--csv", listing, "--root", folder, "--path-col", "file", "--out", out,
                 "--quiet", "--workers", "0")
    assert result.code == 0, result.err
    assert [Path(p["path"]).name for p in read_preds(out)] == [f"{i:05d}.png" for i in rows[:4]]


@pytest.mark.parametrize("case", ["missing input", "empty folder", "no classifier", "escaping csv path"])
def test_bad_predict_input_is_one_line_and_writes_nothing(case, run_folder, cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "preds.csv"
    args = {
        "missing input": [run_folder, "--images", tmp_path / "nope.png"],
        "empty folder": [run_folder, "--images", empty],
        "no classifier": [empty, "--images", run_folder / "metrics.json"],
        "escaping csv path": [run_folder, "--csv", tmp_path / "l.csv", "--root", empty],
    }[case]
    (tmp_path / "l.csv").write_text("path\n../secret.png\n")
    result = cli("predict", *args, "--out", out, "--quiet")
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1 and result.err.startswith("groupcoop: error: ")
    assert not out.exists()


def test_exported_head_with_plain_open_clip_equals_predict(run_folder, test_images, cli, tmp_path, monkeypatch):
    import open_clip

    from groupcoop.backbone_openclip import _asset
    from groupcoop.predict import GroupCoOpClassifier

    folder, rows = test_images
    head = tmp_path / "head.safetensors"
    result = cli("export", run_folder, "--out", head)
    assert result.code == 0, result.err
    image = folder / f"{rows[7]:05d}.png"
    snippet = readme_block("export")
    assert "import groupcoop" not in snippet and "from groupcoop" not in snippet  # open_clip, torch, safetensors only
    open_clip.add_model_config(_asset("groupcoop-tiny.json"))  # the bundled architecture is not one of open_clip's
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.png").write_bytes(image.read_bytes())
    scope: dict = {}
    exec(compile(snippet, "README export snippet", "exec"), scope)
    clf = GroupCoOpClassifier.from_run(run_folder)
    expected = clf.predict([image]).probabilities[0]
    got = scope["probs"][0].numpy()
    assert np.abs(got - expected).max() <= 1e-5
    meta = json.loads(__import__("safetensors").safe_open(str(head), "pt").metadata()["groupcoop"])
    assert meta["model"] == "groupcoop-tiny" and len(meta["weights_sha256"]) == 64
    assert meta["class_names"] == ["angular shape", "round shape"] and len(meta["row_names"]) == 4


def test_export_refuses_to_overwrite(run_folder, cli, tmp_path):
    target = tmp_path / "head.safetensors"
    target.write_bytes(b"mine")
    result = cli("export", run_folder, "--out", target)
    assert result.code == 2 and "already exists" in result.err
    assert target.read_bytes() == b"mine"


def test_readme_python_api_trains_saves_loads_and_predicts(tmp_path, monkeypatch, waterbirds_prep):
    snippet = readme_block("api")
    assert len([line for line in snippet.splitlines() if line.strip()]) < 15
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README API snippet", "exec"), scope)
    run, pred = scope["run"], scope["pred"]
    assert 0.5 < run.metrics["splits"]["test"]["worst_group_acc"] <= 1
    assert (tmp_path / "runs" / "api-demo" / "metrics.json").is_file()
    assert pred.probabilities.shape == (8, 2) and np.allclose(pred.probabilities.sum(1), 1, atol=1e-5)
    import groupcoop

    again = groupcoop.load_run(tmp_path / "runs" / "api-demo")
    assert again.metrics == json.loads(json.dumps(run.metrics)) and again.settings == run.settings


def test_classifier_accepts_tensors_and_features(run_folder, waterbirds_prep):
    from groupcoop.predict import GroupCoOpClassifier

    clf = GroupCoOpClassifier.from_run(run_folder)
    ds = waterbirds_prep.dataset
    images = [ds.images.load(i) for i in range(4)]
    batch = torch.stack([clf.backbone.preprocess(im) for im in images])
    a, b = clf.predict(images), clf.predict(batch)
    c = clf.predict_features(clf.backbone.encode_images(batch))
    assert (a.classes == b.classes).all() and (b.classes == c.classes).all()
    assert np.allclose(a.probabilities, c.probabilities, atol=1e-6)


def test_version_and_lazy_import():
    import subprocess
    import sys

    code = "import sys, groupcoop; print(groupcoop.__version__); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert re.fullmatch(r"\d+\.\d+\.\d+", out[0]) and out[1] == "False"
