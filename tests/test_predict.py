"""Using what was trained: `groupcoop predict`, `groupcoop export` with plain open_clip, the Python API."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from groupcoop.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
TRAIN = ["train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "groupcoop",
         "--set", "epochs=2", "--quiet"]


def readme_block(marker: str) -> str:
    """The ```python block that follows `<!-- test: marker -->` in the README or a docs page; where both
    hold it, every copy must be the same."""
    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    found = [m.group(1) for page in pages
             for m in re.finditer(rf"<!-- test: {marker} -->\s*```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)]
    assert found, f"neither README nor docs/ has a python block marked {marker}"
    assert all(block == found[0] for block in found), f"the copies of the block {marker} differ"
    return found[0]


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


@pytest.fixture(scope="module")
def exported(run_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "new" / "classifier"  # a folder that does not exist yet
    assert main(["export", str(run_folder), "--out", str(out)]) == 0
    return out


def test_readme_export_block_runs_verbatim_with_plain_open_clip_and_equals_predict(exported, run_folder,
                                                                                    test_images, cli, tmp_path,
                                                                                    monkeypatch):
    """The README's block, taken from README.md, on an exported groupcoop-tiny run: nothing registered first."""
    folder, rows = test_images
    image = folder / f"{rows[7]:05d}.png"
    snippet = readme_block("export")
    assert "import groupcoop" not in snippet and "from groupcoop" not in snippet  # open_clip, torch, safetensors only
    monkeypatch.chdir(tmp_path)
    (tmp_path / "classifier").symlink_to(exported, target_is_directory=True)
    (tmp_path / "photo.png").write_bytes(image.read_bytes())
    code = ("import open_clip, runpy\n"
            "assert 'groupcoop-tiny' not in open_clip.list_models()\n"  # a fresh process: plain open_clip
            f"scope = runpy.run_path({str(tmp_path / 'snippet.py')!r})\n"
            "print(repr(scope['probs'][0].tolist()))\n")
    (tmp_path / "snippet.py").write_text(snippet)
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    got = np.array(eval(proc.stdout.strip().splitlines()[-1]))
    preds = tmp_path / "preds.csv"
    result = cli("predict", run_folder, "--images", image, "--out", preds, "--quiet", "--workers", "0")
    assert result.code == 0, result.err
    row = read_preds(preds)[0]
    from groupcoop.runs.predict import Classifier

    clf = Classifier.from_run(run_folder)
    expected = clf.predict([image]).probabilities[0]
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(got - np.array([float(row[f"p_{c}"]) for c in clf.class_names])).max() <= 1e-5
    meta = json.loads(__import__("safetensors").safe_open(str(exported / "head.safetensors"), "pt").metadata()["groupcoop"])
    assert meta["model"] == "groupcoop-tiny" and meta["pretrained"] is None and len(meta["weights_sha256"]) == 64
    assert meta["class_names"] == ["angular shape", "round shape"] and len(meta["row_names"]) == 4


def test_an_export_folder_predicts_like_its_run_and_its_checksum_is_checked(exported, run_folder, test_images,
                                                                             cli, tmp_path):
    import shutil

    folder, rows = test_images
    images = [folder / f"{i:05d}.png" for i in rows[:6]]
    from groupcoop.runs.predict import Classifier

    a, b = Classifier.from_run(run_folder).predict(images), Classifier.from_run(exported).predict(images)
    assert (a.classes == b.classes).all() and np.abs(a.probabilities - b.probabilities).max() <= 1e-5
    copied = tmp_path / "copied"  # copied without its hidden manifest: still an export
    shutil.copytree(exported, copied, ignore=shutil.ignore_patterns(".groupcoop.json"))
    c = Classifier.from_run(copied).predict(images)
    assert np.abs(c.probabilities - b.probabilities).max() == 0
    tampered = tmp_path / "tampered"
    shutil.copytree(exported, tampered)
    weights = tampered / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit of one weight: the model still loads, the checksum says no
    weights.write_bytes(bytes(data))
    result = cli("predict", tampered, "--images", images[0], "--out", tmp_path / "p.csv", "--quiet")
    assert result.code == 2 and "sha256" in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "p.csv").exists()


def test_export_refuses_to_overwrite(run_folder, cli, tmp_path):
    mine = tmp_path / "classifier"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = cli("export", run_folder, "--out", mine, "--overwrite")
    assert result.code == 2 and "groupcoop did not write" in result.err
    assert (mine / "notes.txt").read_text() == "mine"
    first = cli("export", run_folder, "--out", tmp_path / "exp")
    assert first.code == 0, first.err
    again = cli("export", run_folder, "--out", tmp_path / "exp")
    assert again.code == 2 and "--overwrite" in again.err
    assert cli("export", run_folder, "--out", tmp_path / "exp", "--overwrite").code == 0
    itself = cli("export", run_folder, "--out", run_folder, "--overwrite")
    assert itself.code == 2 and "which this command reads" in itself.err and (run_folder / "config.yaml").is_file()
    single = cli("export", run_folder, "--out", tmp_path / "head.safetensors")
    assert single.code == 2 and "folder" in single.err and not (tmp_path / "head.safetensors").exists()


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
    assert "provenance" in again.metrics  # metrics.json adds what made the run (versions, host, times)
    assert {k: v for k, v in again.metrics.items() if k != "provenance"} == json.loads(json.dumps(run.metrics))
    assert again.settings == run.settings


def test_classifier_accepts_tensors_and_features(run_folder, waterbirds_prep):
    from groupcoop.runs.predict import Classifier

    clf = Classifier.from_run(run_folder)
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


def test_the_classifier_keeps_its_older_name():
    import groupcoop
    from groupcoop.runs.predict import Classifier

    assert groupcoop.Classifier is Classifier and groupcoop.GroupCoOpClassifier is Classifier
    assert {"Classifier", "GroupCoOpClassifier"} <= set(groupcoop.__all__)
