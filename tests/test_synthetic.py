"""The synthetic world: deterministic renders, exact group counts, and a tiny CLIP that knows the world."""

import pytest
import torch

from groupcoop.backbones.families import TINY, load_backbone
from groupcoop.data.world.attributes import family_of
from groupcoop.data.world.datasets import make_task_dataset
from groupcoop.data.world.pretraining import sample_pretraining_batch
from groupcoop.data.world.tasks import TASKS


def test_same_seed_renders_identical_bytes():
    a = make_task_dataset("synth-waterbirds", seed=3).images
    b = make_task_dataset("synth-waterbirds", seed=3).images
    for i in (0, 17, 4000):
        assert a.array(i).tobytes() == b.array(i).tobytes()
    other = make_task_dataset("synth-waterbirds", seed=4).images
    assert a.array(0).tobytes() != other.array(0).tobytes()
    img1, cap1 = sample_pretraining_batch(0, 5, 4)
    img2, cap2 = sample_pretraining_batch(0, 5, 4)
    assert img1.tobytes() == img2.tobytes() and cap1 == cap2


@pytest.mark.parametrize("task", list(TASKS))
def test_tasks_have_exact_group_counts(task):
    ds = make_task_dataset(task)
    for split, counts in TASKS[task].counts.items():
        assert ds.group_counts(split).tolist() == list(counts)
    assert ds.has_group_labels and ds.n_groups == 2 * 2 ** len(TASKS[task].biases)


def test_waterbirds_task_uses_waterbirds_counts():
    ds = make_task_dataset("synth-waterbirds")
    assert ds.group_counts("train").tolist() == [3498, 184, 56, 1057]
    assert ds.group_counts("val").tolist() == [467, 466, 133, 133]
    assert ds.group_counts("test").tolist() == [2255, 2255, 642, 642]


def test_task_images_show_their_attributes():
    ds = make_task_dataset("synth-multiceleba")
    table = ds.images.table
    for i in range(0, len(table), 997):
        scene = table[i]
        assert family_of(scene.shape) + " shape" == ds.class_names[ds.y[i]]
        assert scene.background == ds.attribute_values[0][ds.attrs[i, 0]]
        assert scene.colour == ds.attribute_values[1][ds.attrs[i, 1]]


def test_class_names_are_weak_zero_shot_but_background_is_easy():
    """The world's point: zero-shot class prompts lean on the background; the background itself is easy."""
    bb = load_backbone(TINY)
    ds = make_task_dataset("synth-waterbirds")
    rows = ds.split_indices("test")[:800]
    batch = torch.stack([bb.preprocess(ds.images.load(i)) for i in rows])
    feats = bb.encode_images(batch, normalize=True)
    text = bb.encode_text([f"a photo of a {c}." for c in ds.class_names], normalize=True)
    pred = (feats @ text.T).argmax(1).numpy()
    groups, y = ds.groups[rows], ds.y[rows]
    accs = [float((pred[groups == g] == y[groups == g]).mean()) for g in range(4)]
    assert min(accs) < 0.9 < max(accs)
    bg = bb.encode_text([f"a circle on {b}" for b in ds.attribute_values[0]], normalize=True)
    bg_pred = (feats @ bg.T).argmax(1).numpy()
    assert float((bg_pred == ds.attrs[rows, 0]).mean()) > 0.9
