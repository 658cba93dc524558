"""Discovery keeps only what is spurious, from both sides (issue 24): an attribute no caption names
is found in the image features, a proxy of a kept attribute is not kept, and a dataset with no
spurious attribute keeps nothing and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

import groupcoop

from groupcoop.grouping.discovery import NOTHING_SPURIOUS, mark_spurious
from groupcoop.grouping.unnamed import caption_twin, image_candidate


def _marked(n: int = 2000, conflicting: float = 0.05, seed: int = 0):
    """Two classes with a weak class signal (dims 0-1, which zero-shot reads) and a strong binary
    'mark' (dim 2) that goes with the class on all but `conflicting` of the images."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    mark = np.where(rng.random(n) < conflicting, 1 - y, y)
    x = np.zeros((n, 8))
    x[:, 0] = 0.6 * (2 * y - 1) + rng.normal(0, 1, n)
    x[:, 1] = rng.normal(0, 1, n)
    x[:, 2] = 3.0 * (2 * mark - 1) + rng.normal(0, 0.3, n)
    x[:, 3:] = rng.normal(0, 1, (n, 5))
    zeroshot = (x[:, 0] + rng.normal(0, 0.3, n) > 0).astype(int)  # sees the class signal, never the mark
    return x, y, mark, zeroshot


def test_an_attribute_no_caption_names_is_found_in_the_image_features():
    x, y, mark, zeroshot = _marked()
    found = image_candidate(x, y, [], zeroshot)
    assert found["found"] and found["unnamed"] and found["value_names"] == ["a", "b"]
    conflicting = found["assigned"] != y % 2
    assert conflicting.sum() >= 10
    assert (mark[conflicting] != y[conflicting]).mean() > 0.95  # the images it sets apart carry the other mark
    assert (conflicting[mark != y]).mean() > 0.95  # ... and it sets apart nearly all that do


def test_hard_images_with_no_spurious_attribute_are_not_an_attribute():
    x, y, _, zeroshot = _marked()
    x[:, 2] = np.random.default_rng(1).normal(0, 1, len(y))  # no mark: only the weak class signal is left
    found = image_candidate(x, y, [], zeroshot)
    assert found is None or not found["found"]


def test_a_caption_that_explains_the_errors_leaves_nothing_unnamed():
    x, y, mark, zeroshot = _marked()
    named = {"attribute": "mark", "assigned": mark}  # a caption attribute zero-shot reads right
    found = image_candidate(x, y, [named], zeroshot)
    assert found is None or found["found"] is False


def test_the_unnamed_attribute_labels_every_split_from_the_training_split():
    from groupcoop.grouping.adaptive import Reference, relabel_unseen

    x, y, mark, _ = _marked(seed=0)
    x_test, y_test, mark_test, _ = _marked(n=800, conflicting=0.5, seed=3)  # balanced, as a test split is
    blind = [np.zeros((len(y), 2))]  # its two prompts are the same text: zero-shot tells nothing
    reference = Reference(x, y, blind)
    labels = relabel_unseen(np.zeros((len(y_test), 1), dtype=np.int64), x_test, y_test, [2], [np.zeros((len(y_test), 2))],
                            seed=0, reference=reference)[:, 0]
    assert (labels == mark_test).mean() > 0.95  # value a/b is the mark, on images the partition never saw


def _two_biases_and_a_proxy(conflicting: float, n: int = 4000):
    """Classes, a background bias, weather read off the background (a proxy), and a colour bias drawn
    apart from the background within each class; each bias conflicts on `conflicting` of the images."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    background = np.where(rng.random(n) < conflicting, 1 - y, y)
    weather = np.where(rng.random(n) < 0.05, 1 - background, background)
    colour = np.where(rng.random(n) < conflicting, 1 - y, y)
    return y, background, weather, colour


def test_a_proxy_is_read_off_a_kept_attribute_and_a_second_bias_is_not():
    from groupcoop.grouping.discovery import read_off

    y, background, weather, colour = _two_biases_and_a_proxy(conflicting=0.05)
    kept = [{"assigned": background}]
    assert read_off(y, weather, kept) > 0.5 > 0.1 > read_off(y, colour, kept)
    assert read_off(y, weather, []) == 0.0


def _candidate(name: str, values: np.ndarray, y: np.ndarray) -> dict:
    from groupcoop.grouping.discovery import cramers_v

    v = cramers_v(y, values)
    return {"attribute": name, "assigned": values, "score": v, "scores": {"cramers_v": v, "concentration": 0.5}}


def test_a_proxy_of_a_kept_attribute_is_not_kept_but_a_second_bias_is():
    y, background, weather, colour = _two_biases_and_a_proxy(conflicting=0.1)
    ranked = [_candidate("background", background, y), _candidate("weather", weather, y),
              _candidate("colour", colour, y)]
    assert all(c["score"] > 0.5 for c in ranked)  # each goes with the class on its own
    mark_spurious(ranked, y, "cramers_v")
    assert [c["attribute"] for c in ranked if c["spurious"]] == ["background", "colour"]
    assert ranked[1]["scores"]["conditional"] < 0.1 < 0.5 < ranked[2]["scores"]["conditional"]


def _planted(name: str, attribute: str, values: tuple, train: tuple):
    from groupcoop.data.world.datasets import make_task_dataset
    from groupcoop.data.world.tasks import SyntheticTask

    return make_task_dataset(SyntheticTask(name=name, description="planted", biases=((attribute, values),),
                                           counts={"train": train, "val": (40,) * 4, "test": (20,) * 4}))


def test_a_dataset_with_no_spurious_attribute_keeps_nothing_and_the_run_says_so(tmp_path):
    from groupcoop.grouping.discovery import discover_on, load_vocabulary
    from groupcoop.runs.pipeline import prepare

    ds = _planted("planted-nobias", "background", ("grass", "water"), (150, 150, 150, 150))  # balanced
    prep = prepare(ds, "groupcoop-tiny", progress=False, workers=0)
    clip = load_vocabulary(None, None)  # the shipped one for real photos: gender, age, ...
    assert not [c["attribute"] for c in discover_on(prep, clip) if c["spurious"]]
    run = groupcoop.fit(ds, method="zeroshot", groups={"source": "pseudo", "bias_prompts": "auto"},
                        hide_bias_labels=["train", "val"], workers=0)
    assert run.metrics["discovery"]["used"] == [] and NOTHING_SPURIOUS in run.metrics["discovery"]["fallback"]
    run.save(tmp_path / "run")
    assert NOTHING_SPURIOUS in (tmp_path / "run" / "report.txt").read_text()
    assert "Nothing was kept" in (tmp_path / "run" / "report.html").read_text()


@pytest.fixture(scope="module")
def marked_csv(tmp_path_factory):
    """A CSV dataset with no bias column at all whose bias is the world's never-captioned mark."""
    folder = tmp_path_factory.mktemp("marked")
    ds = _planted("planted-mark", "mark", ("none", "tag"), (380, 20, 20, 380))
    lines = ["path,label,split"]
    for i in range(len(ds.y)):
        ds.images.load(i).save(folder / f"{i}.png")
        lines.append(f"{i}.png,{ds.class_names[ds.y[i]]},{['train', 'val', 'test'][ds.split[i]]}")
    (folder / "meta.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_a_never_captioned_mark_is_found_as_an_unnamed_attribute_with_an_example_grid(cli, tmp_path, marked_csv):
    out = tmp_path / "run"
    result = cli("train", "--dataset", "csv", "--root", marked_csv, "--option", "csv_path=meta.csv",
                 "--option", "path_col=path", "--option", "label_col=label", "--backbone", "groupcoop-tiny",
                 "--method", "zeroshot", "--groups", "pseudo", "--bias-prompts", "auto", "--out", out, "--quiet")
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["discovery"]["unnamed"] == ["unnamed 1"] and "unnamed 1" in metrics["discovery"]["used"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and (out / "unnamed-groups.png").stat().st_size > 1000
    grid = tmp_path / "grid.png"
    shown = cli("discover", "--dataset", "csv", "--root", marked_csv, "--option", "csv_path=meta.csv",
                "--option", "path_col=path", "--option", "label_col=label", "--backbone", "groupcoop-tiny",
                "--grid", grid, "--quiet")
    assert shown.code == 0 and "unnamed 1" in shown.out and f"wrote {grid}" in shown.out, shown.err
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # what the grid showed, named on the next run: the same groups, under the user's names
    again = cli("train", "--config", out / "config.yaml", "--name-attribute", "mark=plain,tagged",
                "--out", tmp_path / "named", "--quiet")
    assert again.code == 0, again.err
    named = json.loads((tmp_path / "named" / "metrics.json").read_text())
    assert named["discovery"]["unnamed"] == ["mark"] and "mark" in named["discovery"]["used"]
    names = [g["name"] for g in named["splits"]["test"]["groups"]]
    assert any("plain" in n for n in names) and any("tagged" in n for n in names), names
    assert [g["n"] for g in named["splits"]["test"]["groups"]] == [g["n"] for g in metrics["splits"]["test"]["groups"]]
    assert "named with --name-attribute" in (tmp_path / "named" / "report.html").read_text()


@pytest.mark.parametrize("flags, says", [(["--name-attribute", "mark"], "NAME=VALUE_A,VALUE_B"),
                                         (["--name-attribute", "mark=a,a"], "NAME=VALUE_A,VALUE_B"),
                                         (["--name-attribute", "mark={} plain,{} tagged"], "names, not phrases"),
                                         (["--name-attribute", "mark=plain,tagged", "--bias-prompts", "on grass,on water"],
                                          "goes with --bias-prompts auto")])
def test_a_bad_name_attribute_is_one_line_before_any_work(cli, tmp_path, flags, says):
    bias = [] if "--bias-prompts" in flags else ["--bias-prompts", "auto"]
    result = cli("train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "zeroshot",
                 "--groups", "pseudo", *bias, *flags, "--out", tmp_path / "run")
    assert result.code == 2 and says in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "run").exists()


def test_an_unnamed_split_a_left_out_caption_also_makes_is_shown_with_that_caption_as_a_name_to_try():
    from groupcoop.grouping.discovery import Vocabulary, format_candidates

    x, y, mark, zeroshot = _marked()
    found = image_candidate(x, y, [], zeroshot)
    weather = {"attribute": "weather", "assigned": np.random.default_rng(1).integers(0, 2, len(y)), "spurious": False}
    tag = {"attribute": "tag", "assigned": mark, "spurious": False}
    assert caption_twin(found, y, [weather, tag]) == "tag"
    assert caption_twin(found, y, [weather]) is None
    assert caption_twin(found, y, [{**tag, "spurious": True}]) is None  # a kept caption is no other name for it

    class Train:
        name = "marked"

        @staticmethod
        def split_indices(_):
            return np.arange(len(y))

    found.update(named_by="tag", score=0.9, scores={"concentration": 0.5}, spurious=True)
    assert "(the same partition as tag)" in format_candidates([found], Train, Vocabulary("world", {}))


def test_nothing_spurious_is_said_in_the_discover_table():
    from groupcoop.grouping.discovery import Vocabulary, format_candidates

    class Tiny:
        name = "tiny"

        @staticmethod
        def split_indices(_):
            return np.arange(10)

    c = {"attribute": "weather", "values": ["{} on a sunny day", "{} on a rainy day"], "shares": [0.5, 0.5],
         "score": 0.1, "scores": {"concentration": 0.2}, "spurious": False}
    text = format_candidates([c], Tiny, Vocabulary("world", {}))
    assert NOTHING_SPURIOUS in text and " *" not in text


@pytest.mark.parametrize("vocabulary, bias", [("world", "background"), ("clip", "land_water")])
def test_a_background_bias_keeps_the_background_and_nothing_else(vocabulary, bias):
    """The issue's example: shapes whose one bias is the background colour keep the background only,
    with the world's vocabulary and with real CLIP's (which once also kept `gender`, then `age`)."""
    from groupcoop.grouping.discovery import discover_on, load_vocabulary
    from groupcoop.grouping.vocabulary import shipped_path
    from groupcoop.runs.pipeline import prepare

    ds = _planted("planted-background", "background", ("grass", "water"), (380, 20, 20, 380))
    prep = prepare(ds, "groupcoop-tiny", progress=False, workers=0)
    shipped = load_vocabulary(shipped_path(vocabulary), ds)
    assert [c["attribute"] for c in discover_on(prep, shipped) if c["spurious"]] == [bias]
