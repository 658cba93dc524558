"""A model is its bytes: the feature cache is keyed by the content of every file that decides the
features (never a path or a name), an export records and checks the sha256 of every model file, and
a run's config.yaml cannot smuggle a non-text `pretrained` past the loader."""

from __future__ import annotations

import json
import runpy
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import replicas
from groupcoop.backbones.families import TINY, load_backbone
from groupcoop.backbones.open_clip import tiny_weights_path
from groupcoop.cli.main import main
from groupcoop.features.cache import FeatureCache


class _Images:
    """Just enough of an image list for a cache key."""

    def identity(self) -> str:
        return "four images"

    def __len__(self) -> int:
        return 4


def _key(backbone, cache) -> str:
    return FeatureCache.for_inputs(backbone, _Images(), cache, "float32").key


def _local_dir(folder, weights=None):
    """groupcoop-tiny as open_clip's local-dir: layout."""
    import open_clip

    folder.mkdir(parents=True)
    load_backbone(TINY)  # registers its config with open_clip
    config = {"model_cfg": open_clip.get_model_config(TINY), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    shutil.copyfile(weights or tiny_weights_path(), folder / "open_clip_model.safetensors")
    return folder


def test_the_feature_cache_key_is_the_models_content_not_its_path(tmp_path):
    folder = _local_dir(tmp_path / "model")
    key = _key(load_backbone(f"local-dir:{folder}"), tmp_path)
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "copy")
    assert _key(load_backbone(f"local-dir:{moved}"), tmp_path) == key, "a copied folder is the same model"

    weights = load_file(str(folder / "open_clip_model.safetensors"))  # other weights, same name and shapes
    weights["visual.proj"] = weights["visual.proj"] * 2
    save_file(weights, str(folder / "open_clip_model.safetensors"))
    swapped = _key(load_backbone(f"local-dir:{folder}"), tmp_path)
    assert swapped != key, "swapped weights must not find the old features"

    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["quick_gelu"] = True  # same weights, another activation: other features
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    assert _key(load_backbone(f"local-dir:{folder}"), tmp_path) not in (key, swapped)


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory):
    """A zero-shot groupcoop-tiny run on the CSV replica and its export."""
    tmp = tmp_path_factory.mktemp("identity")
    root = replicas.csv_replica(tmp)
    code = main(["train", "--dataset", "csv", "--root", str(root), "--option", "csv_path=labels.csv",
                 "--option", "path_col=image", "--option", "label_col=animal", "--option", "attr_cols=background",
                 "--option", "split_col=fold", "--backbone", TINY, "--method", "zeroshot", "--out", str(tmp / "run"), "--cache-dir", str(tmp / "cache"),
                 "--workers", "0", "--quiet"])
    assert code == 0
    assert main(["export", str(tmp / "run"), "--out", str(tmp / "export")]) == 0
    return root, tmp / "run", tmp / "export"


def test_an_export_refuses_any_changed_model_file_and_so_does_the_readme_block(run_and_export, tmp_path, cli,
                                                                                monkeypatch):
    from test_predict import readme_block

    root, _, export = run_and_export
    image = root / "pics" / "0.png"
    edited = shutil.copytree(export, tmp_path / "edited")
    config = json.loads((edited / "open_clip_config.json").read_text())
    config["preprocess_cfg"]["mean"] = [0.0, 0.0, 0.0]  # the weights are untouched: only the preprocessing
    (edited / "open_clip_config.json").write_text(json.dumps(config))
    result = cli("predict", edited, "--images", image, "--out", tmp_path / "p.csv", "--quiet", "--workers", "0")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "open_clip_config.json does not match the sha256" in result.err and not (tmp_path / "p.csv").exists()

    (tmp_path / "classifier").symlink_to(edited, target_is_directory=True)  # the README's block checks too
    shutil.copy(image, tmp_path / "photo.png")
    (tmp_path / "snippet.py").write_text(readme_block("export"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="open_clip_config.json changed since export"):
        runpy.run_path(str(tmp_path / "snippet.py"))

    added = shutil.copytree(export, tmp_path / "added")
    (added / "open_clip_pytorch_model.bin").write_bytes(b"\0")
    result = cli("predict", added, "--images", image, "--out", tmp_path / "p.csv", "--quiet", "--workers", "0")
    assert result.code == 2 and "was not written by export" in result.err, result.err


@pytest.mark.parametrize("value", [["openai"], 3])
def test_a_runs_pretrained_of_the_wrong_type_is_one_line(run_and_export, tmp_path, cli, value):
    import yaml

    root, run, _ = run_and_export
    copied = shutil.copytree(run, tmp_path / "run")
    config = yaml.safe_load((copied / "config.yaml").read_text())
    config["pretrained"] = value
    (copied / "config.yaml").write_text(yaml.safe_dump(config))
    result = cli("predict", copied, "--images", root / "pics" / "0.png", "--out", tmp_path / "p.csv", "--quiet")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "pretrained" in result.err and "is not a weights name" in result.err and not (tmp_path / "p.csv").exists()


def test_non_finite_features_are_refused_before_caching(tmp_path):
    from groupcoop.data.base import PathImages
    from groupcoop.errors import UserError
    from groupcoop.features.extract import extract_features

    weights = load_file(str(tiny_weights_path()))
    weights["visual.proj"][0, 0] = float("nan")  # one damaged weight: every feature is NaN
    save_file(weights, str(tmp_path / "nan.safetensors"))
    backbone = load_backbone(TINY, str(tmp_path / "nan.safetensors"))
    for i in range(8):
        replicas.write_image(tmp_path / "pics" / f"{i}.png", i)
    images = PathImages(tmp_path / "pics", tuple(f"{i}.png" for i in range(8)))
    with pytest.raises(UserError, match=r"non-finite image features \(NaN or inf\) for 8 images, the first image 0.png"):
        extract_features(backbone, images, cache_dir=tmp_path / "cache", workers=0, progress=False)
    assert not list((tmp_path / "cache").rglob("shard-*")), "nothing cached"
    assert torch.isnan(backbone.encode_images(torch.zeros(1, 3, 32, 32))).any()
