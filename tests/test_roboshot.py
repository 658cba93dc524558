"""RoboShot and PRISM-mini on a constructed embedding space where a spurious direction, planted
in the class prompts' text, flips zero-shot on the minority images; and both through the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from groupcoop.data.base import GroupSpec
from groupcoop.methods import METHODS
from groupcoop.methods.prism import PrismMiniParams, fit_prism_mini, spurious_rows
from groupcoop.methods.roboshot import RoboShotParams, directions, fit_roboshot, orthonormal_rows
from groupcoop.methods.zeroshot import ZeroShotParams, fit_zeroshot

E = torch.eye(6, dtype=torch.float64)
# word -> vector: each class name leans on the background its majority shows (the planted bias)
WORDS = {"round": E[0] + 0.8 * E[2], "angular": E[1] - 0.8 * E[2], "water": 2 * E[2] + E[3], "land": -2 * E[2] + E[3]}
CLASSES = ("round", "angular")
PHRASES = (("{} on water", "{} on land"),)


class WordBackbone:
    """A text encoder that sums the vectors of the words it knows (the others, "a photo of", add nothing)."""

    logit_scale = 50.0

    def text_features(self, texts, templates=("a photo of a {}.", "a {}.")):
        def one(text):
            vec = sum((WORDS[w] for w in text.replace(".", " ").split() if w in WORDS), torch.zeros(6, dtype=E.dtype))
            return F.normalize(vec, dim=0)

        return torch.stack([F.normalize(torch.stack([one(t.format(x)) for t in templates]).mean(0), dim=0)
                            for x in texts]).float()

    def row_bias(self, n):
        return None


def make_task(phrases=PHRASES, log=None):
    spec = GroupSpec(CLASSES, (("on water", "on land"),) if phrases else (("cluster 0", "cluster 1"),), phrases)
    return SimpleNamespace(dataset=SimpleNamespace(class_names=CLASSES), backbone=WordBackbone(), spec=spec,
                           n_classes=2, log=log or (lambda _: None))


def images(n=40, seed=0):
    """Round objects on water and angular ones on land (majority), and the swapped minority."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 0, 1], n)
    water = np.repeat([1.0, -1.0, -1.0, 1.0], n)  # +1 water, -1 land; the last two blocks are the minority
    x = torch.zeros((4 * n, 6), dtype=torch.float64)
    x[np.arange(4 * n), y] = 1.0
    x[:, 2] = torch.as_tensor(water)
    x[:, 4:] = torch.as_tensor(rng.normal(0, 0.1, (4 * n, 2)))
    return F.normalize(x, dim=1).float(), y, np.arange(4 * n) >= 2 * n


def harmful_direction():
    """The class-averaged difference of the 'on water' and 'on land' prompts, computed here independently."""
    bb = WordBackbone()
    water = bb.text_features([f"{c} on water" for c in CLASSES]).double().mean(0)
    land = bb.text_features([f"{c} on land" for c in CLASSES]).double().mean(0)
    return F.normalize(water - land, dim=0)


def test_the_planted_direction_flips_zero_shot_on_the_minority():
    x, y, minority = images()
    pred = fit_zeroshot(make_task(), ZeroShotParams()).head.predict_classes(x)
    assert (pred[~minority] == y[~minority]).all() and (pred[minority] != y[minority]).all()


@pytest.mark.parametrize("harmful,boost", [("class_mean", 0.0), ("class_mean", 1.0), ("per_class", 2.0)])
def test_roboshot_removes_the_harmful_direction_and_fixes_the_minority(harmful, boost):
    task, (x, y, minority) = make_task(), images()
    hp = RoboShotParams(harmful=harmful, boost=boost)
    d = directions(task, hp)
    moved = d.apply(x)
    assert moved.double() @ harmful_direction() == pytest.approx(np.zeros(len(x)), abs=1e-6)
    assert len(d.helpful) >= 1 and torch.allclose(d.helpful @ d.harmful.T, torch.zeros(1, dtype=torch.float64),
                                                  atol=1e-12)  # the boost cannot bring a removed direction back
    fitted = fit_roboshot(task, hp)
    head = fitted.head
    # the head's rows are T w_c: its logits are those of the moved images against the class prompts
    w = task.backbone.text_features(list(CLASSES)).double()
    assert torch.allclose(head.logits(x).double(), task.backbone.logit_scale * moved @ w.T, atol=1e-4)
    pred = head.predict_classes(x)
    assert (pred == y).all(), f"minority accuracy {(pred[minority] == y[minority]).mean():.2f}"
    assert np.array_equal(pred, (F.normalize(moved, dim=1) @ w.T).argmax(1).numpy())
    assert fitted.trainable == 0 and fitted.extra["roboshot"]["harmful_directions"] == len(d.harmful) >= 1


def test_gram_schmidt_drops_repeated_and_removed_directions():
    v = torch.stack([E[0] + E[1], 2 * (E[0] + E[1]), E[2], E[0]])
    q = orthonormal_rows(v)
    assert len(q) == 3 and torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert len(orthonormal_rows(torch.stack([E[2], E[2] + 1e-9 * E[3]]), against=q)) == 0


def test_without_phrases_roboshot_and_prism_mini_are_plain_zero_shot():
    said = []
    task = make_task(phrases=None, log=said.append)
    zs = fit_zeroshot(task, ZeroShotParams()).head
    for fitted, key in ((fit_roboshot(task, RoboShotParams()), "roboshot"),
                        (fit_prism_mini(task, PrismMiniParams()), "prism_mini")):
        assert torch.equal(fitted.head.weight, zs.weight) and fitted.extra[key]["fallback"] == "zeroshot"
    assert len(said) == 2 and all("plain zero-shot" in line for line in said)


@pytest.mark.parametrize("words", ["bare", "class_mean"])
def test_prism_mini_projects_out_the_value_embeddings_and_fixes_the_minority(words):
    task, (x, y, minority) = make_task(), images()
    hp = PrismMiniParams(words=words)
    q = spurious_rows(task, hp)
    assert len(q) == 2  # the span of the values' embeddings, not only their difference (RoboShot's one)
    moved = x.double() - (x.double() @ q.T) @ q
    values = (task.backbone.text_features(["water", "land"], ("{}",)) if words == "bare" else
              torch.stack([task.backbone.text_features([f"{c} on {v}" for c in CLASSES]).mean(0)
                           for v in ("water", "land")])).double()
    assert torch.allclose(moved @ values.T, torch.zeros(len(x), 2, dtype=torch.float64), atol=1e-6)
    fitted = fit_prism_mini(task, hp)
    w = task.backbone.text_features(list(CLASSES)).double()
    assert torch.allclose(fitted.head.logits(x).double(), task.backbone.logit_scale * moved @ w.T, atol=1e-4)
    pred = fitted.head.predict_classes(x)
    assert (pred == y).all(), f"minority accuracy {(pred[minority] == y[minority]).mean():.2f}"


# --- through the CLI ---------------------------------------------------------------------------------

@pytest.fixture
def plain_csv(tmp_path) -> list[str]:
    """A CSV dataset of 12 tiny PNGs without bias attributes, as `groupcoop train` flags."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = ["path,label,split"]
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 100, 200 - 10 * i)).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{('cat', 'dog')[i % 2]},{('train', 'val', 'test')[(i // 2) % 3]}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return ["--dataset", "csv", "--root", str(root), "--option", "csv_path=meta.csv", "--option", "path_col=path",
            "--option", "label_col=label", "--workers", "0", "--backbone", "groupcoop-tiny", "--quiet",
            "--cache-dir", str(tmp_path / "cache")]


@pytest.mark.parametrize("method", ["roboshot", "prism_mini"])
def test_refused_in_one_line_where_no_phrases_can_come(cli, tmp_path, plain_csv, method):
    result = cli("train", *plain_csv, "--method", method, "--groups", "kmeans", "--out", tmp_path / "r")
    lines = result.err.strip("\n").split("\n")
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("groupcoop: error: "), result.err
    assert f"--method {method}" in lines[0] and "kmeans clusters have no names" in lines[0]
    assert "--bias-prompts" in lines[0]
    assert not (tmp_path / "r").exists() and not any((tmp_path / "cache").rglob("*.safetensors"))
    # discovery may still bring phrases: not refused before it runs
    plan = SimpleNamespace(spec=GroupSpec(("cat", "dog"), (("cluster 0", "cluster 1"),), None),
                           grouping=SimpleNamespace(discovers=True, source="pseudo"), dataset=None)
    METHODS[method].check(plan, METHODS[method].params())


def test_roboshot_trains_through_the_cli_with_given_phrases(cli, tmp_path, plain_csv):
    out = tmp_path / "r"
    result = cli("train", *plain_csv, "--method", "roboshot", "--groups", "zeroshot",
                 "--bias-prompts", "bright {},dark {}", "--set", "boost=0.5", "--out", out)
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "roboshot" and metrics["trainable_params"] == 0
    assert metrics["hyperparameters"]["boost"] == 0.5
    assert metrics["roboshot"]["harmful_directions"] == 1 and metrics["roboshot"]["fallback"] is None
    bad = cli("train", *plain_csv, "--method", "roboshot", "--set", "boost=-1", "--out", tmp_path / "b")
    assert bad.code == 2 and "boost" in bad.err and len(bad.err.strip().split("\n")) == 1
