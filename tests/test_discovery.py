"""Bias discovery (issue 16): vocabularies, the three scores, ranking, `groupcoop discover` and
`groupcoop.discover`, and bad vocabulary files."""

import json

import numpy as np
import pytest

import groupcoop
from groupcoop.choices import DISCOVERY_SCORES
from groupcoop.data.world.attributes import ATTRIBUTES, value_phrase as _phrase
from groupcoop.data.world.random_tasks import RANDOM_BIAS_ATTRIBUTES
from groupcoop.grouping.discovery import assign_values, load_vocabulary, rank_candidates
from groupcoop.errors import UserError


def test_the_world_vocabulary_phrases_the_worlds_biases_as_its_tasks_do_plus_distractors():
    attributes = load_vocabulary(None, groupcoop.load_dataset("synth-waterbirds")).attributes
    for attribute in RANDOM_BIAS_ATTRIBUTES:
        assert attributes[attribute] == tuple(_phrase(attribute, v) for v in ATTRIBUTES[attribute])
    distractors = set(attributes) - set(RANDOM_BIAS_ATTRIBUTES)
    assert {"position", "tilt", "weather", "image_style"} <= distractors


def test_a_user_vocabulary_extends_a_shipped_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: clip\nattributes:\n  hospital_marker: [with a chest tube, '{} without a chest tube']\n")
    vocabulary = load_vocabulary(path)
    assert vocabulary.attributes["hospital_marker"] == ("{} with a chest tube", "{} without a chest tube")
    assert {"place", "colour", "gender", "age", "weather", "time_of_day", "image_style"} <= set(vocabulary.attributes)
    alone = tmp_path / "alone.yaml"
    alone.write_text("attributes: {light: ['bright {}', 'dark {}']}\n")
    assert list(load_vocabulary(alone).attributes) == ["light"]


def test_values_few_images_match_are_dropped_and_their_images_reassigned():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 5)) * 0.01
    scores[:120, 0] += 1.0
    scores[120:196, 1] += 1.0
    scores[196:, 2] += 1.0  # 2% of the images
    scores[196:, 3] += 0.5  # their second choice
    kept, assigned = assign_values(scores, min_share=0.05)
    assert kept == [0, 1]
    assert len(assigned) == 200 and set(assigned) == {0, 1}
    kept, _ = assign_values(scores[:120], min_share=0.05)  # one value holds every image: no candidate
    assert kept == []


def _planted(n: int = 2000, conflict: float = 0.05, seed: int = 0):
    """Features where attribute A goes with the class (conflicting share `conflict`) and B does not;
    the class itself is only weakly visible, so a probe leans on A and errs on A's minority."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < conflict, 1 - y, y)
    b = rng.integers(0, 2, n)
    x = np.zeros((n, 6))
    x[np.arange(n), a] = 1.0
    x[np.arange(n), 2 + b] = 1.0
    x[:, 4] = 0.3 * (2 * y - 1) + rng.normal(0, 1.0, n)
    x[:, :4] += rng.normal(0, 0.2, (n, 4))
    texts = {"planted": (("{} on land", "{} on water"), np.eye(6)[:2]),
             "independent": (("red {}", "blue {}"), np.eye(6)[2:4])}
    return x, y, texts


@pytest.mark.parametrize("score", DISCOVERY_SCORES)
def test_every_score_ranks_an_attribute_that_goes_with_the_class_first(score):
    x, y, texts = _planted()
    candidates = rank_candidates(x, y, texts, score=score, compute=DISCOVERY_SCORES)
    assert [c["attribute"] for c in candidates] == ["planted", "independent"]
    planted, independent = candidates
    assert planted["score"] == planted["scores"][score] > independent["score"] + 0.2
    assert planted["values"] == ["{} on land", "{} on water"] and abs(sum(planted["shares"]) - 1) < 1e-9


def test_discovery_ranks_a_planted_bias_first_and_keeps_the_two_values_the_task_uses():
    from groupcoop.data.world.datasets import make_task_dataset
    from groupcoop.data.world.tasks import SyntheticTask
    from groupcoop.grouping.discovery import discover_on
    from groupcoop.runs.pipeline import prepare

    task = SyntheticTask(name="planted-colour", description="colour red/yellow, 5% conflicting",
                         biases=(("colour", ("red", "yellow")),),
                         counts={"train": (200, 10, 10, 200), "val": (5,) * 4, "test": (5,) * 4})
    ds = make_task_dataset(task)
    prep = prepare(ds, "groupcoop-tiny", progress=False, workers=0)
    candidates = discover_on(prep, load_vocabulary(None, ds), compute=DISCOVERY_SCORES)
    for score in DISCOVERY_SCORES:
        assert max(candidates, key=lambda c: c["scores"][score])["attribute"] == "colour", score
    first = candidates[0]
    assert first["attribute"] == "colour" and first["values"] == ["red {}", "yellow {}"]  # 4 other colours dropped
    assert set(first["dropped"]) == {"purple {}", "black {}", "white {}", "blue {}"}


def test_discover_command_and_api_agree(cli, waterbirds_prep):
    result = cli("discover", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--top", "3",
                 "--json", "--quiet", "--workers", "0")
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    assert len(listed) == 3 and {"attribute", "values", "score", "scores", "shares", "dropped"} <= set(listed[0])
    background = next(c for c in listed if c["attribute"] == "background")  # "on the left" reads alike here
    assert background["values"] == ["{} on grass", "{} on water"]
    captioned = [c["score"] for c in listed if not c.get("unnamed")]
    assert captioned == sorted(captioned, reverse=True)
    spurious = [c["spurious"] for c in listed]
    assert spurious[0] and background["spurious"]  # the bias ranks first and is kept (a proxy may rank above a kept one)
    weather = next(c for c in listed if c["attribute"] == "weather")  # the background's proxy, and says so
    assert not weather["spurious"] and weather["not_kept"].startswith("read off a kept attribute")
    assert "not_kept" not in background
    api = groupcoop.discover("synth-waterbirds", backbone="groupcoop-tiny", top=3)
    assert [(c["attribute"], c["values"]) for c in api] == [(c["attribute"], c["values"]) for c in listed]


def test_discover_scores_by_the_score_asked_for(cli, tmp_path):
    import pandas as pd
    import replicas
    from test_progress import csv_flags

    from groupcoop.grouping.labelfree import DISCOVERY_THRESHOLDS

    root = replicas.csv_replica(tmp_path)  # 16 tiny images on grass or water, no bias column
    pd.read_csv(root / "labels.csv").drop(columns=["background"]).to_csv(root / "plain.csv", index=False)
    (root / "vocabulary.yaml").write_text('attributes:\n  background: ["{} on grass", "{} on water"]\n')
    table = cli("discover", *csv_flags(root), "--vocabulary", root / "vocabulary.yaml", "--backbone", "groupcoop-tiny",
                "--quiet", "--workers", "0", "--score", "nmi")
    assert table.code == 0, table.err
    assert "score nmi" in table.out and f"score above {DISCOVERY_THRESHOLDS['nmi']}," in table.out, table.out
    assert any(line.split()[:2] == ["1", "background"] for line in table.out.splitlines()), table.out


BAD_VOCABULARIES = {
    "not-yaml": ("attributes: [unclosed\n", "not valid YAML"),
    "a-list": ("- a\n- b\n", "must hold a mapping"),
    "no-attributes": ("extends: clip\n", "needs 'attributes'"),
    "one-value": ("attributes: {place: [on land]}\n", "attributes.place"),
    "twice": ("attributes: {place: [on land, '{} on land']}\n", "lists a value twice"),
    "unknown-extends": ("extends: imagenet\nattributes: {a: [x, y]}\n", "extends"),
    "not-text": ("attributes: {place: [1, 2]}\n", "attributes.place"),
    "empty": ("attributes: {}\n", "attributes"),
}


@pytest.mark.parametrize("kind", sorted(BAD_VOCABULARIES))
def test_a_bad_vocabulary_file_is_one_line_and_exit_2(cli, tmp_path, kind):
    text, expected = BAD_VOCABULARIES[kind]
    path = tmp_path / "vocabulary.yaml"
    path.write_text(text)
    result = cli("discover", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--vocabulary", path)
    assert result.code == 2 and result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    assert expected in result.err and str(path) in result.err
    out = tmp_path / "run"
    train = cli("train", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny", "--method", "groupcoop",
                "--groups", "pseudo", "--bias-prompts", "auto", "--vocabulary", path, "--out", out)
    assert train.code == 2 and train.err.count("\n") == 1 and expected in train.err
    assert not out.exists()


def test_a_missing_vocabulary_file_and_a_vocabulary_without_auto_are_refused(cli, tmp_path):
    result = cli("discover", "--dataset", "synth-waterbirds", "--backbone", "groupcoop-tiny",
                 "--vocabulary", tmp_path / "nope.yaml")
    assert result.code == 2 and result.err.count("\n") == 1 and "not found" in result.err
    with pytest.raises(UserError, match="--bias-prompts auto"):
        groupcoop.fit("synth-waterbirds", groups={"source": "pseudo", "vocabulary": str(tmp_path / "v.yaml")})


def test_a_candidate_above_the_threshold_that_is_not_kept_says_which_test_it_failed():
    from groupcoop.grouping.discovery import Discovered, Vocabulary, format_candidates

    def candidate(attribute, spurious, **tests):
        return {"attribute": attribute, "values": ["{} a", "{} b"], "shares": [0.5, 0.5], "score": 0.8,
                "scores": {"concentration": 0.4, "conditional": 0.8, "read_off": 0.0, **tests}, "spurious": spurious}

    kept = candidate("background", True)
    second = candidate("size", False, conditional=0.26)
    proxy = candidate("weather", False, conditional=0.1, read_off=0.7)
    quiet = candidate("position", False, concentration=0.05)
    below = {**candidate("tilt", False), "score": 0.2}

    class Train:
        name = "toy"

        @staticmethod
        def split_indices(_):
            return np.arange(10)

    table = format_candidates([kept, second, proxy, quiet, below], Train, Vocabulary("world", {}))
    rows = {line.split()[1]: line for line in table.splitlines() if line.strip()[:1].isdigit()}
    assert "not kept" not in rows["background"] and "not kept" not in rows["tilt"]
    assert "(not kept: adds little beside the kept ones (0.26))" in rows["size"]
    assert "(not kept: read off a kept attribute within each class (0.70))" in rows["weather"]
    assert "(not kept: its values concentrate few errors (0.05))" in rows["position"]
    block = Discovered("world", "cramers_v", 3, [kept, second], [kept]).report(None)
    assert [c.get("not_kept") for c in block["candidates"]] == [None, "adds little beside the kept ones (0.26)"]
    json.dumps(block)
