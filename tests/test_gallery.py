"""Per-group image grids (gallery.py) on small image folders made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from groupcoop.data.base import SPLITS, GroupDataset, PathImages
from groupcoop.errors import UserError
from groupcoop.reports.gallery import CELL, group_grid


def make_folder(tmp_path, attrs_missing: bool = False) -> GroupDataset:
    """2 classes x 2 backgrounds; train: 5, 3, 0, 4 images per group (one file corrupt),
    small (12 px) and large (300 x 200 px) images; val/test: 1 image per group."""
    rng = np.random.default_rng(0)
    rows = []  # (path, y, a, split)
    for split, counts in (("train", (5, 3, 0, 4)), ("val", (1, 1, 1, 1)), ("test", (1, 1, 1, 1))):
        for g, count in enumerate(counts):
            for k in range(count):
                rows.append((f"{split}-{g}-{k}.png", g // 2, g % 2, SPLITS[split]))
    for i, (path, *_rest) in enumerate(rows):
        size = (12, 12) if i % 2 else (300, 200)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / path)
    (tmp_path / "train-1-0.png").write_bytes(b"this is not a png")
    attrs = np.array([[r[2]] for r in rows])
    if attrs_missing:
        attrs[[i for i, r in enumerate(rows) if r[0].startswith("train-3")]] = -1
    return GroupDataset(
        name="folder", images=PathImages(tmp_path, tuple(r[0] for r in rows)), y=np.array([r[1] for r in rows]),
        attrs=attrs, split=np.array([r[3] for r in rows]), class_names=["cat", "<dog>"],
        attribute_names=["background"], attribute_values=[["indoor", "outdoor"]],
    )


def rows_of(path) -> list[dict]:
    with Image.open(path) as img:
        img.load()
        return json.loads(img.text["groupcoop:rows"])


def test_grid_one_row_per_group_with_an_unreadable_image(tmp_path):
    ds = make_folder(tmp_path)
    out = group_grid(ds, tmp_path / "out" / "grid.png", split="train", per_group=8, seed=0)
    assert out == tmp_path / "out" / "grid.png"
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        width, height = img.size
    rows = rows_of(out)
    assert [r["name"] for r in rows] == ds.group_names()
    assert [r["n"] for r in rows] == [5, 3, 0, 4]
    assert [r["unreadable"] for r in rows] == [0, 1, 0, 0]
    assert [r["shown"] for r in rows] == [5, 2, 0, 4]
    assert width >= 5 * CELL and height >= 4 * CELL  # small images were enlarged, not shown at 12 px
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grid.png"]  # no temp file left


def test_grid_is_reproducible_and_capped(tmp_path):
    ds = make_folder(tmp_path)
    a = group_grid(ds, tmp_path / "a.png", per_group=2, seed=1)
    b = group_grid(ds, tmp_path / "b.png", per_group=2, seed=1)
    with Image.open(a) as ia, Image.open(b) as ib:
        assert np.array_equal(np.asarray(ia), np.asarray(ib))
    assert [r["shown"] for r in rows_of(a)] == [2, 2, 0, 2]


def test_grid_rows_without_bias_labels_go_per_class(tmp_path):
    ds = make_folder(tmp_path, attrs_missing=True)
    rows = rows_of(group_grid(ds, tmp_path / "grid.png"))
    assert [r["name"] for r in rows] == ds.group_names() + ["<dog>, no bias label"]
    assert rows[3]["n"] == 0 and rows[-1]["n"] == 4


def test_grid_other_split_and_bad_arguments(tmp_path):
    ds = make_folder(tmp_path)
    assert [r["n"] for r in rows_of(group_grid(ds, tmp_path / "val.png", split="val"))] == [1, 1, 1, 1]
    with pytest.raises(UserError):
        group_grid(ds, tmp_path / "x.png", split="dev")
    with pytest.raises(UserError):
        group_grid(ds, tmp_path / "x.png", per_group=0)


def test_grid_of_the_synthetic_task(tmp_path):
    from groupcoop.data.world.datasets import make_task_dataset

    ds = make_task_dataset("synth-waterbirds")
    rows = rows_of(group_grid(ds, tmp_path / "grid.png", per_group=3))
    assert [r["n"] for r in rows] == ds.group_counts("train").tolist()
    assert all(r["shown"] == 3 and r["unreadable"] == 0 for r in rows)
