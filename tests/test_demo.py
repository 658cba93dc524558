"""`groupcoop demo`: its five methods on synth-waterbirds, and the effect it exists to show.

Features come from the session cache; training CoOp and GroupCoOp with their default
schedules still takes most of a minute on 2 CPU cores, hence the `slow` mark.
"""

import json

import pytest

from groupcoop.runs.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory, waterbirds_prep):
    out = tmp_path_factory.mktemp("demo") / "demo"
    summary = run_demo(out, seeds=1, progress=False, log=lambda s: None)
    return out, summary


@pytest.mark.slow
def test_demo_writes_summary_with_the_metrics_json_shape(demo, check_metrics):
    out, returned = demo
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["zeroshot", "coop", "coop_balanced", "dfr", "groupcoop"]
    assert summary == json.loads(json.dumps(returned))
    for method, metrics in summary.items():
        check_metrics(metrics, n_groups=4)
        assert metrics["method"] == method
        assert metrics["dataset"] == "synth-waterbirds"
        assert metrics["backbone"].startswith("groupcoop-tiny")
        assert metrics["over_seeds"]["seeds"] == [0]
    assert summary["zeroshot"]["trainable_params"] == 0
    from groupcoop.methods import CoOpParams, GroupCoOpParams

    width = summary["coop"]["trainable_params"] // CoOpParams().n_ctx  # one shared context of M x W
    assert width > 0 and summary["coop"]["trainable_params"] == CoOpParams().n_ctx * width
    assert summary["groupcoop"]["trainable_params"] == 2 * 2 * GroupCoOpParams().n_ctx * width  # C x G prompts
    assert (out / "report.txt").read_text().startswith("test split")
    assert (out / "report.png").is_file()
    for method in summary:
        assert (out / method / "seed-0" / "metrics.json").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["demo"]  # no temp folder left


@pytest.mark.slow
def test_demo_says_what_each_method_trained_on(demo, waterbirds_prep):
    out, summary = demo
    counts = dict(zip(waterbirds_prep.dataset.group_names(), waterbirds_prep.dataset.group_counts("train").tolist()))
    for method in ("zeroshot", "coop", "dfr"):
        assert summary[method]["training_groups"] == "none"
    for method in ("coop_balanced", "groupcoop"):
        assert summary[method]["training_groups"] == {"source": "gt", "sizes": counts}
    report = (out / "report.txt").read_text()
    assert "has the best worst-group accuracy" in report and "dfr: group labels on the validation split" in report
    assert "has the best worst-group accuracy" in (out / "report.html").read_text().split("</header>")[1][:400]


@pytest.mark.slow
def test_demo_shows_groupcoop_lifting_the_worst_group(demo):
    _, summary = demo
    worst = {m: summary[m]["splits"]["test"]["worst_group_acc"] for m in summary}
    coop_avg = summary["coop"]["splits"]["test"]["avg_acc"]
    assert worst["groupcoop"] >= worst["coop"] + 0.10, worst
    assert worst["groupcoop"] >= worst["zeroshot"] + 0.05, worst
    assert worst["coop"] <= coop_avg - 0.10, (worst["coop"], coop_avg)  # CoOp's average hides its worst group
