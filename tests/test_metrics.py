"""Per-group accuracy and the summaries users compare methods by, on hand-made predictions."""

import numpy as np
import pytest

from groupcoop.metrics import format_group_table, group_accuracies, split_metrics


def make_preds(spec):
    """spec: per group (class y, n samples, n correct) -> pred, y, groups arrays (binary classes)."""
    pred, y, groups = [], [], []
    for g, (label, n, correct) in enumerate(spec):
        for i in range(n):
            y.append(label)
            pred.append(label if i < correct else 1 - label)
            groups.append(g)
    return np.array(pred), np.array(y), np.array(groups)


# Waterbirds-like: 4 groups, g = 2*y + background
WB = [(0, 4, 3), (0, 2, 1), (1, 5, 2), (1, 1, 1)]  # acc 3/4, 1/2, 2/5, 1/1 ; 12 samples, 7 correct
WB_NAMES = ["landbird, land", "landbird, water", "waterbird, land", "waterbird, water"]


def test_per_group_accuracy_and_counts():
    pred, y, groups = make_preds(WB)
    acc, counts = group_accuracies(pred, y, groups, 4)
    assert counts.tolist() == [4, 2, 5, 1]
    assert acc == pytest.approx([3 / 4, 1 / 2, 2 / 5, 1.0])

    m = split_metrics(pred, y, groups, WB_NAMES)
    assert [g["group"] for g in m["groups"]] == [0, 1, 2, 3]
    assert [g["name"] for g in m["groups"]] == WB_NAMES
    assert [g["n"] for g in m["groups"]] == [4, 2, 5, 1]
    assert [g["acc"] for g in m["groups"]] == pytest.approx([3 / 4, 1 / 2, 2 / 5, 1.0])


def test_average_worst_and_unbiased():
    pred, y, groups = make_preds(WB)
    m = split_metrics(pred, y, groups, WB_NAMES)
    assert m["avg_acc"] == pytest.approx(7 / 12)  # over samples
    assert m["worst_group_acc"] == pytest.approx(2 / 5)
    assert m["unbiased_acc"] == pytest.approx((3 / 4 + 1 / 2 + 2 / 5 + 1) / 4)  # mean over groups
    assert "empty_groups" not in m
    assert "train_weighted_acc" not in m


def test_train_weighted_average_uses_the_given_counts():
    pred, y, groups = make_preds(WB)
    train_counts = np.array([3498, 184, 56, 1057])  # Waterbirds' training groups
    m = split_metrics(pred, y, groups, WB_NAMES, train_counts=train_counts)
    expected = (3498 * 3 / 4 + 184 * 1 / 2 + 56 * 2 / 5 + 1057 * 1.0) / (3498 + 184 + 56 + 1057)
    assert m["train_weighted_acc"] == pytest.approx(expected)
    # other counts, other number: nothing is hard-coded
    other = split_metrics(pred, y, groups, WB_NAMES, train_counts=np.array([1, 1, 1, 1]))
    assert other["train_weighted_acc"] == pytest.approx(m["unbiased_acc"])


def test_empty_group_is_reported_not_dropped():
    spec = [(0, 4, 3), (0, 0, 0), (1, 5, 2), (1, 1, 1)]  # group 1 has no samples
    pred, y, groups = make_preds(spec)
    m = split_metrics(pred, y, groups, WB_NAMES, train_counts=np.array([10, 10, 10, 10]))
    assert len(m["groups"]) == 4
    assert m["groups"][1] == {"group": 1, "name": "landbird, water", "n": 0, "acc": None}
    assert m["empty_groups"] == [1]
    assert m["worst_group_acc"] == pytest.approx(2 / 5)  # the empty group is not a 0 and not a NaN
    assert m["unbiased_acc"] == pytest.approx((3 / 4 + 2 / 5 + 1) / 3)
    assert m["train_weighted_acc"] == pytest.approx((3 / 4 + 2 / 5 + 1) / 3)
    assert "empty" in format_group_table(m)


def test_multiceleba_extras_on_hand_made_example():
    # g = 4*y + Young + 2*Male. (class, n, correct) per group:
    spec = [
        (0, 2, 1),  # g0 acc 1/2
        (0, 1, 0),  # g1 acc 0
        (0, 4, 3),  # g2 acc 3/4
        (0, 1, 1),  # g3 acc 1
        (1, 2, 2),  # g4 acc 1
        (1, 5, 4),  # g5 acc 4/5
        (1, 2, 1),  # g6 acc 1/2
        (1, 1, 1),  # g7 acc 1
    ]
    pred, y, groups = make_preds(spec)
    names = [f"g{g}" for g in range(8)]
    train_counts = np.array([4, 1, 40, 4, 10, 80, 1, 10])  # sums to 150
    m = split_metrics(pred, y, groups, names, train_counts=train_counts, extra=["multiceleba"])

    assert m["avg_acc"] == pytest.approx(13 / 18)
    assert m["WORST"] == pytest.approx(0.0) and m["worst_group_acc"] == pytest.approx(0.0)
    unbiased = (0.5 + 0 + 0.75 + 1 + 1 + 0.8 + 0.5 + 1) / 8  # 5.55 / 8
    assert m["UNBIASED"] == pytest.approx(unbiased) and m["unbiased_acc"] == pytest.approx(unbiased)
    # InDist: accuracies weighted by the training distribution
    # 0.5*4 + 0*1 + 0.75*40 + 1*4 + 1*10 + 0.8*80 + 0.5*1 + 1*10 = 120.5
    assert m["InDist"] == pytest.approx(120.5 / 150)
    assert m["GG"] == pytest.approx((0.75 + 0.8) / 2)  # g2, g5: both biases aligned
    assert m["GC"] == pytest.approx((1 + 1) / 2)  # g3, g4
    assert m["CG"] == pytest.approx((0.5 + 1) / 2)  # g0, g7
    assert m["CC"] == pytest.approx((0 + 0.5) / 2)  # g1, g6: both biases conflicting


def test_multiceleba_extras_only_when_declared():
    pred, y, groups = make_preds([(g // 4, 2, 1) for g in range(8)])
    m = split_metrics(pred, y, groups, [f"g{g}" for g in range(8)])
    assert not {"WORST", "UNBIASED", "InDist", "GG", "GC", "CG", "CC"} & set(m)
