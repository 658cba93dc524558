"""Bounded by construction: no input, however small, makes a command use memory or time out of all
proportion to it (YAML, error lines, images, labels, phrase lists, shards, workers), and
label-free data loads and trains. One test per mechanism, each on a tiny CSV dataset."""

from __future__ import annotations

import os
import time
import tracemalloc

import pytest
from PIL import Image

from test_cli import assert_one_line_error
from test_hostile import (TINY, csv_args, make_csv_root, no_extraction, refused, train_args,  # noqa: F401 (fixtures)
                         write_png)


def _bomb(levels: int, width: int) -> str:
    """A YAML alias bomb: `levels` lists of `width` aliases of the one before (width**levels values)."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


YAML_CASES = {
    "aliases": ("--config", _bomb(9, 9), "aliases"),  # 81 aliases: 9**9 values, 1 KB of text
    "expanded": ("--config", _bomb(7, 8), "expands to more than"),  # 56 aliases, 8**7 values
    "deep": ("--config", "dataset: " + "[" * 200 + "]" * 200 + "\n", "deeper than"),
    "size": ("--config", "dataset: csv\n" + "# padding\n" * 40_000, "larger than"),
    "duplicate-key": ("--config", "dataset: csv\nmethod: zeroshot\ndataset: synth-waterbirds\n", "twice"),
    "set-value": ("--set", "c_values=" + _bomb(7, 8).replace("\n", ", ").join("{}"), "expands to more than"),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_yaml_is_bounded_and_refuses_a_key_given_twice(case, tmp_path, refused):
    flag, text, fragment = YAML_CASES[case]
    start = time.perf_counter()
    if flag == "--config":
        (tmp_path / "config.yaml").write_text(text)
        refused(["train", "--config", tmp_path / "config.yaml", "--out", tmp_path / "run"], fragment)
    else:
        refused(["train", "--dataset", "synth-waterbirds", *TINY, "--method", "dfr", "--set", text,
                 "--out", tmp_path / "run"], "--set c_values", fragment)
    assert time.perf_counter() - start < 2


def test_error_lines_quote_a_short_prefix_of_the_value(tmp_path, cli):
    from groupcoop.errors import UserError
    from groupcoop.schema import Frozen, Number, build

    class Options(Frozen):
        lr: Number = 1.0

    shared = ["x"] * 8
    for _ in range(7):  # 8**8 items shared by reference: its full repr is 50 MB
        shared = [shared] * 8
    tracemalloc.start()
    with pytest.raises(UserError) as err:
        build(Options, {"lr": shared}, "options")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000 and len(str(err.value)) < 300, (peak, len(str(err.value)))
    line = assert_one_line_error(cli("train", "--dataset", "synth-waterbirds", *TINY, "--method", "zeroshot", "--out",
                                     tmp_path / "run", "--set", "x" * 100_000), "KEY=VALUE")
    assert len(line) < 300


def test_images_are_checked_on_their_header_before_any_decode(tmp_path, monkeypatch):
    from PIL import ImageFile

    from groupcoop.data.base import PathImages
    from groupcoop.errors import UserError

    Image.new("L", (400_000, 1)).save(tmp_path / "thin.png")  # 1 KB on disk, 224 x 89.6M once resized
    write_png(tmp_path / "small.png", 1, size=(11, 11))
    images = PathImages(tmp_path, ("thin.png", "small.png"))
    assert (tmp_path / "thin.png").stat().st_size < 2000

    def no_decode(self, *args, **kwargs):
        raise AssertionError("an image was decoded before its size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(UserError, match="400000x1 pixels, one side more than"):
        images.load(0)
    monkeypatch.setenv("GROUPCOOP_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(UserError, match="11x11 = 121 pixels, more than the limit of 100"):
        images.load(1)


def test_the_pixel_limit_is_checked_per_image_not_set_for_the_process(tmp_path, monkeypatch):
    from groupcoop.data.base import PathImages

    write_png(tmp_path / "a.png", 1, size=(11, 11))
    before = Image.MAX_IMAGE_PIXELS
    for limit in ("1000", "0"):
        monkeypatch.setenv("GROUPCOOP_MAX_IMAGE_PIXELS", limit)
        assert PathImages(tmp_path, ("a.png",)).load(0).size == (11, 11)
        assert Image.MAX_IMAGE_PIXELS == before


@pytest.mark.parametrize("label", ["1000000", "inf", "1e300"])
def test_the_class_count_comes_from_the_labels_present(label, tmp_path, refused):
    root = make_csv_root(tmp_path / "data", labels=("0", "1"))
    meta = root / "meta.csv"
    meta.write_text(meta.read_text().replace("img/5.png,1,", f"img/5.png,{label},"))
    start = time.perf_counter()
    refused(["datasets", "check", "csv", *csv_args(root)[2:]], "line 7", "column label", "0..")
    assert time.perf_counter() - start < 2


def test_sizes_of_vocabularies_phrase_lists_and_shards_are_capped(tmp_path, refused, monkeypatch, no_extraction):
    root = make_csv_root(tmp_path / "data")
    vocabulary = tmp_path / "vocabulary.yaml"
    vocabulary.write_text("attributes:\n" + "".join(f"  a{i}: [x{i}, y{i}]\n" for i in range(300)))
    refused(train_args(root, tmp_path / "run", "--groups", "pseudo", "--bias-prompts", "auto", "--vocabulary",
                       vocabulary, method="groupcoop"), "attributes", "256")
    refused(train_args(root, tmp_path / "run", "--groups", "pseudo", "--bias-prompts",
                       ",".join(f"p{i}" for i in range(100)), method="groupcoop"), "bias_prompts", "64")
    monkeypatch.setattr("groupcoop.limits.MAX_SHARDS", 4)  # 12 images in shards of 1
    refused(["extract", *csv_args(root), *TINY, "--shard-size", "1", "--cache-dir", tmp_path / "cache"],
            "--shard-size 1", "more than 4", "--shard-size 3")


def test_workers_are_capped_by_the_cpus(tmp_path, refused):
    from groupcoop.errors import UserError
    from groupcoop.features.decode import image_loader

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    refused(["train", "--dataset", "no-such", *TINY, "--method", "zeroshot", "--workers", str(cpus + 1), "--out",
             tmp_path / "run"], "--workers", f"{cpus} CPUs")
    with pytest.raises(UserError, match="CPUs"):
        image_loader([], None, 0, 0, 1, cpus + 1)


def _fit(root, cache, **settings):
    """groupcoop.fit on the tiny CSV dataset (in-process, no run folder or report written)."""
    import groupcoop

    options = {"csv_path": "meta.csv", "path_col": "path", "label_col": "label", "attr_cols": ["place"]}
    return groupcoop.fit("csv", root=str(root), config={"dataset_options": options}, cache_dir=cache, workers=0,
                         **settings)


def test_a_training_split_without_bias_labels_loads_and_trains_label_free(tmp_path, refused):
    root = make_csv_root(tmp_path / "data", n=24,  # no bias label in the training split; val and test keep theirs
                         place_cell=lambda i: "" if (i // 4) % 3 == 0 else ("land", "water")[(i // 2) % 2])
    refused(train_args(root, tmp_path / "run", "--groups", "gt", method="linear_probe"), "--groups gt",
            "training split")
    vocabulary = tmp_path / "vocabulary.yaml"  # one attribute: discovery encodes 4 phrases, not clip.yaml's
    vocabulary.write_text('attributes:\n  place: ["{} on land", "{} on water"]\n')
    run = _fit(root, tmp_path / "cache", method="zeroshot",
               groups={"source": "pseudo", "bias_prompts": "auto", "vocabulary": str(vocabulary)})
    assert run.metrics["splits"]["test"]["worst_group_acc"] >= 0


def test_hidden_val_labels_with_true_training_groups(tmp_path):
    run = _fit(make_csv_root(tmp_path / "data"), tmp_path / "cache", method="linear_probe", groups="gt",
               hide_bias_labels=["val"])
    assert run.metrics["report_groups"] == {"val": "classes (no bias labels)", "test": "true groups"}
    assert [g["name"] for g in run.metrics["splits"]["val"]["groups"]] == ["cat", "dog"]
    assert run.metrics["selection_groups"] == "val classes (worst-class accuracy)"


@pytest.mark.parametrize("case", ["bias-prompts", "attr_phrases", "columns"])
def test_duplicate_phrases_and_columns_are_refused(case, tmp_path, refused, no_extraction):
    root = make_csv_root(tmp_path / "data")
    if case == "bias-prompts":
        argv = train_args(root, tmp_path / "run", "--groups", "pseudo", "--bias-prompts", "on land, {} on  land",
                          method="groupcoop")
        fragments = ("bias_prompts", "is listed twice")
    elif case == "attr_phrases":
        argv = ["datasets", "check", "csv", *csv_args(root)[2:], "--option", "attr_phrases=[[on land, on land]]"]
        fragments = ("attr_phrases", "'on land' is listed twice")
    else:
        meta = root / "meta.csv"
        meta.write_text(meta.read_text().replace("path,label,place,split", "path,label,place,split, label "))
        argv = ["datasets", "check", "csv", *csv_args(root)[2:]]
        fragments = ("column 'label' twice", "columns 2 and 5")
    refused(argv, *fragments)
