"""The transformers adapter: Hugging Face CLIPModel and SiglipModel checkpoints.

Tiny random models are built here and saved with `save_pretrained`, with tokenizer files made
offline (a word-level tokenizer over a small vocabulary, CLIP-style with [SOS]/[EOS] or
SigLIP-style with [EOS] only) and the families' image processors. The adapter's embedding
path must give what transformers' own `get_text_features` / `get_image_features` give, its
prompts must reproduce the hand-written text, and `groupcoop train` / `predict` must work
with `--backbone transformers:<folder>`.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import replicas  # noqa: E402
from groupcoop.backbones.families import load_backbone  # noqa: E402
from groupcoop.errors import UserError  # noqa: E402
from groupcoop.methods.head import Head  # noqa: E402
from groupcoop.methods.prompts import PromptLearner  # noqa: E402

WORDS = ("x a photo of on in the with cat dog indoor outdoor round angular shape water land grass . , "
         "much longer prompt several words and punctuation to check cut").split()
TEXTS = ["a photo of a dog.", "x", "a much longer prompt, with several words and punctuation, to check the cut"]
FAMILIES = ("clip", "siglip")


def _tokenizer(family: str, length: int):
    """A word-level tokenizer: CLIP's specials around the text, or SigLIP's end token after it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    if family == "clip":
        specials = {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "unk": "<|unk|>"}
        template = f"{specials['bos']} $A {specials['eos']}"
    else:
        specials = {"eos": "</s>", "unk": "<unk>"}
        template = f"$A {specials['eos']}"
    vocab = {token: i for i, token in enumerate([*specials.values(), *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials.values() if t in template])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=length, pad_token=specials["eos"],
        **{f"{k}_token": v for k, v in specials.items()})
    return fast, vocab, specials


def save_tiny_model(folder, family: str):
    """A random CLIPModel or SiglipModel, its tokenizer and image processor, saved with save_pretrained."""
    length = 24 if family == "clip" else 16
    tok, vocab, specials = _tokenizer(family, length)
    ids = {"eos_token_id": vocab[specials["eos"]], "pad_token_id": vocab[specials["eos"]]}
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": length, **ids}
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2}
    torch.manual_seed(0)
    if family == "clip":
        text["bos_token_id"] = vocab[specials["bos"]]
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=16))
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
        processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {f: save_tiny_model(tmp_path_factory.mktemp(f"tiny-{f}"), f) for f in FAMILIES}


@pytest.fixture(scope="module")
def loaded(folders):
    """(our backbone, transformers' own model loaded separately) per family."""
    model_class = {"clip": transformers.CLIPModel, "siglip": transformers.SiglipModel}
    return {f: (load_backbone(f"transformers:{folders[f]}"), model_class[f].from_pretrained(folders[f]).eval())
            for f in FAMILIES}


def features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 4 / 5


@pytest.mark.parametrize("family", FAMILIES)
def test_embedding_path_equals_get_text_features(loaded, family):
    bb, reference = loaded[family]
    ids = bb.tokenize(TEXTS)
    with torch.no_grad():
        expected = features(reference.get_text_features(input_ids=ids))
        for cut in (True, False):
            ours = bb.encode_text_embeddings(bb.token_embeddings(ids), bb.pool_positions(ids), cut=cut)
            assert (ours - expected).abs().max().item() <= 1e-5, f"{family} cut={cut}"


@pytest.mark.parametrize("family", FAMILIES)
def test_image_features_equal_get_image_features(loaded, family):
    bb, reference = loaded[family]
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = features(reference.get_image_features(pixel_values=pixels))
    assert (bb.encode_images(pixels) - expected).abs().max().item() <= 1e-5
    from PIL import Image

    image = Image.new("RGB", (40, 48), (200, 30, 90))  # the checkpoint's own image processor
    processor = transformers.AutoImageProcessor.from_pretrained(reference.name_or_path)
    assert torch.allclose(bb.preprocess(image), processor(images=image, return_tensors="pt")["pixel_values"][0])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["cat", "round shape on water"])
def test_context_from_a_phrase_reproduces_the_hand_written_prompt(loaded, family, name):
    bb, reference = loaded[family]
    assert bb.prefix_length == (1 if family == "clip" else 0)  # [SOS] before the text, or nothing
    learner = PromptLearner(bb, [name], n_ctx=4, init="a photo of a")
    with torch.no_grad():
        learned = learner()
        written = features(reference.get_text_features(input_ids=bb.tokenize([f"a photo of a {name}."])))
    torch.testing.assert_close(learned, written, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_scores_are_the_models_logits(loaded, family):
    """SigLIP scores scale * cos + bias (sigmoid scoring), CLIP scale * cos: the head says the same."""
    bb, reference = loaded[family]
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    texts = ["a photo of a cat.", "a photo of a dog."]
    head = Head.from_text(bb.encode_text(texts), bb.logit_scale, 2, bias=bb.row_bias(len(texts)))
    assert (bb.logit_bias is None) == (family == "clip")
    with torch.no_grad():
        expected = reference(input_ids=bb.tokenize(texts), pixel_values=pixels).logits_per_image
    ours = head.logits(F.normalize(bb.encode_images(pixels), dim=-1))
    assert (ours - expected).abs().max().item() <= 1e-4


def test_identity_follows_the_files_not_the_folder(folders, tmp_path):
    from groupcoop.features.cache import FeatureCache

    copy = shutil.copytree(folders["clip"], tmp_path / "elsewhere")
    a, b = load_backbone(f"transformers:{folders['clip']}"), load_backbone(f"transformers:{copy}")
    assert a.identity == b.identity and a.identity.startswith("transformers:clip@file:")
    assert a.identity != load_backbone(f"transformers:{folders['siglip']}").identity
    config = json.loads((copy / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "gelu"  # the same weights, another activation: other features
    (copy / "config.json").write_text(json.dumps(config))
    changed = load_backbone(f"transformers:{copy}")
    images = type("Images", (), {"identity": lambda self: "four", "__len__": lambda self: 4})()  # a key's image list
    assert changed.identity != a.identity
    assert FeatureCache.for_inputs(changed, images, tmp_path, "float32").key != \
        FeatureCache.for_inputs(a, images, tmp_path, "float32").key


def test_a_folder_without_its_tokenizer_or_processor_files_is_refused(folders, tmp_path):
    """transformers builds a 2-token tokenizer from a folder without tokenizer files: refused, as is a
    folder without its image processor file."""
    no_tokenizer = shutil.copytree(folders["clip"], tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        (no_tokenizer / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match="has no tokenizer files .*tokenizer.save_pretrained"):
        load_backbone(f"transformers:{no_tokenizer}")
    no_processor = shutil.copytree(folders["clip"], tmp_path / "no-processor")
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(UserError, match=r"has no image processor file \(preprocessor_config.json\)"):
        load_backbone(f"transformers:{no_processor}")


@pytest.mark.parametrize("change, said", [(-1, "weights its config does not use"),
                                          (1, "weights its config needs are missing")])
def test_weights_that_do_not_fit_the_config_are_refused(folders, tmp_path, change, said):
    """A config.json that drops or adds a layer: transformers' loading report says so, and so do we."""
    folder = shutil.copytree(folders["clip"], tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] += change
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"the weights do not fit its config.json: 16 {said} "
                                        rf"\(vision_model.encoder.layers.{2 if change > 0 else 1}\."):
        load_backbone(f"transformers:{folder}")


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory):
    """(data root, run folder) per family: GroupCoOp for 2 epochs on the CSV replica."""
    from groupcoop.cli.main import main

    out = {}
    for family in FAMILIES:
        tmp = tmp_path_factory.mktemp(f"run-{family}")
        root = replicas.csv_replica(tmp)
        code = main(["train", "--dataset", "csv", "--root", str(root), "--option", "csv_path=labels.csv",
                     "--option", "path_col=image", "--option", "label_col=animal", "--option", "attr_cols=background",
                     "--option", "split_col=fold", "--backbone", f"transformers:{folders[family]}", "--method",
                     "groupcoop", "--set", "epochs=2", "--set", "batch_size=4", "--out", str(tmp / "run"),
                     "--cache-dir", str(tmp / "cache"), "--workers", "0", "--quiet"])
        assert code == 0
        out[family] = root, tmp / "run"
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_train_and_predict_with_a_transformers_folder(runs, family, tmp_path, cli):
    root, run = runs[family]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["backbone"].startswith(f"transformers:{family}@file:") and metrics["epochs_run"] == 2
    assert metrics["trainable_params"] == 2 * 2 * 4 * 32  # C x G prompts of M x W
    prompts = json.loads((run / "prompts.json").read_text())
    assert prompts["names"] == ["cat indoor", "cat outdoor", "dog indoor", "dog outdoor"]
    preds = tmp_path / "preds.csv"
    result = cli("predict", run, "--images", root / "pics", "--out", preds, "--workers", "0", "--quiet")
    assert result.code == 0, result.err
    with open(preds) as fh:
        rows = list(csv.DictReader(fh))
    images = len((root / "labels.csv").read_text().splitlines()) - 1
    assert len(rows) == images and all(r["error"] == "" and r["class"] in ("cat", "dog") for r in rows)
    assert all(abs(float(r["p_cat"]) + float(r["p_dog"]) - 1) < 1e-5 for r in rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_is_a_transformers_folder_the_readme_block_loads_and_equals_predict(runs, family, tmp_path, cli):
    """export writes the model with save_pretrained beside the head (SigLIP's logit bias in the head's
    rows); the README's transformers block, taken from README.md, gives what predict gives."""
    import os
    import subprocess
    import sys

    from safetensors import safe_open

    from groupcoop.runs.predict import Classifier
    from test_predict import readme_block

    root, run = runs[family]
    out = tmp_path / "new" / "classifier"
    result = cli("export", run, "--out", out)
    assert result.code == 0, result.err
    assert {"head.safetensors", "config.json", "model.safetensors", "preprocessor_config.json"} <= \
        {p.name for p in out.iterdir()}
    with safe_open(str(out / "head.safetensors"), framework="pt") as f:
        meta, has_bias = json.loads(f.metadata()["groupcoop"]), "bias" in f.keys()
    assert meta["library"] == "transformers" and meta["weights"] == "model.safetensors"
    assert has_bias == (family == "siglip")
    image = root / "pics" / "3.png"
    expected = Classifier.from_run(run).predict([image]).probabilities[0]
    assert abs(Classifier.from_run(out).predict([image]).probabilities[0] - expected).max() <= 1e-5
    snippet = readme_block("export-transformers")
    assert "import groupcoop" not in snippet and "from groupcoop" not in snippet  # transformers, torch, safetensors only
    (tmp_path / "classifier").symlink_to(out, target_is_directory=True)
    shutil.copy(image, tmp_path / "photo.png")
    (tmp_path / "snippet.py").write_text(snippet)
    code = f"import runpy; print(repr(runpy.run_path({str(tmp_path / 'snippet.py')!r})['probs'][0].tolist()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    got = eval(proc.stdout.strip().splitlines()[-1])
    assert max(abs(g - e) for g, e in zip(got, expected.tolist())) <= 1e-5
    weights = out / "model.safetensors"  # a changed model file is refused by its checksum
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    result = cli("predict", out, "--images", image, "--out", tmp_path / "p.csv", "--quiet")
    assert result.code == 2 and "sha256" in result.err and len(result.err.strip().splitlines()) == 1


def test_bad_transformers_backbones_are_one_line(folders, tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        load_backbone(f"transformers:{tmp_path}/missing")
    with pytest.raises(UserError, match="--pretrained does not apply"):
        load_backbone(f"transformers:{folders['clip']}", "random")
    other = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                   num_attention_heads=1, intermediate_size=8)).save_pretrained(other)
    with pytest.raises(UserError, match="is a bert model; groupcoop reads CLIPModel and SiglipModel"):
        load_backbone(f"transformers:{other}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load transformers:.*save_pretrained"):
        load_backbone(f"transformers:{tmp_path / 'empty'}")
