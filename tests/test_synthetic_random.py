"""Random tasks drawn from the built-in synthetic world (`synth-random:<seed>`)."""

import hashlib
import math

import numpy as np
import pytest

from groupcoop.data.world.attributes import ATTRIBUTES, family_of
from groupcoop.data.world.datasets import make_task_dataset
from groupcoop.data.world.random_tasks import caption_orientation, parse_random_task_name, random_task
from groupcoop.data.world.render import IMAGE_SIZE
from groupcoop.data.world.tasks import TASKS
from groupcoop.errors import UserError

SEEDS = list(range(30)) + list(range(1000, 1030))


def _conflicting_share(counts, n_biases, j):
    total = sum(counts)
    conflicting = 0
    for g, c in enumerate(counts):
        y, code = divmod(g, 2**n_biases)
        conflicting += c * (((code >> j) & 1) != y)
    return conflicting / total


def _table_digest(ds):
    h = hashlib.sha256(repr(ds.images.table).encode())
    for a in (ds.y, ds.attrs, ds.split):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# --- the built-in tasks did not change -------------------------------------------------

# (images.identity(), manifest_digest(), digest of table + arrays), recorded when the world gained its
# pattern and mark attributes; they change only when the world does.
BUILTIN = {
    ("synth-waterbirds", 0): ("synthetic:2df0d4dc006b9b88", "49c5c3e9ec998b71", "593e9a0d7e18cf9e"),
    ("synth-waterbirds", 3): ("synthetic:c7f4fe6124a983fe", "7111319574cdd89c", "0204e9ebf08c3de2"),
    ("synth-multiceleba", 0): ("synthetic:0a67ebdaf7087825", "9a10f2ba71a4a7dc", "916e8884f355d224"),
    ("synth-multiceleba", 3): ("synthetic:4098eabd2d3b33f9", "fc876a7636a24c2c", "1b6c9cd73e6d5920"),
    ("synth-threebias", 0): ("synthetic:63278ac54fae3bb4", "cc38d6baa786549c", "ade64bc08d750c00"),
    ("synth-threebias", 3): ("synthetic:caef8645438ec0ab", "576881ca4ad6c149", "5400169807b29888"),
}


@pytest.mark.parametrize("task,seed", list(BUILTIN))
def test_builtin_task_datasets_are_unchanged(task, seed):
    ds = make_task_dataset(task, seed=seed)
    assert (ds.images.identity(), ds.manifest_digest(), _table_digest(ds)) == BUILTIN[task, seed]
    assert ds.name == task and ds.info == {"description": TASKS[task].description, "seed": seed}
    assert TASKS[task].render_seed is None
    # passing the task value is the same as passing its name
    assert make_task_dataset(TASKS[task], seed=seed).images.identity() == BUILTIN[task, seed][0]


def test_builtin_renders_are_unchanged():
    ds = make_task_dataset("synth-threebias", seed=0)
    digest = hashlib.sha256(b"".join(ds.images.array(i).tobytes() for i in (0, 1, 2345))).hexdigest()[:16]
    assert digest == "5a665f5d589739b2"


# --- names -----------------------------------------------------------------------------

def test_parse_random_task_name():
    assert parse_random_task_name("synth-random:0") == 0
    assert parse_random_task_name("synth-random:1234") == 1234
    assert parse_random_task_name("synth-waterbirds") is None
    assert parse_random_task_name("waterbirds") is None


@pytest.mark.parametrize("name", ["synth-random:abc", "synth-random:-3", "synth-random:", "synth-random:1.5"])
def test_bad_random_task_names_raise_user_error(name):
    with pytest.raises(UserError) as err:
        parse_random_task_name(name)
    assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(UserError):
        make_task_dataset(name)


def test_unknown_task_name_raises_user_error():
    with pytest.raises(UserError, match="synth-random:<seed>"):
        make_task_dataset("synth-waterbird")
    with pytest.raises(UserError):
        random_task(-1)


# --- what a random task draws ----------------------------------------------------------

def test_random_task_is_deterministic_and_seeds_differ():
    assert random_task(7) == random_task(7)
    tasks = [random_task(s) for s in SEEDS]
    assert len({(t.biases, t.counts["train"]) for t in tasks}) == len(SEEDS)
    assert len({t.render_seed for t in tasks}) == len(SEEDS)
    assert all(t.name == f"synth-random:{s}" for t, s in zip(tasks, SEEDS))


@pytest.mark.parametrize("seed", SEEDS)
def test_random_task_draws_within_its_ranges(seed):
    task = random_task(seed)
    k = len(task.biases)
    n_groups = 2 ** (k + 1)
    assert 1 <= k <= 3
    attributes = [a for a, _ in task.biases]
    assert len(set(attributes)) == k and set(attributes) <= {"background", "colour", "size", "pattern", "mark"}
    for attribute, pair in task.biases:
        assert len(pair) == 2 and pair[0] != pair[1] and set(pair) <= set(ATTRIBUTES[attribute])
    train = task.counts["train"]
    assert len(train) == n_groups and min(train) >= 5
    assert 2000 - n_groups <= sum(train) <= 10000 + 5 * n_groups
    assert task.counts["val"] == (math.ceil(1200 / n_groups),) * n_groups
    assert task.counts["test"] == (math.ceil(3000 / n_groups),) * n_groups
    drawn = task.drawn
    assert 2000 <= drawn["train_size"] <= 10000
    assert 0.5 <= max(drawn["class_shares"]) <= 0.75 and math.isclose(sum(drawn["class_shares"]), 1)
    # every group count follows the formula from the drawn parameters
    for g, count in enumerate(train):
        y, code = divmod(g, 2**k)
        share = drawn["class_shares"][y]
        for j, p in enumerate(drawn["conflicting"]):
            share *= p if ((code >> j) & 1) != y else 1 - p
        assert count == max(5, round(drawn["train_size"] * share))
    # the realised conflicting share is the drawn one, up to rounding and the 5-image floor
    exact = []
    for g in range(n_groups):
        y, code = divmod(g, 2**k)
        share = drawn["class_shares"][y]
        for j, p in enumerate(drawn["conflicting"]):
            share *= p if ((code >> j) & 1) != y else 1 - p
        exact.append(drawn["train_size"] * share)
    slack = sum(abs(c - e) for c, e in zip(train, exact)) / sum(train)
    for j, p in enumerate(drawn["conflicting"]):
        assert 0.01 <= p <= 0.20
        assert abs(_conflicting_share(train, k, j) - p) <= slack + 1e-9
        assert abs(_conflicting_share(train, k, j) - p) <= 0.02  # the floor never swamps the bias
    # the description names every bias attribute and both values, in order
    text = task.description
    assert text.startswith(f"{k} bias")
    for attribute, pair in task.biases:
        assert f"{attribute} {pair[0]}/{pair[1]}" in text
    assert f"{sum(train)} train images" in text and f"smallest group {min(train)}" in text


def test_random_tasks_cover_the_draws():
    tasks = [random_task(s) for s in SEEDS]
    assert {len(t.biases) for t in tasks} == {1, 2, 3}
    assert {a for t in tasks for a, _ in t.biases} == {"background", "colour", "size", "pattern", "mark"}
    sizes = {pair for t in tasks for a, pair in t.biases if a == "size"}
    assert sizes == {("small", "large"), ("large", "small")}  # both majority orientations
    orientations = {caption_orientation(pair) for t in tasks for a, pair in t.biases if a == "background"}
    assert orientations == {"with", "against", "n/a"}
    assert {int(np.argmax(t.drawn["class_shares"])) for t in tasks} == {0, 1}
    # which attribute comes first varies too (it is the least significant group digit)
    assert len({t.biases[0][0] for t in tasks}) == 5
    # the report suite carries the weakly named attributes often enough to measure them
    report = [random_task(s) for s in range(1000, 1030)]
    assert sum(any(a in ("pattern", "mark") for a, _ in t.biases) for t in report) >= 8


def test_caption_orientation():
    assert caption_orientation(("grass", "water")) == "with"
    assert caption_orientation(("water", "grass")) == "against"
    assert caption_orientation(("grass", "sand")) == "with"  # angular on its usual grass
    assert caption_orientation(("sand", "water")) == "with"  # round on its usual water
    assert caption_orientation(("water", "brick")) == "against"
    assert caption_orientation(("snow", "grass")) == "against"
    assert caption_orientation(("sand", "snow")) == "n/a"
    for seed in SEEDS:
        task = random_task(seed)
        for attribute, pair in task.biases:
            if attribute == "background":
                o = caption_orientation(pair)
                assert (f"{o} captions" if o != "n/a" else "captions n/a") in task.description


# --- datasets of random tasks ----------------------------------------------------------

def _background_seed():
    return next(s for s in range(100) if random_task(s).biases[0][0] == "background" and len(random_task(s).biases) > 1)


def test_random_task_dataset_matches_its_task():
    seed = _background_seed()
    task = random_task(seed)
    ds = make_task_dataset(f"synth-random:{seed}")
    assert ds.name == task.name and ds.info["description"] == task.description
    assert ds.has_group_labels and ds.n_groups == 2 ** (len(task.biases) + 1)
    assert ds.attribute_names == [a for a, _ in task.biases]
    assert ds.attribute_values == [list(pair) for _, pair in task.biases]
    for split, counts in task.counts.items():
        assert ds.group_counts(split).tolist() == list(counts)
    assert ds.images.seed == task.render_seed
    pair = dict(task.biases)["background"]
    table = ds.images.table
    background = [a for a, _ in task.biases].index("background")
    for i in range(0, len(table), 7):
        row = table[i]._asdict()
        assert family_of(row["shape"]) + " shape" == ds.class_names[ds.y[i]]
        for j, (attribute, values) in enumerate(task.biases):
            assert row[attribute] == values[ds.attrs[i, j]]
        assert row["shore"] in ("", pair[1 - ds.attrs[i, background]])
    assert 0.15 < np.mean([row.shore != "" for row in table]) < 0.35  # shorelines, as for built-in tasks


def test_random_task_datasets_are_deterministic_and_distinct():
    a = make_task_dataset("synth-random:3")
    b = make_task_dataset(random_task(3))
    assert a.images.identity() == b.images.identity() and _table_digest(a) == _table_digest(b)
    assert a.name == b.name == "synth-random:3"
    for i in (0, 5):
        assert a.images.array(i).tobytes() == b.images.array(i).tobytes()
    c = make_task_dataset("synth-random:4")
    assert c.images.identity() != a.images.identity()
    assert a.images.array(0).tobytes() != c.images.array(0).tobytes()
    # the dataset seed still varies the draw and the renders
    d = make_task_dataset("synth-random:3", seed=1)
    assert d.images.identity() != a.images.identity() and d.images.seed == random_task(3).render_seed + 1
    assert d.group_counts("train").tolist() == a.group_counts("train").tolist()


def test_random_task_images_render():
    ds = make_task_dataset("synth-random:5")
    img = ds.images.load(0)
    assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
