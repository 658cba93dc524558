"""Property-based tests of every metadata parser and settings reader: whatever the input,
the result is a valid dataset or settings value, or one clean `UserError` line; never another
exception (which the CLI would report as an internal error).

Contents are generated both as raw text/bytes and as near-valid tables whose cells are drawn
from values that are right, almost right and wrong; a few tiny real PNGs stand where paths
must point at files. Each property runs about 50 examples.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from groupcoop.data.base import GroupDataset
from groupcoop.data.check import dataset_report
from groupcoop.data.registry import dataset_options, load_dataset
from groupcoop.errors import UserError
from groupcoop.grouping.plan import resolve_grouping
from groupcoop.grouping.labelers import LABELERS
from groupcoop.grouping.options import GroupingOptions
from groupcoop.schema import build
from groupcoop.io.read import read_yaml_mapping
from groupcoop.runs.settings import CONFIG_KEYS, RunSettings, key_values, make_settings

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# text that can be written as UTF-8 (no lone surrogates)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
SMALL_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
N_IMAGES = 4


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (60 * seed % 256, 90, 30 * seed % 256)).save(path, format="PNG")


@contextmanager
def folder_with_images(subdir: str = "img", names=None):
    """A fresh temporary folder holding a few tiny PNGs under `subdir` (names default 0.png ...)."""
    root = Path(tempfile.mkdtemp(prefix="gc-prop-"))
    try:
        for i, name in enumerate(names or [f"{i}.png" for i in range(N_IMAGES)]):
            _png(root / subdir / name, i)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def assert_valid_dataset(ds: GroupDataset) -> None:
    """A dataset the rest of the code can work with."""
    assert isinstance(ds, GroupDataset)
    n = len(ds.images)
    assert n == len(ds.y) == len(ds.split) == len(ds.attrs) > 0
    assert ds.n_classes >= 2
    assert ((ds.y >= 0) & (ds.y < ds.n_classes)).all()
    assert set(np.unique(ds.split).tolist()) <= {0, 1, 2}
    assert all(size >= 1 for size in ds.attr_sizes)
    for j, size in enumerate(ds.attr_sizes):
        assert ((ds.attrs[:, j] >= -1) & (ds.attrs[:, j] < size)).all()
    if ds.attribute_phrases is not None:
        assert [len(p) for p in ds.attribute_phrases] == ds.attr_sizes
    assert len(ds.group_names()) == ds.n_groups
    dataset_report(ds)
    for source in (None, *LABELERS):
        try:
            resolve_grouping(ds, GroupingOptions(source=source))
        except UserError as err:
            assert "\n" not in str(err)


def load_or_user_error(name: str, root: Path, /, **options) -> GroupDataset | None:
    try:
        ds = load_dataset(name, root, **options)
    except UserError as err:
        assert "\n" not in str(err) and str(err).strip()
        return None
    assert_valid_dataset(ds)
    return ds


# --- near-valid tables: a valid table, then a few cells, rows or header names broken ------------------

GROUP_CELLS = [(split, y, a) for split in range(3) for y in range(2) for a in range(2)]  # every split, every group


@st.composite
def mutate(draw, header: list[str], rows: list[list[str]], pools: dict, changes: int | None = None):
    """0-3 changes to a valid table: a cell from the column's pool of bad values, a row dropped
    or doubled, a header name changed. About a third of the tables stay valid."""
    header, rows = list(header), [list(r) for r in rows]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3])) if changes is None else changes):
        kind = draw(st.sampled_from(["cell", "cell", "cell", "drop", "double", "header"]))
        if not rows:
            break
        r = draw(st.integers(0, len(rows) - 1))
        if kind == "cell":
            c = draw(st.integers(0, len(header) - 1))
            rows[r][c] = draw(pools.get(header[c], SMALL_TEXT))
        elif kind == "drop":
            del rows[r]
        elif kind == "double":
            rows.append(list(rows[r]))
        else:
            c = draw(st.integers(0, len(header) - 1))
            header[c] = draw(st.sampled_from(["", "x", header[c].upper(), header[c] + " "]))
    return header, rows


def _cell(value: str) -> str:
    return f'"{value}"' if "," in value or '"' in value else value


def as_csv(header, rows, newline: str = "\n") -> str:
    return newline.join([",".join(header)] + [",".join(_cell(c) for c in row) for row in rows]) + newline


# --- custom CSV ----------------------------------------------------------------------------------

BAD_PATHS = st.sampled_from(["img/missing.png", "img", "", "../outside.png", "/etc/passwd", " img/3.png",
                             "./img/0.png", "img//1.png", "img/0.png/"])
BAD_LABELS = st.sampled_from(["bird", "2", "-1", "1.5", "nan", "", " cat", "1e3", "True", "0"])
BAD_ATTRS = st.sampled_from(["", "", "3", "-1", "x y", "0.0", "sea", "1"])
BAD_SPLITS = st.sampled_from(["3", "", "validation", "-1", "TRAIN", "1.0", "2.5"])


@st.composite
def csv_tables(draw):
    names = draw(st.sampled_from([("cat", "dog"), ("0", "1"), ("dog", "cat")]))
    places = draw(st.sampled_from([("land", "water"), ("0", "1"), ("indoor", "outdoor")]))
    split_names = draw(st.sampled_from([("train", "val", "test"), ("0", "1", "2")]))
    header = ["path", "label", "place", "split"]
    rows = [[f"img/{k % N_IMAGES}.png", names[y], places[a], split_names[s]]
            for k, (s, y, a) in enumerate(GROUP_CELLS)]
    rows = draw(st.permutations(rows))
    header, rows = draw(mutate(header, rows, {"path": BAD_PATHS, "label": BAD_LABELS, "place": BAD_ATTRS,
                                              "split": BAD_SPLITS}))
    return as_csv(header, rows, draw(st.sampled_from(["\n", "\r\n"])))


CSV_OPTIONS = st.fixed_dictionaries({}, optional={
    "attr_cols": st.sampled_from([["place"], ["place"], [], ["place", "label"], ["nope"]]),
    "class_names": st.sampled_from([["cat", "dog"], ["dog", "cat"], ["a", "b", "c"], ["0", "1"]]),
    "attr_values": st.sampled_from([[["land", "water"]], [["land"]], [["0", "1"]], []]),
    "attr_phrases": st.sampled_from([[["on land", "on water"]], [["x"]], []]),
    "split_col": st.sampled_from(["split", "split", "place"]),
})


@PROPERTY
@given(table=csv_tables(), options=CSV_OPTIONS)
def test_csv_tables(table, options):
    with folder_with_images() as root:
        _write(root / "meta.csv", table)
        options = {"attr_cols": ["place"], **options}
        load_or_user_error("csv", root, csv_path="meta.csv", path_col="path", label_col="label", **options)


@PROPERTY
@given(content=st.one_of(TEXT, st.binary(max_size=300)))
def test_csv_random_contents(content):
    with folder_with_images() as root:
        _write(root / "meta.csv", content)
        load_or_user_error("csv", root, csv_path="meta.csv", path_col="path", label_col="label",
                           attr_cols=["place"])


# --- CelebA ------------------------------------------------------------------------------------

CELEBA_IMAGES = [f"{i:06d}.jpg" for i in range(1, len(GROUP_CELLS) + 1)]
CELEBA_NAMES = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young", "Smiling"]


@st.composite
def celeba_files(draw):
    """list_attr_celeba.txt and list_eval_partition.txt, valid then mutated."""
    attr_rows = []
    for k, (s, y, a) in enumerate(GROUP_CELLS):
        values = {"Blond_Hair": y, "Male": a, "Young": k % 2, "Smiling": (k // 3) % 2, "5_o_Clock_Shadow": 0}
        attr_rows.append([CELEBA_IMAGES[k]] + [("-1", " 1")[values[n]] for n in CELEBA_NAMES])
    header = ["image_id", *CELEBA_NAMES]
    values = st.sampled_from(["0", "2", "x", "", "1.0", "-1 1"])
    ids = st.sampled_from(["000099.jpg", "", "a b", CELEBA_IMAGES[0]])
    # about a third of the file pairs stay valid; the others get 1-3 changes in one file or both
    where = draw(st.sampled_from(["none", "attr", "none", "partition", "count", "both", "none"]))
    changes = {w: draw(st.integers(1, 3)) if where in (w, "both") else 0 for w in ("attr", "partition")}
    header, attr_rows = draw(mutate(header, attr_rows, {"image_id": ids, **{n: values for n in CELEBA_NAMES}},
                                    changes["attr"]))
    count = str(len(attr_rows)) if where != "count" else draw(st.sampled_from([str(len(attr_rows) + 1), "x", "-3"]))
    attr = "\n".join([count, " ".join(header[1:]) + " "] + ["  ".join(r) for r in attr_rows]) + "\n"
    parts = [[CELEBA_IMAGES[k], str(s)] for k, (s, _, _) in enumerate(GROUP_CELLS)]
    _, parts = draw(mutate(["image_id", "partition"], parts,
                           {"image_id": ids, "partition": st.sampled_from(["3", "x", "", "0 0", "-1"])},
                           changes["partition"]))
    partition = "\n".join(" ".join(p) for p in parts) + "\n"
    return attr, partition


@PROPERTY
@given(files=celeba_files(), task=st.sampled_from([
    ("Blond_Hair", ["Male"]), ("blond_hair", ["male"]), ("Male", ["Young"]), ("Young", ["Smiling", "Male"]),
    ("x", ["Male"]), ("Male", ["Male"]), ("Blond_Hair", ["Nope"]), ("Blond_Hair", ["Male"])]))
def test_celeba_text_files(files, task):
    target, biases = task
    with folder_with_images("img_align_celeba", CELEBA_IMAGES) as root:
        _write(root / "list_attr_celeba.txt", files[0])
        _write(root / "list_eval_partition.txt", files[1])
        load_or_user_error("celeba", root, target=target, biases=biases)


@PROPERTY
@given(attr=st.one_of(TEXT, st.binary(max_size=300)), partition=st.one_of(TEXT, st.binary(max_size=100)))
def test_celeba_random_contents(attr, partition):
    with folder_with_images("img_align_celeba", CELEBA_IMAGES[:N_IMAGES]) as root:
        _write(root / "list_attr_celeba.txt", attr)
        _write(root / "list_eval_partition.txt", partition)
        load_or_user_error("celeba", root)


# --- SubpopBench -------------------------------------------------------------------------------

BAD_INTS = st.sampled_from(["2", "-1", "", "1.0", "1.5", "x", "5", "6"])


@st.composite
def subpop_tables(draw):
    header = ["filename", "y", "a", "split"]
    rows = [[f"img/{k % N_IMAGES}.png", str(y), str(a), str(s)] for k, (s, y, a) in enumerate(GROUP_CELLS)]
    order = draw(st.permutations(range(4)))
    header, rows = [header[i] for i in order], [[r[i] for i in order] for r in draw(st.permutations(rows))]
    header, rows = draw(mutate(header, rows, {"filename": BAD_PATHS, "y": BAD_INTS, "a": BAD_INTS,
                                              "split": BAD_SPLITS}))
    if draw(st.booleans()):  # SubpopBench's id column, or a column left out
        header, rows = ["id", *header], [[str(i), *r] for i, r in enumerate(rows)]
    elif draw(st.booleans()):
        c = draw(st.integers(0, len(header) - 1))
        header, rows = header[:c] + header[c + 1:], [r[:c] + r[c + 1:] for r in rows]
    return as_csv(header, rows)


@PROPERTY
@given(table=st.one_of(subpop_tables(), subpop_tables(), TEXT, st.binary(max_size=200)),
       name=st.sampled_from([None, None, "metashift", "imagenetbg", "nicopp", "mydata"]))
def test_subpopbench_tables(table, name):
    with folder_with_images() as root:
        metadata = {"metashift": "metadata_metashift.csv"}.get(name, "metadata.csv")
        _write(root / metadata, table)
        options = {"name": name} if name else {}
        load_or_user_error("subpopbench", root, **options)


# --- config files --------------------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=True),
                    SMALL_TEXT, st.sampled_from(["cpu", "cuda", "coop", "groupcoop", "gt", "pseudo", "1e-3",
                                                 "synth-waterbirds", "groupcoop-tiny", "float16", "a,b;c,d"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(SMALL_TEXT, inner, max_size=3)),
                      max_leaves=8)
HYPER_KEYS = ["epochs", "lr", "batch_size", "optimizer", "n_ctx", "ctx_init", "sampler", "aggregate",
              "class_loss_weight", "patience", "weight_decay", "momentum", "shared_ctx", "group_words", "templates"]


@st.composite
def config_mappings(draw):
    config = {
        "dataset": draw(st.sampled_from(["synth-waterbirds", "synth-random:3", "csv", "celeba", "nope", 5, None])),
        "backbone": draw(st.sampled_from(["groupcoop-tiny", "ViT-B-16", 3, ""])),
        "method": draw(st.sampled_from(["zeroshot", "coop", "groupcoop", "x", None])),
    }
    for key in draw(st.lists(st.sampled_from(list(CONFIG_KEYS) + ["unknown"]), max_size=5, unique=True)):
        if key == "hyperparameters" and draw(st.booleans()):
            config[key] = draw(st.dictionaries(st.sampled_from(HYPER_KEYS), VALUES, max_size=4))
        elif key == "groups" and draw(st.booleans()):
            config[key] = draw(st.dictionaries(st.sampled_from(["source", "bias_prompts", "clusters", "variant", "k"]),
                                               VALUES, max_size=3))
        elif key == "dataset_options" and draw(st.booleans()):
            config[key] = draw(st.dictionaries(st.sampled_from(["seed", "target", "biases", "csv_path", "path_col",
                                                                "label_col", "root"]), VALUES, max_size=3))
        else:
            config[key] = draw(VALUES)
    return config


def settings_or_user_error(values, where: str = "--config") -> RunSettings | None:
    try:
        result = make_settings(values, where)
    except UserError as err:
        assert "\n" not in str(err) and str(err).strip()
        return None
    assert isinstance(result, RunSettings)
    # the resolved configuration is itself a valid configuration, and reproduces the value
    assert make_settings(yaml.safe_load(yaml.safe_dump(result.dump())), "config.yaml") == result
    return result


@PROPERTY
@given(config=config_mappings())
def test_config_yaml_mappings(config, tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    try:
        values = read_yaml_mapping(path, "config file")
    except UserError:
        return
    settings_or_user_error(values)


@PROPERTY
@given(content=st.one_of(TEXT, st.binary(max_size=300),
                         st.builds(lambda t: "dataset: synth-waterbirds\nbackbone: groupcoop-tiny\nmethod: coop\n" + t,
                                   TEXT)))
def test_config_random_contents(content, tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    _write(path, content)
    try:
        values = read_yaml_mapping(path, "config file")
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(values, dict)
    settings_or_user_error(values)


# --- --set and --option values --------------------------------------------------------------------

VALUE_TEXT = st.one_of(SMALL_TEXT, st.sampled_from(["1", "-1", "0", "1e-3", "abc", "true", "null", "[1, 2]", "[a, b]",
                                                    "{a: 1}", "1.5", ".inf", "nan", "'5'", "a,b", "x;y", "", "[",
                                                    "2**40", "99999999999999999999"]))


@st.composite
def pairs(draw, keys):
    key = draw(st.one_of(st.sampled_from(keys), SMALL_TEXT))
    return draw(st.sampled_from([f"{key}={draw(VALUE_TEXT)}", key, f"={draw(VALUE_TEXT)}"]))


@PROPERTY
@given(given_pairs=st.lists(pairs(HYPER_KEYS), max_size=3), method=st.sampled_from(["zeroshot", "coop", "groupcoop"]))
def test_set_values(given_pairs, method):
    try:
        hyper = key_values(given_pairs, "--set")
    except UserError:
        return
    settings_or_user_error({"dataset": "synth-waterbirds", "backbone": "groupcoop-tiny", "method": method,
                            "hyperparameters": hyper}, "flags")


OPTION_KEYS = ["seed", "target", "biases", "csv_path", "path_col", "label_col", "attr_cols", "class_names",
               "attr_values", "attr_phrases", "split_col", "name", "metadata", "mouth_slightly_open", "root"]


@PROPERTY
@given(given_pairs=st.lists(pairs(OPTION_KEYS), max_size=3),
       dataset=st.sampled_from(["synth-waterbirds", "csv", "celeba", "multiceleba", "subpopbench", "metashift"]))
def test_option_values(given_pairs, dataset):
    try:
        options = key_values(given_pairs, "--option")
        checked = dataset_options(dataset, options)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(checked, dict)
    assert dataset_options(dataset, checked) == checked  # defaults filled in are valid options again
    settings_or_user_error({"dataset": dataset, "backbone": "groupcoop-tiny", "method": "coop",
                            "dataset_options": options}, "flags")


@PROPERTY
@given(value=VALUE_TEXT, clusters=st.one_of(st.none(), VALUE_TEXT))
def test_grouping_flags(value, clusters):
    """--bias-prompts text as given; --clusters as a config file would give it (a YAML scalar)."""
    try:
        extra = key_values([f"clusters={clusters}"], "--clusters") if clusters is not None else {}
        options = build(GroupingOptions, {"bias_prompts": value, **extra}, "groups options")
    except UserError:
        return
    assert isinstance(options, GroupingOptions)
    for phrases in options.bias_prompts or []:
        assert phrases and all(isinstance(p, str) and p for p in phrases)


@pytest.mark.parametrize("text", ["on land,on water", "a;b", ";", ",,", "on land,on water;young,old"])
def test_bias_prompts_examples(text):
    try:
        options = build(GroupingOptions, {"bias_prompts": text}, "groups options")
    except UserError:
        return
    assert all(p for phrases in options.bias_prompts for p in phrases)
