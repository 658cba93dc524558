"""The prompt learner: what it encodes, what it trains, and how it is saved and loaded."""

import numpy as np
import pytest
import torch

from groupcoop.backbones.families import load_backbone
from groupcoop.data.base import GroupDataset
from groupcoop.errors import UserError
from groupcoop.methods import GroupCoOpParams
from groupcoop.runs.pipeline import Prepared, check_run, run_method
from groupcoop.methods.prompts import PromptLearner, load_prompts
from groupcoop.runs.settings import make_settings

CLASSES = ["angular shape", "round shape"]


@pytest.fixture(scope="module")
def vit_b16():
    return load_backbone("ViT-B-16", "random")


def width(backbone) -> int:
    return backbone.token_width


@pytest.mark.parametrize("name", ["round shape", "angular shape on water"])
def test_context_initialised_from_phrase_reproduces_the_hand_written_prompt(tiny_backbone, name):
    learner = PromptLearner(tiny_backbone, [name], n_ctx=4, init="a photo of a")
    with torch.no_grad():
        learned = learner()
    written = tiny_backbone.encode_text([f"a photo of a {name}."])
    assert learned.shape == written.shape
    torch.testing.assert_close(learned, written, atol=1e-5, rtol=0)


def test_phrase_in_the_last_slots_of_a_longer_context(tiny_backbone):
    learner = PromptLearner(tiny_backbone, CLASSES, n_ctx=6, init="a photo of a",
                            generator=torch.Generator().manual_seed(0))
    phrase = tiny_backbone.token_embeddings(tiny_backbone.tokenize(["a photo of a"]))[0, 1:5]
    for p in range(len(CLASSES)):
        torch.testing.assert_close(learner.ctx[p, 2:], phrase)
        assert learner.ctx[p, :2].abs().max() < 0.2  # N(0, 0.02) before the phrase


@pytest.mark.parametrize("shared", [False, True])
def test_trainable_parameter_count(tiny_backbone, shared):
    names = ["a", "b", "c"]
    learner = PromptLearner(tiny_backbone, names, n_ctx=8, shared=shared)
    expected = (1 if shared else len(names)) * 8 * width(tiny_backbone)
    assert learner.trainable_parameters() == expected
    trainable = [p for p in learner.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == expected  # the frozen backbone adds nothing
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())


class _NoImages:
    """An image source that is never read (features are given directly)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def identity(self):
        return "none"

    def stamp(self, start, stop, verify=False):
        return ""


def test_groupcoop_on_vit_b16_reports_32768_trainable_params(vit_b16):
    # 2 classes x 2 groups, every group in every split; random features stand in for images
    groups = np.tile(np.repeat(np.arange(4), 2), 3)
    split = np.repeat(np.arange(3), 8)
    ds = GroupDataset(
        name="tiny-groups", images=_NoImages(len(groups)), y=groups // 2, attrs=(groups % 2)[:, None], split=split,
        class_names=CLASSES, attribute_names=["background"], attribute_values=[["grass", "water"]],
        attribute_phrases=[["{} on grass", "{} on water"]],
    )
    feats = torch.nn.functional.normalize(torch.randn(len(groups), vit_b16.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    prep = Prepared(ds, vit_b16, feats)
    settings = make_settings({"dataset": "tiny-groups", "backbone": "ViT-B-16", "method": "groupcoop",
                              "hyperparameters": {"epochs": 1, "batch_size": 64}})
    run = run_method(prep, check_run(settings, ds, vit_b16)[1], log=lambda s: None)
    metrics, learner = run.metrics, run.learner
    m = GroupCoOpParams().n_ctx  # the default number of context vectors
    assert metrics["trainable_params"] == 2 * 2 * m * 512
    assert tuple(learner.ctx.shape) == (4, m, 512)
    assert metrics["total_params"] == vit_b16.parameter_count() + 2 * 2 * m * 512


def _saved(tiny_backbone, tmp_path):
    learner = PromptLearner(tiny_backbone, [f"{c} on {b}" for c in CLASSES for b in ("grass", "water")], n_ctx=5,
                            generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        learner.ctx.add_(0.1 * torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(4)))
    learner.info.update({"classes": CLASSES, "method": "groupcoop"})
    learner.save(tmp_path)
    return learner


def test_save_load_round_trip_gives_identical_features(tiny_backbone, tmp_path):
    learner = _saved(tiny_backbone, tmp_path)
    loaded, meta = load_prompts(tmp_path, tiny_backbone, expect_classes=CLASSES)
    assert loaded.names == learner.names and loaded.n_ctx == 5 and meta["classes"] == CLASSES
    with torch.no_grad():
        assert torch.equal(loaded(), learner())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.json", "prompts.safetensors"]


@pytest.mark.parametrize("other", ["vit_b16", "tiny_random"])
def test_loading_on_another_backbone_is_refused(tiny_backbone, tmp_path, request, other):
    _saved(tiny_backbone, tmp_path)
    backbone = request.getfixturevalue("vit_b16") if other == "vit_b16" else load_backbone("groupcoop-tiny", "random")
    with pytest.raises(UserError, match="backbone") as err:
        load_prompts(tmp_path, backbone, expect_classes=CLASSES)
    assert tiny_backbone.identity in str(err.value) and backbone.identity in str(err.value)


def test_loading_for_another_class_list_is_refused(tiny_backbone, tmp_path):
    _saved(tiny_backbone, tmp_path)
    with pytest.raises(UserError, match="classes"):
        load_prompts(tmp_path, tiny_backbone, expect_classes=["landbird", "waterbird"])


def test_loading_from_a_folder_without_prompts_is_refused(tiny_backbone, tmp_path):
    with pytest.raises(UserError, match="no learned prompts"):
        load_prompts(tmp_path, tiny_backbone)


def test_fit_on_a_loaded_dataset_refuses_a_bad_context_before_extraction(monkeypatch):
    """groupcoop.fit goes through check_run for a GroupDataset too: prompt checks come before any image."""
    import groupcoop
    from groupcoop.runs import pipeline

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted before the refusal")

    monkeypatch.setattr(pipeline, "extract_features", no_extraction)
    dataset = groupcoop.load_dataset("synth-waterbirds")
    with pytest.raises(UserError, match="ctx_init 'a photo of a' has 4 tokens but n_ctx is 2"):
        groupcoop.fit(dataset, method="coop", config={"hyperparameters": {"n_ctx": 2}})
    with pytest.raises(UserError, match="kmeans clusters have no names"):
        groupcoop.fit(dataset, method="zeroshot_groups", groups="kmeans")


def test_several_learners_share_one_text_encoder_call(tiny_backbone):
    """What a driver of many runs does: concatenate the learners' prompt embeddings (padded to one
    length; a causal encoder ignores positions after each pooled token), encode once, split."""
    a = PromptLearner(tiny_backbone, ["round shape"], n_ctx=4, generator=torch.Generator().manual_seed(0))
    b = PromptLearner(tiny_backbone, ["angular shape on water", "x"], n_ctx=6, generator=torch.Generator().manual_seed(1))
    (xa, pa), (xb, pb) = a.prompt_embeddings(), b.prompt_embeddings()
    length = max(xa.shape[1], xb.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[1]))  # noqa: E731
    with torch.no_grad():
        together = tiny_backbone.encode_text_embeddings(torch.cat([pad(xa), pad(xb)]), torch.cat([pa, pb]))
        torch.testing.assert_close(together[:1], a(), atol=1e-5, rtol=0)
        torch.testing.assert_close(together[1:], b(), atol=1e-5, rtol=0)
