"""`groupcoop extract` under torchrun (Gloo on CPU): the same bytes as one process, and a killed
rank's shards finished by a re-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import groupcoop
from groupcoop.features.cache import FeatureCache
from groupcoop.features.distributed import Ranks

N_IMAGES, SHARD = 384, 16  # 24 shards: 12 per rank
ENV = {**os.environ, "PYTHONPATH": str(Path(groupcoop.__file__).parents[1]), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A csv dataset of rendered synthetic images (train/val/test)."""
    from groupcoop.data.world.datasets import make_task_dataset

    root = tmp_path_factory.mktemp("images")
    ds = make_task_dataset("synth-waterbirds")
    lines = ["path,y,place,split"]
    for i in range(N_IMAGES):
        ds.images.load(i).save(root / f"{i:04d}.png")
        lines.append(f"{i:04d}.png,{ds.y[i]},{ds.attrs[i, 0]},{('train', 'train', 'val', 'test')[i % 4]}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    return root


def _flags(root: Path, cache: Path) -> list[str]:
    return ["--dataset", "csv", "--root", str(root), "--option", "csv_path=meta.csv", "--option", "path_col=path",
            "--option", "label_col=y", "--option", "attr_cols=[place]", "--backbone", "groupcoop-tiny",
            "--cache-dir", str(cache), "--workers", "0", "--quiet"]


def _extract(root: Path, cache: Path, processes: int = 1, wait: bool = True, batch_size: int = 16):
    module = ["-m", "groupcoop", "extract", *_flags(root, cache), "--shard-size", str(SHARD),
              "--batch-size", str(batch_size)]
    runner = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    proc = subprocess.Popen([sys.executable, *runner, *module], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return out


def _folder(cache: Path) -> Path:
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _rank_pid(parent: int, rank: int) -> int | None:
    """The worker process torchrun started for `rank` (found through /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def test_ranks_from_env():
    assert Ranks.from_env({}) == Ranks(0, 1, 0, 1) and not Ranks.from_env({}).active
    ranks = Ranks.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none"})
    assert ranks.active and ranks.device("cuda") == "cuda:1" and ranks.device("cpu") == "cpu"


def test_extract_refuses_a_bad_precision_before_any_work(dataset, tmp_path, cli):
    result = cli("extract", *_flags(dataset, tmp_path / "cache"), "--precision", "fp16")
    assert result.code == 2 and "--precision fp16 is not available on cpu" in result.err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow  # three torchrun launches: ~15 s of CPU each just to import torch and open_clip
def test_torchrun_extract_equals_one_process_and_resumes_after_a_killed_rank(dataset, tmp_path, cli):
    single = cli("extract", *_flags(dataset, tmp_path / "single"), "--shard-size", SHARD, "--batch-size", 16)
    assert single.code == 0, single.err
    assert "shards: 24 (24 written now by 1 process), rows: 384, dim: 128, dtype: float32" in single.out
    reference = _files(_folder(tmp_path / "single"))
    assert sum(n.startswith("shard-") for n in reference) == 24

    two = _extract(dataset, tmp_path / "two", processes=2)
    assert "24 written now by 2 processes" in two
    assert _files(_folder(tmp_path / "two")) == reference, "torchrun shards differ from one process's"

    # kill rank 1 once it has written two shards (odd shard numbers are rank 1's) and four are on disk in all:
    # under load rank 0 can start late, so rank 1's two alone do not make a midway cache
    killed = tmp_path / "killed"
    proc = _extract(dataset, killed, processes=2, wait=False, batch_size=4)
    deadline, rank1 = time.time() + 90, None
    while time.time() < deadline:
        rank1 = rank1 or _rank_pid(proc.pid, 1)
        done = [int(p.name.split("-")[1]) // SHARD for p in killed.glob("*/shard-*.safetensors")]
        if rank1 and sum(k % 2 for k in done) >= 2 and len(done) >= 4:
            break
        time.sleep(0.01)
    assert rank1, "rank 1 not found"
    os.kill(rank1, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    folder = _folder(killed)
    cache = FeatureCache(folder, folder.name, {})
    shards = {p.name for p in folder.glob("shard-*")}
    assert 4 <= len(shards) < 24 and not (folder / "complete.json").exists(), "the kill should land midway"
    assert all(cache.shard_stamp(*(int(v) for v in n[6:-12].split("-"))) is not None for n in shards), "partial shard"
    # what a crash could leave besides: a truncated shard outside the atomic rename, an abandoned temporary file
    (folder / "shard-000000368-000000384.safetensors").write_bytes(reference["shard-000000368-000000384.safetensors"][:90])
    (folder / ".shard-000000352-000000368.safetensors.abc.tmp").write_bytes(b"\0" * 50)
    kept = {n: (folder / n).stat().st_mtime_ns for n in shards}

    resumed = _extract(dataset, killed, processes=2)
    written = int(resumed.split("(")[1].split()[0])
    assert written == 24 - len(shards), "finished shards are reused, the rest written once"
    assert all((folder / n).stat().st_mtime_ns == t for n, t in kept.items())
    assert _files(folder) == reference, "the resumed cache differs from one process's (duplicate, partial or stray file)"

    # train reads the torchrun cache without extracting, and learns what it learns from the single-process one
    metrics = []
    for name in ("single", "two"):
        out = tmp_path / f"run-{name}"
        result = cli("train", *_flags(dataset, tmp_path / name), "--method", "groupcoop", "--set", "epochs=2",
                     "--out", out)
        assert result.code == 0, result.err
        metrics.append(json.loads((out / "metrics.json").read_text()))
        assert metrics[-1].pop("provenance")  # versions, host and times: the one part that differs
    assert metrics[0] == metrics[1]
    assert _files(_folder(tmp_path / "two")) == reference

    # on an empty cache, train writes exactly what plain extract writes
    assert cli("extract", *_flags(dataset, tmp_path / "plain")).code == 0
    out = tmp_path / "run-fresh"
    assert cli("train", *_flags(dataset, tmp_path / "fresh"), "--method", "zeroshot", "--out", out).code == 0
    assert _files(_folder(tmp_path / "fresh")) == _files(_folder(tmp_path / "plain"))
