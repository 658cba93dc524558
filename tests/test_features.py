"""Feature cache: content-keyed, atomic shards, resumable after a kill, stale entries rebuilt."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from groupcoop.backbones.families import TINY, load_backbone
from groupcoop.data.world.datasets import make_task_dataset
from groupcoop.data.world.render import SyntheticImages
from groupcoop.features.cache import FeatureCache
from groupcoop.features.extract import extract_features


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(TINY)


@pytest.fixture(scope="module")
def images():
    full = make_task_dataset("synth-waterbirds").images
    return SyntheticImages(full.table[:384], full.seed)


def _extract(backbone, images, cache, **kw):
    """All features in memory (normalised, as the rest of the code sees them)."""
    return extract_features(backbone, images, cache_dir=cache, shard_size=48, workers=0, progress=False, **kw).tensor()


def test_cache_hit_equals_fresh_extraction(backbone, images, tmp_path):
    first = _extract(backbone, images, tmp_path)
    assert first.shape == (384, 128)
    again = _extract(backbone, images, tmp_path)
    assert torch.equal(first, again)
    reference = backbone.encode_images(torch.stack([backbone.preprocess(images.load(i)) for i in range(48)]), normalize=True)
    assert torch.allclose(first[:48], reference, atol=1e-5)


KILL_SCRIPT = """
import sys, torch
from groupcoop.backbones.families import load_backbone
from groupcoop.data.world.datasets import make_task_dataset
from groupcoop.data.world.render import SyntheticImages
from groupcoop.features.extract import extract_features
torch.set_num_threads(1)
full = make_task_dataset("synth-waterbirds").images
images = SyntheticImages(full.table[:384], full.seed)
extract_features(load_backbone("groupcoop-tiny"), images, cache_dir=sys.argv[1], shard_size=48, batch_size=8,
                 workers=0, progress=False)
"""


def test_killed_extraction_resumes_to_the_same_result(backbone, images, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(killed)])
    key_folder = FeatureCache.for_inputs(backbone, images, killed, "float32").folder
    deadline = time.time() + 120
    while time.time() < deadline and len(list(key_folder.glob("shard-*.safetensors"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(key_folder.glob("shard-*.safetensors"))
    assert 2 <= len(done) < 8, "the kill should land midway"
    assert not (key_folder / "complete.json").exists()
    # a half-written shard from a crash that bypassed the atomic rename must not count as done
    (key_folder / "shard-000000336-000000384.safetensors").write_bytes(b"\x00" * 100)
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    resumed = _extract(backbone, images, killed)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()), "finished shards are reused, not redone"
    uninterrupted = _extract(backbone, images, tmp_path / "clean")
    assert torch.allclose(resumed, uninterrupted, atol=1e-6)


def test_interrupted_run_leaves_only_whole_shards(backbone, images, tmp_path):
    with pytest.raises(InterruptedError):
        _extract(backbone, images, tmp_path, stop_after_shards=3)
    folder = FeatureCache.for_inputs(backbone, images, tmp_path, "float32").folder
    assert len(list(folder.glob("shard-*"))) == 3 and not list(folder.glob("*.tmp"))
    assert torch.allclose(_extract(backbone, images, tmp_path), _extract(backbone, images, tmp_path / "b"))


def test_changed_images_get_a_new_cache_entry(backbone, images, tmp_path):
    _extract(backbone, images, tmp_path)
    other = SyntheticImages(images.table, images.seed + 1)
    assert FeatureCache.for_inputs(backbone, other, tmp_path, "float32").key != \
        FeatureCache.for_inputs(backbone, images, tmp_path, "float32").key
    changed = _extract(backbone, other, tmp_path)
    assert not torch.allclose(changed, _extract(backbone, images, tmp_path))


def test_stale_marker_is_rebuilt(backbone, images, tmp_path):
    first = _extract(backbone, images, tmp_path)
    folder = FeatureCache.for_inputs(backbone, images, tmp_path, "float32").folder
    (folder / "complete.json").write_text("{}")
    shard = folder / "shard-000000000-000000048.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])  # damaged
    assert torch.equal(_extract(backbone, images, tmp_path), first)


def test_float16_cache(backbone, images, tmp_path):
    half = _extract(backbone, images, tmp_path, dtype="float16")
    full = _extract(backbone, images, tmp_path)
    assert half.dtype == torch.float32 and torch.allclose(half, full, atol=1e-2)
    assert sum(p.stat().st_size for p in Path(tmp_path).rglob("*.safetensors")) < 1.6 * 384 * 128 * 4


def test_shard_size_is_remembered_by_the_cache_folder(backbone, images, tmp_path):
    from groupcoop.errors import UserError
    from groupcoop.features.cache import open_cache

    first = _extract(backbone, images, tmp_path)  # shard_size=48
    again = extract_features(backbone, images, cache_dir=tmp_path, workers=0, progress=False)
    assert len(again.blocks) == 8 and torch.equal(again.tensor(), first)
    with pytest.raises(UserError, match="holds shards of 48 rows, not 64; pass --shard-size 48"):
        open_cache(backbone, images, tmp_path, "float32", shard_size=64)


def test_precision_choices():
    from groupcoop.errors import UserError
    from groupcoop.features.extract import resolve_precision

    assert resolve_precision("cuda:1") == "fp16" and resolve_precision("cpu") == "fp32"
    assert resolve_precision("cpu", "bf16") == "bf16" and resolve_precision("cuda", "fp32") == "fp32"
    with pytest.raises(UserError, match="--precision fp16 is not available on cpu; use fp32 or bf16"):
        resolve_precision("cpu", "fp16")


def test_bf16_autocast_on_cpu_is_close_to_fp32(backbone, images, tmp_path):
    small = SyntheticImages(images.table[:48], images.seed)
    fp32 = _extract(backbone, small, tmp_path / "a")
    bf16 = _extract(backbone, small, tmp_path / "b", precision="bf16")
    cosine = (fp32 * bf16).sum(dim=1)
    assert not torch.equal(fp32, bf16) and cosine.min() > 0.99


class _ReplacedWhileRead:
    """PathImages whose image `index` is replaced on disk right after it is read for encoding."""

    def __init__(self, images, index: int, replacement: Path):
        self.images, self.index, self.replacement = images, index, replacement

    def __len__(self) -> int:
        return len(self.images)

    def identity(self) -> str:
        return self.images.identity()

    def stamp(self, start: int, stop: int, verify: bool = False) -> str:
        return self.images.stamp(start, stop, verify)

    def load(self, i: int):
        image = self.images.load(i)
        if i == self.index and self.replacement.exists():
            self.replacement.replace(self.images.root / self.images.paths[i])  # a new inode, new bytes
        return image


def test_an_image_replaced_during_extraction_leaves_its_shard_stale(backbone, images, tmp_path):
    from groupcoop.data.base import PathImages
    from groupcoop.features.cache import open_cache, stale_shards

    root = tmp_path / "images"
    root.mkdir()
    for i in range(96):
        images.load(i).save(root / f"{i:03d}.png")
    files = PathImages(root, tuple(f"{i:03d}.png" for i in range(96)))
    images.load(200).save(tmp_path / "new.png")
    _extract(backbone, _ReplacedWhileRead(files, 50, tmp_path / "new.png"), tmp_path / "cache")
    assert not (tmp_path / "new.png").exists(), "the image was replaced mid-way"
    # the shard holds the old image's features, so it must not pass for current with the new file
    cache, shards = open_cache(backbone, files, tmp_path / "cache", "float32")
    assert stale_shards(cache, files, shards) == [1]
    reencoded = _extract(backbone, files, tmp_path / "cache")
    assert torch.allclose(reencoded, _extract(backbone, files, tmp_path / "fresh"), atol=1e-6)
    assert stale_shards(cache, files, shards) == []


def test_a_lone_process_given_a_world_by_hand_is_one_line_not_a_wait(tmp_path, cli, monkeypatch):
    """WORLD_SIZE and MASTER_ADDR set in a shell, no torchrun: the peers would be waited for for hours."""
    import replicas

    root = replicas.csv_replica(tmp_path)
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533",
                       "GROUPCOOP_DIST_TIMEOUT": "5"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    result = cli("extract", "--dataset", "csv", "--root", root, "--option", "csv_path=labels.csv", "--option",
                 "path_col=image", "--option", "label_col=animal", "--option", "attr_cols=background", "--option",
                 "split_col=fold", "--backbone", TINY, "--cache-dir", tmp_path / "cache", "--workers", 0, "--quiet")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "not started by torchrun" in result.err and "unset WORLD_SIZE and RANK" in result.err
    assert not (tmp_path / "cache").exists()
