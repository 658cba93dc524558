"""The backbone layer: the embedding-level text forward must be encode_text, for every family we claim."""

import json

import open_clip
import pytest
import torch

from groupcoop.backbones.families import TINY, load_backbone
from groupcoop.errors import UserError

TEXTS = ["a photo of a dog.", "x", "a much longer prompt, with several words and punctuation, to check the cut"]


def _assert_matches_encode_text(bb, texts=TEXTS):
    ids = bb.tokenize(texts)
    with torch.no_grad():
        reference = bb.model.encode_text(ids)
        for cut in (True, False):
            ours = bb.encode_text_embeddings(bb.token_embeddings(ids), bb.pool_positions(ids), cut=cut)
            assert (ours - reference).abs().max().item() <= 1e-5, f"{bb.name} cut={cut}"


@pytest.mark.parametrize("name", ["RN50", "RN101", "ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_embedding_path_equals_encode_text(name):
    _assert_matches_encode_text(load_backbone(name, "random"))


@pytest.fixture(scope="module")
def custom_text_configs(tmp_path_factory):
    """Small CustomTextCLIP configs (model.text layout) with each pooling type."""
    folder = tmp_path_factory.mktemp("configs")
    vision = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8}
    variants = {
        "test-custom-argmax": {},
        "test-custom-eos": {"pool_type": "eos", "eos_id": 49407},
        "test-custom-last-bidirectional": {"pool_type": "last", "no_causal_mask": True},
    }
    for name, extra in variants.items():
        text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, **extra}
        (folder / f"{name}.json").write_text(json.dumps({"embed_dim": 32, "custom_text": True,
                                                         "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(folder)
    return list(variants)


def test_custom_text_tower_layouts(custom_text_configs):
    for name in custom_text_configs:
        bb = load_backbone(name, "random")
        assert hasattr(bb.model, "text")
        _assert_matches_encode_text(bb)


def test_cut_shortens_the_sequence():
    bb = load_backbone(TINY)
    ids = bb.tokenize(["a red circle"])
    seen = {}

    def record(module, args):
        seen["len"] = args[0].shape[1]

    assert bb.fused_text
    hook = bb.text.transformer.resblocks[0].ln_1.register_forward_pre_hook(record)  # (N, L, D) in the fused path
    with torch.no_grad():
        bb.encode_text_embeddings(bb.token_embeddings(ids), bb.pool_positions(ids), cut=True)
    hook.remove()
    assert seen["len"] == int(bb.pool_positions(ids)[0]) + 1 < ids.shape[1]


@pytest.mark.parametrize("name", [TINY, "ViT-B-16"])
def test_fused_text_blocks_equal_open_clips_blocks_with_gradients(name):
    """The fused text blocks (training's default) give open_clip's outputs and context gradients."""
    from groupcoop.methods.prompts import PromptLearner

    bb = load_backbone(name, "random" if name != TINY else None)
    learner = PromptLearner(bb, ["angular shape on grass", "x", "a much longer name with a few more words"],
                            generator=torch.Generator().manual_seed(0))
    results = []
    for fused in (False, True):
        bb.fused_text = fused
        learner.ctx.grad = None
        out = learner()
        out.square().sum().backward()
        results.append((out.detach(), learner.ctx.grad.clone()))
    (out0, grad0), (out1, grad1) = results
    assert (out0 - out1).abs().max().item() <= 1e-5
    assert (grad0 - grad1).abs().max().item() <= 1e-5 * grad0.abs().max().item()


def test_tiny_loads_bundled_weights_and_is_frozen():
    bb = load_backbone(TINY)
    assert bb.identity.startswith(f"{TINY}@")
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert 5_000_000 < bb.parameter_count() < 10_000_000
    images = torch.zeros(2, 3, 32, 32)
    assert bb.encode_images(images).shape == (2, bb.embed_dim)


def test_random_weights_are_reproducible():
    a, b = load_backbone("RN50", "random"), load_backbone("RN50", "random")
    assert torch.equal(a.encode_text(["a dog"]), b.encode_text(["a dog"]))


@pytest.mark.parametrize("name,pretrained,expect", [
    ("ViT-B-61", "openai", "unknown backbone 'ViT-B-61' (did you mean: ViT-B-16"),
    ("ViT-B-32", "opneai", "unknown pretrained tag 'opneai' for ViT-B-32 (did you mean: openai"),
    ("ViT-B-32", "/nonexistent/weights.safetensors", "checkpoint file not found"),
    ("ViT-B-32", None, "needs --pretrained"),
])
def test_bad_backbone_input(name, pretrained, expect):
    with pytest.raises(UserError, match=expect.replace("(", r"\(").replace(".", r"\.")):
        load_backbone(name, pretrained)


def test_local_checkpoint_file_loads(tmp_path):
    from safetensors.torch import save_file

    bb = load_backbone(TINY)
    path = tmp_path / "copy.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(path))
    loaded = load_backbone(TINY, str(path))
    assert loaded.identity.startswith(f"{TINY}@file:")
    assert torch.allclose(loaded.encode_text(["a circle"]), bb.encode_text(["a circle"]))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    from safetensors.torch import save_file

    bb = load_backbone(TINY)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(path))
    with pytest.raises(UserError, match="does not fit architecture RN50"):
        load_backbone("RN50", str(path))


def test_sequence_first_text_blocks_keep_open_clips_numbers():
    """The backbone runs text blocks sequence-first for speed; an untouched open_clip model agrees."""
    from groupcoop.backbones.open_clip import tiny_weights_path

    bb = load_backbone(TINY)
    untouched = open_clip.create_model(TINY, pretrained=str(tiny_weights_path())).eval()
    assert untouched.transformer.batch_first and not bb.text.transformer.batch_first
    ids = bb.tokenize(TEXTS)
    with torch.no_grad():
        assert (untouched.encode_text(ids) - bb.encode_text(TEXTS)).abs().max().item() <= 1e-5


def test_unreachable_hub_is_one_clear_error(monkeypatch):
    """Offline, open_clip's download failure becomes a UserError that says what to do."""

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': cannot find the requested files")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(UserError, match="could not fetch the weights of ViT-B-32 openai: .*--pretrained FILE"):
        load_backbone("ViT-B-32", "openai")
    with pytest.raises(UserError, match="could not fetch the weights of hf-hub:org/model"):
        load_backbone("hf-hub:org/model")


# --- the family table ------------------------------------------------------------------------------

def test_every_family_is_reachable_by_its_own_names():
    """Names with a family's prefix go to it; every other name to the one family that takes the rest."""
    from groupcoop.backbones.families import FAMILIES, backbone_help, family_of

    rest = [f for f in FAMILIES if f.prefix is None]
    assert len(rest) == 1 and family_of(TINY) is rest[0]
    for family in FAMILIES:
        assert family.help in backbone_help()
        if family.prefix:
            assert family_of(family.prefix + "x") is family
    assert len({f.library for f in FAMILIES}) == len(FAMILIES)  # an export is read back by exactly one


def test_a_family_appended_to_the_table_is_loaded_listed_and_costed(monkeypatch, cli):
    """One entry in FAMILIES (here the bundled model under another name) is all a family needs: it
    loads by name, `groupcoop backbones` lists it, the --backbone help names it and the dry run costs it."""
    from types import SimpleNamespace

    from groupcoop.backbones import families
    from groupcoop.backbones.families import CostFacts, Family, backbone_help, cost_facts, describe_models
    from groupcoop.data.registry import dataset_facts
    from groupcoop.sweeps.cost import GPU_EFFECTIVE_TFLOPS, estimate, sweep_cost
    from groupcoop.sweeps.grid import Grid, expand

    name = "wrapped:tiny"
    wrapped = Family("wrapped", "wrapped:", "wrapped:<name> for the bundled model under another name",
                     load=lambda _, pretrained, device: load_backbone(TINY, pretrained, device),
                     load_export=lambda folder, info, device: load_backbone(TINY, device=device),
                     describe=lambda: SimpleNamespace(models=[name], pretrained=[(name, "bundled")], unusable={}),
                     library="wrapped", costs={name: CostFacts(image_gflops=100.0, text_gflops_per_token=0.01,
                                                              text_call_s=0.004)})
    monkeypatch.setattr(families, "FAMILIES", (*families.FAMILIES, wrapped))

    bb = load_backbone(name)
    assert bb.encode_text(["a photo of a dog."]).shape == load_backbone(TINY).encode_text(["x"]).shape
    assert name in describe_models().models and wrapped.help in backbone_help()
    assert backbone_help().endswith(", or " + wrapped.help)
    listing = cli("backbones")
    assert listing.code == 0 and f"{name} " in listing.out and "bundled" in listing.out
    assert cost_facts(name) == wrapped.costs[name] and cost_facts("wrapped:other") is None

    specs = expand(Grid(datasets=["waterbirds"], backbones=[name], methods=["coop"]))
    cost = sweep_cost(specs)
    images = dataset_facts("waterbirds")[0][0]
    assert not cost.unknown and cost.fused > 0
    assert cost.extraction == pytest.approx(images * 100.0 * 1e9 / (GPU_EFFECTIVE_TFLOPS * 1e12))
    assert "not in the estimate" not in estimate(specs)
