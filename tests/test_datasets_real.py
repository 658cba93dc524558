"""Loaders for the real benchmark formats, run on miniature replicas of their layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import replicas
from groupcoop.data import multiceleba
from groupcoop.data.celeba import load_celeba
from groupcoop.data.check import dataset_report, format_report
from groupcoop.data.csv_dataset import load_csv
from groupcoop.data.multiceleba import load_multiceleba
from groupcoop.data.registry import LOADERS, LoaderSpec, load_dataset
from groupcoop.data.subpopbench import load_subpopbench
from groupcoop.data.waterbirds import load_waterbirds
from groupcoop.errors import UserError


def counts(ds) -> dict[str, list[int]]:
    return {split: ds.group_counts(split).tolist() for split in ("train", "val", "test")}


# ---------------------------------------------------------------- formats load with exact counts


@pytest.mark.parametrize("wilds", [False, True])
def test_waterbirds_counts_and_names(tmp_path, wilds):
    folder = replicas.waterbirds_replica(tmp_path, wilds=wilds)
    ds = load_waterbirds(folder)
    assert counts(ds) == replicas.WATERBIRDS_COUNTS
    assert ds.class_names == ["landbird", "waterbird"]
    assert ds.attribute_names == ["place"] and ds.attribute_values == [["land", "water"]]
    assert ds.attribute_phrases == [["on land", "on water"]]
    assert ds.group_names() == ["landbird, land", "landbird, water", "waterbird, land", "waterbird, water"]
    assert ds.info["source"] == ("wilds" if wilds else "group_DRO")
    assert ds.images.load(0).size == (8, 8)


def test_waterbirds_root_may_be_the_parent_folder(tmp_path):
    replicas.waterbirds_replica(tmp_path)
    assert counts(load_waterbirds(tmp_path)) == replicas.WATERBIRDS_COUNTS


@pytest.mark.parametrize("form,nested", [("official", False), ("kaggle", False), ("kaggle", True)])
def test_celeba_counts_in_every_form(tmp_path, form, nested):
    folder = replicas.celeba_replica(tmp_path, replicas.celeba_rows(), form=form, nested=nested)
    ds = load_celeba(folder)
    assert counts(ds) == replicas.CELEBA_COUNTS
    assert ds.class_names == ["not blond hair", "blond hair"]
    assert ds.attribute_names == ["Male"] and ds.attribute_values == [["female", "male"]]
    assert ds.info["source"] == form
    assert ds.images.load(len(ds.y) - 1).size == (8, 8)


def test_celeba_other_target_and_biases(tmp_path):
    rows = replicas.celeba_rows()
    folder = replicas.celeba_replica(tmp_path, rows)
    ds = load_celeba(folder, target="smiling", biases="Young,Eyeglasses")
    expected = np.array([r["Smiling"] * 4 + r["Young"] + 2 * r["Eyeglasses"] for r in rows])
    assert ds.groups.tolist() == expected.tolist()
    assert ds.class_names == ["not smiling", "smiling"]
    assert ds.attribute_values == [["old", "young"], ["no eyeglasses", "eyeglasses"]]
    assert ds.attribute_phrases[1] == ["without eyeglasses", "with eyeglasses"]


def test_celeba_attribute_order_is_the_real_one():
    names = replicas.CELEBA_ATTRIBUTES
    assert len(names) == 40 and names[0] == "5_o_Clock_Shadow" and names[-1] == "Young"
    indices = [names.index(a) for a in ("Blond_Hair", "High_Cheekbones", "Male", "Smiling", "Young")]
    assert indices == [9, 19, 20, 31, 39]


def test_multiceleba_n_table_is_the_published_one():
    assert multiceleba.TRAIN_CELL_SIZES == {0: 800, 1: 40, 2: 16220, 3: 800, 4: 2200, 5: None, 6: 110, 7: 2200}


@pytest.mark.parametrize("form", ["official", "kaggle"])
def test_multiceleba_takes_the_first_n_rows_of_each_train_cell(tmp_path, monkeypatch, form):
    monkeypatch.setattr(multiceleba, "TRAIN_CELL_SIZES", replicas.MULTICELEBA_SMALL_N)
    rows = replicas.multiceleba_rows()
    ds = load_multiceleba(replicas.celeba_replica(tmp_path, rows, form=form))

    # expected: in file order, the first N train rows of each cell; all val and test rows
    cell = [4 * r["High_Cheekbones"] + r["Young"] + 2 * r["Male"] for r in rows]
    taken, expected_files = {g: 0 for g in range(8)}, []
    for i, r in enumerate(rows):
        wanted = replicas.MULTICELEBA_SMALL_N[cell[i]]
        if r["split"] != 0 or wanted is None or taken[cell[i]] < wanted:
            taken[cell[i]] += r["split"] == 0
            expected_files.append(f"{i + 1:06d}.jpg")
    assert list(ds.images.paths) == expected_files
    assert counts(ds) == {"train": [2, 1, 3, 2, 2, 4, 1, 1], "val": [1] * 8, "test": [1] * 8}
    assert ds.extra_metrics == ["multiceleba"]
    assert ds.info["short_train_cells"] == {7: {"wanted": 2, "available": 1}}
    assert ds.class_names == ["low cheekbones", "high cheekbones"]
    assert ds.attribute_names == ["Young", "Male"]


def test_multiceleba_third_bias(tmp_path, monkeypatch):
    monkeypatch.setattr(multiceleba, "TRAIN_CELL_SIZES", replicas.MULTICELEBA_SMALL_N)
    rows = replicas.multiceleba_rows()
    ds = load_multiceleba(replicas.celeba_replica(tmp_path, rows), mouth_slightly_open=True)
    assert ds.attribute_names == ["Young", "Male", "Mouth_Slightly_Open"] and ds.n_groups == 16
    assert ds.extra_metrics == []  # its pair averages are of the 8 two-bias groups
    assert ds.group_counts("train").reshape(2, 2, 4).sum(axis=1).ravel().tolist() == [2, 1, 3, 2, 2, 4, 1, 1]


def test_subpopbench_metashift_with_absolute_paths_inside_root(tmp_path):
    folder = replicas.metashift_replica(tmp_path)
    ds = load_subpopbench(folder, name="MetaShift")
    assert counts(ds) == replicas.METASHIFT_COUNTS
    assert ds.class_names == ["dog", "cat"] and ds.attribute_values == [["outdoor", "indoor"]]
    assert not any(Path(p).is_absolute() for p in ds.images.paths)
    assert ds.images.load(0).size == (8, 8)


def test_subpopbench_unknown_dataset_gets_generic_names(tmp_path):
    ds = load_subpopbench(replicas.generic_subpop_replica(tmp_path))
    assert counts(ds) == replicas.GENERIC_COUNTS
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    assert ds.attribute_values == [["attr_0", "attr_1"]]


def test_subpopbench_imagenetbg_without_attributes(tmp_path):
    ds = load_subpopbench(replicas.imagenetbg_replica(tmp_path), name="imagenetbg")
    assert ds.class_names == list(replicas.IMAGENETBG_CLASSES)
    assert (ds.attrs == -1).all() and not ds.has_group_labels
    assert [len(ds.split_indices(s)) for s in ("train", "val", "test")] == [9, 9, 9]
    assert ds.info["set_aside_splits"] == {"mixed_rand": 9}


def test_subpopbench_chexpert(tmp_path):
    ds = load_subpopbench(replicas.chexpert_replica(tmp_path), name="chexpert")
    assert counts(ds) == {s: [1] * 12 for s in ("train", "val", "test")}
    assert ds.class_names == ["finding", "no finding"]
    assert ds.attribute_values[0][:2] == ["white male", "white female"]


def test_subpopbench_nicopp_class_names_from_its_label_mapping(tmp_path):
    ds = load_subpopbench(replicas.nicopp_replica(tmp_path), name="NICO++")
    assert ds.name == "nicopp" and ds.class_names == ["bear", "bird"]
    assert ds.attribute_values == [list(replicas.NICOPP_CONTEXTS)]
    assert counts(ds) == {s: [1] * 12 for s in ("train", "val", "test")}


def test_custom_csv_with_string_labels_and_split_names(tmp_path):
    folder = replicas.csv_replica(tmp_path)
    ds = load_csv(
        folder, "labels.csv", path_col="image", label_col="animal", attr_cols=["background"], split_col="fold"
    )
    assert counts(ds) == replicas.CSV_COUNTS
    assert ds.class_names == ["cat", "dog"] and ds.attribute_values == [["indoor", "outdoor"]]


def test_custom_csv_with_given_names(tmp_path):
    folder = replicas.csv_replica(tmp_path)
    ds = load_csv(folder, folder / "labels.csv", "image", "animal", "background", class_names=["dog", "cat"],
                  attr_values=[["outdoor", "indoor"]], attr_phrases=[["outside", "inside"]], split_col="fold")
    c = replicas.CSV_COUNTS  # both codes flipped: g -> 3 - g
    assert counts(ds) == {s: c[s][::-1] for s in c}
    assert ds.attribute_phrases == [["outside", "inside"]]


def test_custom_csv_empty_attribute_cell_means_unknown(tmp_path):
    folder = replicas.csv_replica(tmp_path)
    edit_csv(folder / "labels.csv", set_cell(0, "background", ""))
    ds = load_csv(folder, "labels.csv", "image", "animal", ["background"], split_col="fold")
    assert ds.attrs[0, 0] == -1 and (ds.attrs[1:] >= 0).all() and not ds.has_group_labels
    assert ds.groups[0] == -1


# ---------------------------------------------------------------- registry and report


def test_registry_loads_every_real_format(tmp_path):
    assert all(isinstance(spec, LoaderSpec) and spec.description for spec in LOADERS.values())
    assert {"waterbirds", "celeba", "multiceleba", "subpopbench", "csv"} <= set(LOADERS)
    ds = load_dataset("waterbirds", replicas.waterbirds_replica(tmp_path / "w"))
    assert counts(ds) == replicas.WATERBIRDS_COUNTS
    ds = load_dataset("metashift", replicas.metashift_replica(tmp_path / "m"))
    assert counts(ds) == replicas.METASHIFT_COUNTS
    ds = load_dataset("csv", replicas.csv_replica(tmp_path / "c"), csv_path="labels.csv", path_col="image",
                      label_col="animal", attr_cols="background", split_col="fold")
    assert counts(ds) == replicas.CSV_COUNTS


def test_dataset_report_shape(tmp_path):
    report = dataset_report(load_waterbirds(replicas.waterbirds_replica(tmp_path)))
    names = ["landbird, land", "landbird, water", "waterbird, land", "waterbird, water"]
    assert report == {
        "dataset": "waterbirds",
        "splits": {
            split: {
                "groups": [
                    {"group": g, "name": names[g], "n": n} for g, n in enumerate(replicas.WATERBIRDS_COUNTS[split])
                ]
            }
            for split in ("train", "val", "test")
        },
    }
    assert json.loads(json.dumps(report)) == report
    text = format_report(report)
    assert "waterbird, water" in text and "train" in text and "total" in text


# ---------------------------------------------------------------- bad input: one line naming file, row, fix


def edit_csv(path: Path, change) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame)
    frame.to_csv(path, index=False)


def rename_column(old: str, new: str):
    def change(frame):
        frame.columns = [new if c == old else c for c in frame.columns]

    return change


def set_cell(row: int, column: str, value: str):
    def change(frame):
        frame.loc[row, column] = value

    return change


def raises_user_error(call, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_folder(tmp_path):
    raises_user_error(lambda: load_dataset("waterbirds", tmp_path / "absent"), "absent", "does not exist")


def test_unknown_dataset_and_option(tmp_path):
    raises_user_error(lambda: load_dataset("waterbird", tmp_path), "did you mean: waterbirds")
    raises_user_error(lambda: load_dataset("celeba", tmp_path, targt="Male"), "target")


@pytest.mark.parametrize("missing", ["metadata.csv"])
def test_waterbirds_missing_metadata(tmp_path, missing):
    folder = replicas.waterbirds_replica(tmp_path)
    (folder / missing).unlink()
    raises_user_error(lambda: load_waterbirds(folder), missing)


@pytest.mark.parametrize("form,missing", [
    ("official", "list_attr_celeba.txt"),
    ("official", "list_eval_partition.txt"),
    ("kaggle", "list_eval_partition.csv"),
])
def test_celeba_missing_file(tmp_path, form, missing):
    folder = replicas.celeba_replica(tmp_path, replicas.celeba_rows(), form=form)
    (folder / missing).unlink()
    raises_user_error(lambda: load_celeba(folder), missing)


def test_missing_metadata_for_subpopbench_and_csv(tmp_path):
    folder = replicas.metashift_replica(tmp_path)
    (folder / "metadata_metashift.csv").unlink()
    raises_user_error(lambda: load_subpopbench(folder, name="metashift"), "metadata_metashift.csv")
    raises_user_error(lambda: load_csv(folder, "nope.csv", "image", "label", []), "nope.csv")


def test_renamed_columns(tmp_path):
    w = replicas.waterbirds_replica(tmp_path / "w")
    edit_csv(w / "metadata.csv", rename_column("place", "background"))
    raises_user_error(lambda: load_waterbirds(w), "metadata.csv", "place", "img_filename")

    c = replicas.celeba_replica(tmp_path / "c", replicas.celeba_rows(), form="kaggle")
    edit_csv(c / "list_eval_partition.csv", rename_column("partition", "part"))
    raises_user_error(lambda: load_celeba(c), "list_eval_partition.csv", "partition")

    m = replicas.metashift_replica(tmp_path / "m")
    edit_csv(m / "metadata_metashift.csv", rename_column("y", "label"))
    raises_user_error(lambda: load_subpopbench(m, name="metashift"), "metadata_metashift.csv", "y")

    f = replicas.csv_replica(tmp_path / "f")
    raises_user_error(lambda: load_csv(f, "labels.csv", "image", "label", ["background"], split_col="fold"),
                      "labels.csv", "label", "animal")


def test_unknown_split_code(tmp_path):
    w = replicas.waterbirds_replica(tmp_path / "w")
    edit_csv(w / "metadata.csv", set_cell(3, "split", "7"))
    raises_user_error(lambda: load_waterbirds(w), "metadata.csv, line 5", "'7'")

    c = replicas.celeba_replica(tmp_path / "c", replicas.celeba_rows())
    lines = (c / "list_eval_partition.txt").read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0] + " 5"
    (c / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    raises_user_error(lambda: load_celeba(c), "list_eval_partition.txt, line 2", "'5'")

    f = replicas.csv_replica(tmp_path / "f")
    edit_csv(f / "labels.csv", set_cell(0, "fold", "holdout"))
    raises_user_error(lambda: load_csv(f, "labels.csv", "image", "animal", [], split_col="fold"),
                      "labels.csv, line 2", "holdout")


def test_missing_image(tmp_path):
    w = replicas.waterbirds_replica(tmp_path / "w")
    name = pd.read_csv(w / "metadata.csv")["img_filename"][2]
    (w / name).unlink()
    raises_user_error(lambda: load_waterbirds(w), "metadata.csv, line 4", name)

    c = replicas.celeba_replica(tmp_path / "c", replicas.celeba_rows())
    (c / "img_align_celeba" / "000004.jpg").unlink()
    raises_user_error(lambda: load_celeba(c), "list_attr_celeba.txt, line 6", "000004.jpg")

    m = replicas.metashift_replica(tmp_path / "m")
    Path(pd.read_csv(m / "metadata_metashift.csv")["filename"][0]).unlink()
    raises_user_error(lambda: load_subpopbench(m, name="metashift"), "metadata_metashift.csv, line 2")

    f = replicas.csv_replica(tmp_path / "f")
    (f / "pics" / "1.png").unlink()
    raises_user_error(lambda: load_csv(f, "labels.csv", "image", "animal", [], split_col="fold"),
                      "labels.csv, line 3", "1.png")


@pytest.mark.parametrize("escape", ["../outside.jpg", "absolute"])
def test_path_escaping_the_root(tmp_path, escape):
    folder = replicas.waterbirds_replica(tmp_path / "data")
    outside = tmp_path / "data" / "outside.jpg"
    replicas.write_image(outside)  # exists, so only the escape can be the complaint
    bad = escape if escape != "absolute" else str(outside)
    edit_csv(folder / "metadata.csv", set_cell(0, "img_filename", bad))
    raises_user_error(lambda: load_waterbirds(folder), "metadata.csv, line 2", "outside")


def test_split_lacking_an_attribute_value(tmp_path):
    folder = replicas.waterbirds_replica(tmp_path)

    def all_val_on_land(frame):
        frame.loc[frame["split"] == "1", "place"] = "0"

    edit_csv(folder / "metadata.csv", all_val_on_land)
    raises_user_error(lambda: load_waterbirds(folder), "metadata.csv", "split val has no rows with place=water")


def test_unknown_celeba_attribute(tmp_path):
    folder = replicas.celeba_replica(tmp_path, replicas.celeba_rows())
    raises_user_error(lambda: load_celeba(folder, target="Blond_Hiar"), "list_attr_celeba.txt", "Blond_Hair")
    raises_user_error(lambda: load_celeba(folder, biases=["Mal"]), "list_attr_celeba.txt", "Male")


def test_damaged_celeba_attribute_file(tmp_path):
    folder = replicas.celeba_replica(tmp_path, replicas.celeba_rows())
    path = folder / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace("-1", " 0", 1)
    path.write_text("\n".join(lines) + "\n")
    raises_user_error(lambda: load_celeba(folder), "list_attr_celeba.txt, line 5", "-1 or 1")
    path.write_text("\n".join(lines[:-2]) + "\n")
    raises_user_error(lambda: load_celeba(folder), "list_attr_celeba.txt, line 1", "truncated")
