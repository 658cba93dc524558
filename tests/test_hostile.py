"""A hostile pass over the command line: every bad input ends in one stderr line
`groupcoop: error: ...`, exit status 2, no traceback, and nothing written in --out, its parent
or the feature cache. Also: --overwrite never deletes user files, the feature cache notices
changed images, image symlinks stay inside the dataset folder.

Everything runs on a 12-image CSV dataset (8x8 PNGs) with the bundled tiny CLIP, so the
whole file stays fast on a 2-core CPU.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from groupcoop.io.folders import output_lock, write_manifest

from test_cli import assert_one_line_error

PYTHON = sys.executable
SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


# --- a tiny CSV dataset ------------------------------------------------------------------------

def write_png(path: Path, seed: int, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 193) % 256)).save(path, format="PNG")


def make_csv_root(root: Path, n: int = 12, labels=("cat", "dog"), places=("land", "water"),
                  place_cell=None) -> Path:
    """root/img/<i>.png and root/meta.csv (path,label,place,split): every split has every group."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,place,split"]
    for i in range(n):
        write_png(root / "img" / f"{i}.png", i)
        place = places[(i // 2) % 2] if place_cell is None else place_cell(i)
        lines.append(f"img/{i}.png,{labels[i % len(labels)]},{place},{('train', 'val', 'test')[(i // 4) % 3]}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    return root


def csv_args(root: Path, attrs: bool = True) -> list[str]:
    args = ["--dataset", "csv", "--root", str(root), "--option", "csv_path=meta.csv", "--option", "path_col=path",
            "--option", "label_col=label"]
    return args + (["--option", "attr_cols=[place]"] if attrs else [])


TINY = ["--backbone", "groupcoop-tiny"]


def train_args(root: Path, out: Path, *extra, method: str = "zeroshot") -> list:
    return ["train", *csv_args(root), *TINY, "--method", method, "--out", out, "--quiet", *extra]


def snapshot(folder: Path) -> dict:
    """Every path under `folder` with its size (files) or None (folders and links)."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        out[p.relative_to(folder).as_posix()] = p.stat().st_size if p.is_file() and not p.is_symlink() else None
    return out


@pytest.fixture
def data(tmp_path) -> Path:
    return make_csv_root(tmp_path / "data")


@pytest.fixture
def no_extraction(monkeypatch):
    """Fail the test if any image feature is extracted."""
    def refuse(*args, **kwargs):
        raise AssertionError("features were extracted before the input was checked")

    monkeypatch.setattr("groupcoop.runs.pipeline.extract_features", refuse)


@pytest.fixture
def refused(tmp_path, cli):
    """Run the CLI on input that must be refused: one line naming the fragments, nothing written
    under tmp_path (which holds --out, its parent and --cache-dir)."""
    def run(argv, *fragments: str) -> str:
        before = snapshot(tmp_path)
        result = cli(*argv)
        line = assert_one_line_error(result, *fragments)
        assert snapshot(tmp_path) == before, "a refused run wrote files"
        return line

    return run


@pytest.fixture(scope="module")
def zeroshot_run(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset folder, run folder) of a zero-shot run on the tiny CSV dataset."""
    from groupcoop.cli.main import main

    base = tmp_path_factory.mktemp("zs")
    root = make_csv_root(base / "data")
    out = base / "run"
    assert main([str(a) for a in train_args(root, out, "--workers", "0", "--cache-dir", base / "cache")]) == 0
    return root, out


# --- 1. --overwrite replaces only groupcoop's own folders -----------------------------------------

def _user_folder(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "thesis.tex").write_text("\\begin{document}")
    (folder / "metrics.json").write_text("{}")  # looks like a run file, but the folder is not a run
    return snapshot(folder)


def test_overwrite_keeps_a_folder_of_user_files(data, tmp_path, refused, no_extraction):
    mine = tmp_path / "mine"
    before = _user_folder(mine)
    refused(train_args(data, mine, "--overwrite"), str(mine), "groupcoop did not write")
    assert snapshot(mine) == before


def test_overwrite_out_dot_from_inside_a_folder_of_user_files(data, tmp_path, refused, no_extraction, monkeypatch):
    mine = tmp_path / "mine"
    before = _user_folder(mine)
    monkeypatch.chdir(mine)
    refused(train_args(data, Path("."), "--overwrite"), "current folder")
    assert snapshot(mine) == before


@pytest.mark.parametrize("where", [".", ".."])
def test_overwrite_never_replaces_the_cwd_or_a_parent_even_if_it_is_a_run(zeroshot_run, tmp_path, refused,
                                                                        no_extraction, monkeypatch, where):
    root, run = zeroshot_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "inner").mkdir()
    write_manifest(copy, "run")  # the whole folder is groupcoop's own, the inner folder too
    monkeypatch.chdir(copy / "inner" if where == ".." else copy)
    before = snapshot(copy)
    refused(train_args(root, Path(where), "--overwrite", "--method", "coop"), "current folder")
    assert snapshot(copy) == before


def test_overwrite_keeps_a_run_folder_with_an_added_user_file(zeroshot_run, tmp_path, refused, no_extraction):
    root, run = zeroshot_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "my-analysis.ipynb").write_text("{}")
    before = snapshot(copy)
    refused(train_args(root, copy, "--overwrite", "--seed", "3"), "groupcoop did not write")
    assert snapshot(copy) == before


def test_groups_overwrite_keeps_user_files(data, tmp_path, refused, no_extraction):
    mine = tmp_path / "mine"
    before = _user_folder(mine)
    refused(["groups", *csv_args(data), *TINY, "--labeler", "kmeans", "--out", mine, "--overwrite", "--quiet"],
            "groupcoop did not write")
    assert snapshot(mine) == before


# --- 2. the feature cache notices changed images ---------------------------------------------------

def _extract(backbone, root: Path, n: int, cache: Path, **kw) -> torch.Tensor:
    from groupcoop.data.base import PathImages
    from groupcoop.features.extract import extract_features

    images = PathImages(root, tuple(f"img/{i}.png" for i in range(n)))
    return extract_features(backbone, images, cache_dir=cache, shard_size=2, workers=0, progress=False, **kw).tensor()


def _shard_times(cache: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in cache.rglob("shard-*.safetensors")}


def test_replacing_one_image_changes_exactly_its_features(tiny_backbone, tmp_path):
    root = make_csv_root(tmp_path / "data", n=6)
    cache = tmp_path / "cache"
    first = _extract(tiny_backbone, root, 6, cache)
    times = _shard_times(cache)
    time.sleep(0.01)
    write_png(root / "img" / "3.png", 99, size=(9, 9))  # another picture in place of image 3
    second = _extract(tiny_backbone, root, 6, cache)
    changed = [i for i in range(6) if not torch.equal(first[i], second[i])]
    assert changed == [3]
    after = _shard_times(cache)
    assert {k for k in times if after[k] != times[k]} == {"shard-000000002-000000004.safetensors"}
    fresh = _extract(tiny_backbone, root, 6, tmp_path / "fresh")
    assert torch.allclose(second, fresh, atol=1e-6)


def test_verify_cache_notices_a_same_size_same_mtime_replacement(tiny_backbone, tmp_path):
    root = tmp_path / "data"
    for i in range(4):  # BMP files of one size: equal byte counts whatever the colour
        path = root / "img" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (60 * i, 90, 200 - 40 * i)).save(path, format="BMP")
    cache = tmp_path / "cache"
    first = _extract(tiny_backbone, root, 4, cache, verify=True)
    target = root / "img" / "1.png"
    st = target.stat()
    Image.new("RGB", (8, 8), (250, 10, 10)).save(target, format="BMP")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size
    second = _extract(tiny_backbone, root, 4, cache, verify=True)
    assert [i for i in range(4) if not torch.equal(first[i], second[i])] == [1]


# --- 3. symlinks stay inside the dataset folder ------------------------------------------------------

def _outside_file(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.png"
    write_png(secret, 77)
    return secret


def test_symlinked_image_leading_outside_is_refused(data, tmp_path, refused, no_extraction):
    (data / "img" / "5.png").unlink()
    (data / "img" / "5.png").symlink_to(_outside_file(tmp_path))
    refused(train_args(data, tmp_path / "run", "--cache-dir", tmp_path / "cache"), "5.png", "outside",
            "--allow-symlinks-outside")
    refused(["datasets", "check", "csv", "--root", data, *csv_args(data)[4:]], "--allow-symlinks-outside")


def test_symlinked_folder_leading_outside_is_refused(data, tmp_path, refused, no_extraction):
    _outside_file(tmp_path)
    shutil.rmtree(data / "img")
    shutil.copytree(tmp_path / "outside", tmp_path / "elsewhere")
    for i in range(12):
        write_png(tmp_path / "elsewhere" / f"{i}.png", i)
    (data / "img").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    refused(train_args(data, tmp_path / "run", "--cache-dir", tmp_path / "cache"), "outside",
            "--allow-symlinks-outside")


def test_allow_symlinks_outside_opts_out(data, tmp_path, cli):
    (data / "img" / "5.png").unlink()
    (data / "img" / "5.png").symlink_to(_outside_file(tmp_path))
    result = cli("datasets", "check", "csv", *csv_args(data)[2:], "--allow-symlinks-outside")
    assert result.code == 0, result.err


def test_symlink_inside_the_root_is_fine(data, cli):
    (data / "img" / "5.png").unlink()
    (data / "img" / "5.png").symlink_to(data / "img" / "7.png")
    result = cli("datasets", "check", "csv", *csv_args(data)[2:])
    assert result.code == 0, result.err


def test_image_symlink_swapped_after_the_check_is_refused_when_read(data, tmp_path):
    """The check at load time is repeated when the image is opened (the link could change in between)."""
    from groupcoop.data.registry import load_dataset
    from groupcoop.errors import UserError

    ds = load_dataset("csv", data, csv_path="meta.csv", path_col="path", label_col="label")
    (data / "img" / "2.png").unlink()
    (data / "img" / "2.png").symlink_to(_outside_file(tmp_path))
    with pytest.raises(UserError, match="--allow-symlinks-outside"):
        ds.images.load(2)


# --- unreadable images, with the default (> 0) DataLoader workers --------------------------------------

def test_default_workers_are_processes():
    from groupcoop.features.decode import default_workers

    assert default_workers() >= 1


def test_unreadable_image_with_worker_processes(data, tmp_path, refused):
    (data / "img" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    refused(train_args(data, tmp_path / "run", "--cache-dir", tmp_path / "cache"), "5.png", "cannot read image")


def test_decompression_bomb_guard_names_the_limit_and_the_variable(data, tmp_path, refused, monkeypatch):
    monkeypatch.setenv("GROUPCOOP_MAX_IMAGE_PIXELS", "40")  # the images have 64 pixels
    line = refused(train_args(data, tmp_path / "run", "--cache-dir", tmp_path / "cache"),
                   "GROUPCOOP_MAX_IMAGE_PIXELS", "40")
    assert "64" in line


def test_decompression_bomb_guard_is_the_limit_not_twice_it(data, tmp_path, refused, monkeypatch):
    # Pillow only warns between its limit and twice the limit; a warning printed by a worker
    # would be a second stderr line, and the image would be read although it is over the limit
    monkeypatch.setenv("GROUPCOOP_MAX_IMAGE_PIXELS", "50")
    refused(train_args(data, tmp_path / "run", "--cache-dir", tmp_path / "cache"), "GROUPCOOP_MAX_IMAGE_PIXELS",
            "50")


def test_bad_pixel_limit_variable(data, tmp_path, refused, monkeypatch):
    monkeypatch.setenv("GROUPCOOP_MAX_IMAGE_PIXELS", "-5")
    refused(train_args(data, tmp_path / "run", "--cache-dir", tmp_path / "cache"), "GROUPCOOP_MAX_IMAGE_PIXELS")


def test_folder_where_an_image_file_should_be(data, tmp_path, refused, no_extraction):
    (data / "img" / "4.png").unlink()
    (data / "img" / "4.png").mkdir()
    line = refused(train_args(data, tmp_path / "run", "--cache-dir", tmp_path / "cache"), "4.png", "folder")
    assert "not found" not in line


# --- settings, all refused in under 5 s before any image is read ---------------------------------------

BAD_SETTINGS = {
    "lr=abc": (["--set", "lr=abc"], ["lr"]),
    "patience=abc": (["--set", "patience=abc"], ["patience"]),
    "lr=-1": (["--set", "lr=-1"], ["lr", "> 0"]),
    "weight_decay=x": (["--set", "weight_decay=x"], ["weight_decay"]),
    "ctx_init=123": (["--set", "ctx_init=123"], ["ctx_init"]),
    "epochs=true": (["--set", "epochs=true"], ["epochs"]),
    "aggregate=median": (["--set", "aggregate=median"], ["aggregate", "logsumexp"]),
    "n_ctx=500": (["--set", "n_ctx=500"], ["--set n_ctx", "64"]),
    "clusters=0": (["--groups", "kmeans", "--clusters", "0"], ["--clusters"]),
    "clusters=-3": (["--groups", "kmeans", "--clusters", "-3"], ["--clusters"]),
    "workers=-1": (["--workers", "-1"], ["--workers"]),
    "seed=-1": (["--seed", "-1"], ["--seed"]),
    "device=foo": (["--device", "foo"], ["foo", "cpu"]),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_settings_are_refused_at_once(case, data, tmp_path, refused, no_extraction):
    changes, fragments = BAD_SETTINGS[case]
    start = time.perf_counter()
    line = refused(train_args(data, tmp_path / "run", "--cache-dir", tmp_path / "cache", *changes,
                              method="groupcoop"), *fragments)
    assert time.perf_counter() - start < 5
    assert "--n-ctx" not in line


@pytest.mark.parametrize("command", ["evaluate", "groups"])
def test_device_foo_is_named_by_every_command(command, zeroshot_run, tmp_path, refused, no_extraction):
    root, run = zeroshot_run
    extra = ["--prompts", run] if command == "evaluate" else ["--labeler", "kmeans", "--out", tmp_path / "g"]
    line = refused([command, *csv_args(root), *TINY, "--device", "foo", "--quiet", *extra], "foo", "cpu")
    assert "checkpoint" not in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", ["train", "evaluate", "groups"])
def test_device_cuda_without_a_gpu(command, zeroshot_run, tmp_path, refused, no_extraction):
    root, run = zeroshot_run
    extra = {"train": ["--method", "zeroshot", "--out", tmp_path / "run"], "evaluate": ["--prompts", run],
             "groups": ["--labeler", "kmeans", "--out", tmp_path / "g"]}[command]
    line = refused([command, *csv_args(root), *TINY, "--device", "cuda", "--quiet", *extra], "cuda", "GPU")
    assert "checkpoint" not in line


def test_ctx_init_too_long_for_n_ctx_names_the_set_keys(data, tmp_path, refused, no_extraction):
    refused(train_args(data, tmp_path / "run", "--set", "n_ctx=2", method="coop"), "--set n_ctx", "ctx_init")


# --- the filesystem, before any work ---------------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_unwritable_out_or_cache_dir(flag, data, tmp_path, cli, no_extraction):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        paths = {"--out": tmp_path / "run", "--cache-dir": tmp_path / "cache", flag: locked / "x"}
        result = cli(*train_args(data, paths["--out"], "--cache-dir", paths["--cache-dir"]))
        assert_one_line_error(result, flag, "permission")
        assert list(locked.iterdir()) == [] and not (tmp_path / "run").exists()
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_folder_that_permissions_call_writable_but_is_not(flag, data, tmp_path, refused, no_extraction):
    # /proc passes os.access for root, yet nothing can be created there
    paths = {"--out": tmp_path / "run", "--cache-dir": tmp_path / "cache", flag: Path("/proc/groupcoop-test/x")}
    refused(train_args(data, paths["--out"], "--cache-dir", paths["--cache-dir"]), flag, "cannot write")


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_parent_that_is_a_file(flag, data, tmp_path, refused, no_extraction):
    (tmp_path / "afile").write_text("x")
    paths = {"--out": tmp_path / "run", "--cache-dir": tmp_path / "cache", flag: tmp_path / "afile" / "x"}
    refused(train_args(data, paths["--out"], "--cache-dir", paths["--cache-dir"]), flag, "is a file")


@pytest.mark.parametrize("command", ["train", "groups"])
def test_out_that_is_an_existing_file(command, data, tmp_path, refused, no_extraction):
    (tmp_path / "result").write_text("mine")
    argv = train_args(data, tmp_path / "result") if command == "train" else \
        ["groups", *csv_args(data), *TINY, "--labeler", "kmeans", "--out", tmp_path / "result", "--quiet"]
    refused(argv, "result", "not a folder")
    assert (tmp_path / "result").read_text() == "mine"


# --- bad checkpoints ---------------------------------------------------------------------------------

class _Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _checkpoint(tmp_path: Path, kind: str) -> Path:
    marker = tmp_path / "PWNED"
    if kind == "empty.pt":
        path = tmp_path / "empty.pt"
        path.write_bytes(b"")
    elif kind == "random.pt":
        path = tmp_path / "random.pt"
        path.write_bytes(os.urandom(4096))
    elif kind == "pickle.pt":
        path = tmp_path / "pickle.pt"
        torch.save({"state_dict": _Payload(marker)}, path)
    elif kind == "pickle.bin":
        path = tmp_path / "pickle.bin"
        path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    else:
        path = tmp_path / "random.safetensors"
        path.write_bytes(os.urandom(4096))
    return path


@pytest.mark.parametrize("kind", ["empty.pt", "random.pt", "pickle.pt", "pickle.bin", "random.safetensors"])
def test_bad_checkpoints(kind, data, tmp_path, refused, no_extraction):
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    path = _checkpoint(ckpt_dir, kind)
    refused(train_args(data, tmp_path / "run", "--pretrained", path, "--cache-dir", tmp_path / "cache"),
            path.name, "checkpoint")
    assert not (ckpt_dir / "PWNED").exists(), "unpickling the checkpoint ran code"


def test_backbone_needing_transformers_names_the_package(data, tmp_path, refused, no_extraction):
    import importlib.util

    if importlib.util.find_spec("transformers") is not None:
        pytest.skip("transformers is installed here")
    refused(["train", *csv_args(data), "--backbone", "ViT-B-16-SigLIP", "--pretrained", "random", "--method",
             "zeroshot", "--out", tmp_path / "run"], "ViT-B-16-SigLIP", "pip install transformers")


def test_local_dir_missing_does_not_blame_the_network(data, tmp_path, refused, no_extraction):
    line = refused(["train", *csv_args(data), "--backbone", f"local-dir:{tmp_path}/missing", "--method", "zeroshot",
                    "--out", tmp_path / "run"], "missing")
    assert "network" not in line


def test_local_dir_without_a_model_does_not_blame_the_network(data, tmp_path, refused, no_extraction):
    (tmp_path / "empty-model").mkdir()
    line = refused(["train", *csv_args(data), "--backbone", f"local-dir:{tmp_path}/empty-model", "--method",
                    "zeroshot", "--out", tmp_path / "run"], "empty-model")
    assert "network" not in line


# --- config files and dataset options -------------------------------------------------------------------

CONFIGS = {
    "random-bytes": (b"\xff\xfe\x00\x9c\x80garbage\x00\xc3\x28", ["config file"]),
    "hyperparameters-list": (b"dataset: synth-waterbirds\nbackbone: groupcoop-tiny\nmethod: coop\n"
                             b"hyperparameters: [1, 2]\n", ["hyperparameters"]),
    "dataset-number": (b"dataset: 123\nbackbone: groupcoop-tiny\nmethod: coop\n", ["dataset"]),
    "dataset-options-number": (b"dataset: synth-waterbirds\nbackbone: groupcoop-tiny\nmethod: coop\n"
                               b"dataset_options: 5\n", ["dataset_options"]),
    "a-list": (b"- 1\n- 2\n", ["mapping"]),
    "bad-yaml": (b"dataset: [unclosed\n", ["YAML"]),
    "groups-number": (b"dataset: synth-waterbirds\nbackbone: groupcoop-tiny\nmethod: coop\ngroups: 7\n", ["groups"]),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config_files(case, tmp_path, refused, no_extraction):
    content, fragments = CONFIGS[case]
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    refused(["train", "--config", config, "--out", tmp_path / "run"], *fragments)


@pytest.mark.parametrize("case", ["hyperparameters-list", "dataset-options-number"])
def test_bad_config_mappings_with_flags_on_top(case, tmp_path, refused, no_extraction):
    config = tmp_path / "config.yaml"
    config.write_bytes(CONFIGS[case][0])
    refused(["train", "--config", config, "--out", tmp_path / "run", "--set", "epochs=1", "--option", "seed=1"],
            CONFIGS[case][1][0])


@pytest.mark.parametrize("option, fragments", [
    ("seed=abc", ["seed"]), ("root=/x", ["root", "--root"]), ("attr_phrases=5", ["attr_phrases"]),
    ("seed=-4", ["seed"]), ("seed=1.5", ["seed"]), ("=3", ["KEY=VALUE"]), ("seed", ["KEY=VALUE"]),
])
@pytest.mark.parametrize("command", ["train", "datasets"])
def test_bad_options_on_synthetic_datasets(command, option, fragments, tmp_path, refused, no_extraction):
    argv = ["train", "--dataset", "synth-waterbirds", *TINY, "--method", "coop", "--out", tmp_path / "run"] \
        if command == "train" else ["datasets", "check", "synth-waterbirds"]
    refused([*argv, "--option", option], *fragments)


def test_class_names_must_be_a_list_not_letters(data, tmp_path, refused, no_extraction):
    line = refused(train_args(data, tmp_path / "run", "--option", "class_names=cat"), "class_names")
    assert "'c', 'a', 't'" not in line and "c, a, t" not in line


# --- evaluate on a damaged run folder ----------------------------------------------------------------------

def _damaged(zeroshot_run, tmp_path, how: str) -> Path:
    root, run = zeroshot_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    if how == "head-random-bytes":
        (copy / "head.safetensors").write_bytes(os.urandom(2048))
    elif how == "head-missing":
        (copy / "head.safetensors").unlink()
    elif how == "head-empty":
        (copy / "head.safetensors").write_bytes(b"")
    elif how == "config-list":
        (copy / "config.yaml").write_text("- a\n- b\n")
    return copy


@pytest.mark.parametrize("how", ["head-random-bytes", "head-missing", "head-empty", "config-list"])
def test_evaluate_a_damaged_run_folder(how, zeroshot_run, tmp_path, refused, no_extraction):
    root, _ = zeroshot_run
    run = _damaged(zeroshot_run, tmp_path, how)
    backbone = [] if how == "config-list" else TINY
    refused(["evaluate", "--prompts", run, *csv_args(root), *backbone, "--quiet"], str(run))


# --- groupcoop backbones | head -1 ------------------------------------------------------------------------

def test_backbones_into_a_closed_pipe():
    read, write = os.pipe()
    fcntl.fcntl(read, 1031, 4096)  # F_SETPIPE_SZ: a small pipe, so the writer meets the closed end
    proc = subprocess.Popen([PYTHON, "-m", "groupcoop", "backbones"], stdout=write, stderr=subprocess.PIPE, env=ENV)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        first = reader.readline()
    _, err = proc.communicate(timeout=120)
    assert first.strip()
    err = err.decode()
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err
    assert proc.returncode in (0, 141) and not err, (proc.returncode, err)  # the reader left: silent, as Unix tools


# --- smaller ones -------------------------------------------------------------------------------------

def test_one_class_dataset_is_refused(tmp_path, refused, no_extraction):
    root = make_csv_root(tmp_path / "data", labels=("cat",))
    refused(train_args(root, tmp_path / "run"), "class", "two")


def test_empty_attribute_cells_with_the_default_group_source(tmp_path, refused, no_extraction):
    root = make_csv_root(tmp_path / "data", place_cell=lambda i: "" if i == 1 else ("land", "water")[(i // 2) % 2])
    refused(train_args(root, tmp_path / "run", method="groupcoop"), "place", "--groups")


def test_attribute_column_with_no_value_at_all(tmp_path, refused, no_extraction):
    # the label-free case: it loads (without the unnamed column), and a labeler needs phrases for its groups
    root = make_csv_root(tmp_path / "data", place_cell=lambda i: "")
    refused(train_args(root, tmp_path / "run", method="groupcoop"), "--groups pseudo", "--bias-prompts")


def test_empty_attribute_cells_with_an_explicit_labeler_are_fine(tmp_path, cli):
    root = make_csv_root(tmp_path / "data", place_cell=lambda i: "" if i == 1 else ("land", "water")[(i // 2) % 2])
    result = cli("datasets", "check", "csv", *csv_args(root)[2:])
    assert result.code == 0, result.err


def test_second_concurrent_run_into_one_out_is_refused(data, tmp_path, refused, no_extraction):
    out = tmp_path / "run"
    with output_lock(out):
        refused(train_args(data, out), "another groupcoop process", str(out))
    assert not (tmp_path / ".run.lock").exists()


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_follow_the_umask(umask, file_mode, dir_mode, data, tmp_path, cli):
    old = os.umask(umask)
    try:
        out, cache = tmp_path / "runs" / "run", tmp_path / "cache"
        result = cli(*train_args(data, out, "--workers", "0", "--cache-dir", cache))
        assert result.code == 0, result.err
    finally:
        os.umask(old)
    for folder in (tmp_path / "runs", cache):
        for p in [folder, *folder.rglob("*")]:
            mode = p.stat().st_mode & 0o777
            assert mode == (dir_mode if p.is_dir() else file_mode), (p, oct(mode))


def test_config_yaml_reproduces_the_run(data, tmp_path, cli):
    first = tmp_path / "first"
    result = cli(*train_args(data, first, "--workers", "0", "--set", "epochs=2", "--seed", "5", method="coop"))
    assert result.code == 0, result.err
    again = tmp_path / "again"
    result = cli("train", "--config", first / "config.yaml", "--out", again, "--workers", "0", "--quiet")
    assert result.code == 0, result.err
    first_metrics, again_metrics = (json.loads((f / "metrics.json").read_text()) for f in (first, again))
    assert first_metrics.pop("provenance") and again_metrics.pop("provenance")  # versions, host, times
    assert again_metrics == first_metrics
    assert (again / "config.yaml").read_bytes() == (first / "config.yaml").read_bytes()


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"]])
def test_help_and_version_do_not_import_torch(argv):
    code = ("import sys\nfrom groupcoop.cli.main import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'open_clip' in sys.modules, file=sys.stderr)" % argv)
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.stderr.strip().splitlines()[-1] == "False False", proc.stderr
    assert proc.stdout.strip()


def test_config_yaml_is_resolved_even_without_set_or_option_flags(zeroshot_run):
    import yaml

    from groupcoop.methods import METHODS

    config = yaml.safe_load((zeroshot_run[1] / "config.yaml").read_text())
    assert config["hyperparameters"] == METHODS["zeroshot"].defaults()
    assert config["dataset_options"]["split_col"] == "split"  # a default, filled in


def test_subpopbench_name_option_from_the_command_line(tmp_path, cli):
    import replicas

    root = replicas.metashift_replica(tmp_path)
    result = cli("datasets", "check", "subpopbench", "--root", root, "--option", "name=metashift", "--json")
    assert result.code == 0, result.err
    assert '"metashift"' in result.out


def test_out_dot_in_an_empty_current_folder_is_refused(data, tmp_path, refused, no_extraction, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    refused(train_args(data, Path("."), "--cache-dir", tmp_path / "cache"), "current folder")


def test_refused_run_leaves_no_parent_folders_behind(data, tmp_path, refused):
    (data / "img" / "5.png").write_bytes(b"not an image")
    refused(train_args(data, tmp_path / "new" / "deeper" / "run", "--cache-dir", tmp_path / "cache"), "5.png")
    assert not (tmp_path / "new").exists()


def test_cache_dir_inside_out_is_refused(data, tmp_path, refused, no_extraction):
    refused(train_args(data, tmp_path / "run", "--cache-dir", tmp_path / "run" / "cache"), "--cache-dir", "--out")


def test_replacing_an_image_by_rename_with_the_old_size_and_mtime_is_noticed(tiny_backbone, tmp_path):
    """`cp -p` / `mv` keep a file's mtime: the stamp must not rely on size and mtime alone."""
    root = tmp_path / "data"
    for i in range(4):
        path = root / "img" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (60 * i, 90, 200 - 40 * i)).save(path, format="BMP")
    cache = tmp_path / "cache"
    first = _extract(tiny_backbone, root, 4, cache)
    target = root / "img" / "1.png"
    st = target.stat()
    replacement = tmp_path / "new.bmp"
    Image.new("RGB", (8, 8), (250, 10, 10)).save(replacement, format="BMP")
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, target)
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = _extract(tiny_backbone, root, 4, cache)
    assert [i for i in range(4) if not torch.equal(first[i], second[i])] == [1]


def test_rerun_into_the_current_folder_holding_the_same_run_is_refused(zeroshot_run, tmp_path, refused,
                                                                        no_extraction, monkeypatch):
    root, run = zeroshot_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.chdir(copy)
    refused(train_args(root, Path("."), "--workers", "0", "--cache-dir", tmp_path / "cache"), "current folder")


@pytest.mark.parametrize("flag", ["--config", "--pretrained", "--option"])
def test_a_folder_where_a_file_should_be_is_named_as_a_folder(flag, data, tmp_path, refused, no_extraction):
    (tmp_path / "afolder").mkdir()
    value = {"--option": "csv_path=" + str(tmp_path / "afolder")}.get(flag, str(tmp_path / "afolder"))
    line = refused(train_args(data, tmp_path / "run", flag, value), "afolder", "folder")
    assert "not found" not in line


@pytest.mark.parametrize("how", ["wide-weight", "bias-mismatch", "metadata-null", "no-weight"])
def test_evaluate_a_head_with_damaged_tensors(how, zeroshot_run, tmp_path, refused, no_extraction):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    root, run = zeroshot_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with safe_open(str(copy / "head.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
        weight = fh.get_tensor("weight")
    tensors = {"weight": weight}
    if how == "wide-weight":
        tensors["weight"] = torch.zeros(weight.shape[0], weight.shape[1] + 3)
    elif how == "bias-mismatch":
        tensors["bias"] = torch.zeros(weight.shape[0] + 1)
    elif how == "metadata-null":
        meta = {"groupcoop": json.dumps({**json.loads(meta["groupcoop"]), "scale": None})}
    else:
        tensors = {"other": weight}
    save_file(tensors, str(copy / "head.safetensors"), metadata=meta)
    refused(["evaluate", "--prompts", copy, *csv_args(root), *TINY, "--quiet"], "head.safetensors")
