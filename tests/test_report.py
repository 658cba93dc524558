"""HTML reports (reports/), nearest tokens of learned prompts, and the quality additions
they show (confusion matrix, min recall). Metrics are built by hand, plus one 1-epoch run
on a few hundred synthetic images for the real metrics.json shape."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from groupcoop.grouping.quality import quality
from groupcoop.reports.html import write_html
from groupcoop.reports.run import run_report_html
from groupcoop.runs.demo import demo_html

EVIL = "<script>alert(1)</script>"


class Page(HTMLParser):
    """Section ids, <img> sources, start tags and text of a page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.sections, self.images, self.tags, self.text = [], [], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_data(self, data):
        self.text.append(data)


def check_page(text: str) -> Page:
    """Self-contained: images are decodable inline PNGs, no URL, no script or external resource."""
    assert text.startswith("<!DOCTYPE html>")
    page = Page(text)
    assert "http://" not in text and "https://" not in text
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not re.search(r"""src\s*=\s*["'](?!data:image/png;base64,)""", text)
    # links only to other pages of the same output: relative, no scheme (a sweep's run pages)
    assert not re.search(r"""href\s*=\s*["'](?![^"':]*report\.html["'])""", text)
    assert page.images, "expected at least one chart"
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(png)) as img:
            img.verify()
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100
    return page


def split_block(names, ns, accs, extra=None):
    groups = [{"group": i, "name": n, "n": k, "acc": a} for i, (n, k, a) in enumerate(zip(names, ns, accs))]
    present = [a for a in accs if a is not None]
    block = {"avg_acc": 0.9, "worst_group_acc": min(present), "unbiased_acc": float(np.mean(present)),
             "groups": groups, "gap": 0.9 - min(present)}
    block.update(extra or {})
    return block


NAMES = ["land bird, land", "land bird, water", EVIL, "water bird, water"]


def full_metrics() -> dict:
    t = np.array([0] * 50 + [1] * 10 + [2] * 8 + [3] * 40)
    p = t.copy()
    p[:3] = 1
    p[60:62] = 3
    return {
        "method": "groupcoop", "backbone": "groupcoop-tiny@abc", "dataset": "my <data> & co",
        "groups_source": "pseudo", "selection_groups": "true val groups",
        "report_groups": {"val": "true groups", "test": "true groups"},
        "trainable_params": 8192, "total_params": 8_000_000, "seed": 3,
        "hyperparameters": {"epochs": 4, "lr": 0.002, "ctx_init": "a photo of a", "note": EVIL,
                            "templates": ["a {}.", "x"]},
        "splits": {
            "val": split_block(NAMES, [40, 20, 10, 30], [0.95, 0.8, 0.7, 0.9], {"train_weighted_acc": 0.93}),
            "test": split_block(NAMES, [400, 0, 100, 300], [0.94, None, 0.65, 0.91],
                                {"train_weighted_acc": 0.92, "empty_groups": [1]}),
        },
        "best_epoch": 3, "epochs_run": 4,
        "history": [{"epoch": e, "loss": 1.0 / (e + 1), "val_worst_group_acc": 0.5 + 0.1 * e,
                     "val_avg_acc": 0.8 + 0.02 * e} for e in range(4)],
        "group_quality": quality(t, p, names=NAMES),
    }


TOKENS = [{"prompt": EVIL, "slots": [["a", "an", "the"], ["photo", "<b>", "pic"]],
           "distances": [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]},
          {"prompt": "water bird on water", "slots": [["x", "y", "z"], ["p", "q", "r"]]}]


# ---------------------------------------------------------------- labelers.quality additions


def test_quality_confusion_and_min_recall():
    t = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, -1])
    p = np.array([5, 5, 5, 7, 7, 7, 9, 9, 5, 9])
    q = quality(t, p)
    assert q["confusion"] == {"true": [0, 1, 2], "pred": [5, 7, 9], "matrix": [[3, 1, 0], [0, 2, 0], [1, 0, 2]]}
    assert q["min_recall"] == pytest.approx(min(g["recall"] for g in q["groups"])) == pytest.approx(2 / 3)
    assert sum(map(sum, q["confusion"]["matrix"])) == q["n"] == 9
    json.dumps(q)  # stays JSON-serialisable


# ---------------------------------------------------------------- run report


def test_run_report_has_every_section_and_is_self_contained():
    text = run_report_html(full_metrics(), TOKENS)
    page = check_page(text)
    assert page.sections == ["summary", "groups", "training", "pseudo-groups", "prompts"]
    assert len(page.images) == 3  # per-group bars, training curves, confusion heatmap
    # user strings are escaped: they appear as text, never as markup
    assert "&lt;script&gt;" in text and "<script" not in text
    assert "&lt;b&gt;" in text and "my &lt;data&gt; &amp; co" in text
    joined = "".join(page.text)
    assert EVIL in joined and "my <data> & co" in joined
    # headline numbers, the extra key, hyper-parameters, params, quality numbers
    for needle in ("train-weighted", "92.0", "93.0", "8,192", "ctx_init", "a photo of a",
                   "min per-group recall", "NMI", "ARI", "selected epoch", "nearest reading"):
        assert needle in joined, needle
    assert "no images in land bird, water" in joined  # the empty test group is named


def test_run_report_leaves_out_sections_without_input():
    metrics = full_metrics()
    for key in ("history", "group_quality", "best_epoch", "epochs_run"):
        del metrics[key]
    page = check_page(run_report_html(metrics))
    assert page.sections == ["summary", "groups"]
    assert len(page.images) == 1
    assert "training" not in page.sections and "prompts" not in page.sections


def test_run_report_on_older_quality_without_confusion():
    metrics = full_metrics()
    q = metrics["group_quality"]
    del q["confusion"], q["min_recall"]
    text = run_report_html(metrics)
    page = check_page(text)
    assert "pseudo-groups" in page.sections and len(page.images) == 2  # no heatmap without counts
    assert f"{100 * min(g['recall'] for g in q['groups']):.1f}" in text  # min recall from the groups


def test_write_html_is_atomic_and_complete(tmp_path):
    text = run_report_html(full_metrics())
    out = write_html(tmp_path / "sub" / "report.html", text)
    assert out.read_text() == text
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


# ---------------------------------------------------------------- demo report


def test_demo_report(tmp_path):
    from groupcoop.runs.demo import summarise

    runs = {}
    for m, method in enumerate(["zeroshot", EVIL]):
        for seed in range(2):
            metrics = full_metrics()
            metrics.update(method=method, seed=seed)
            for split in ("val", "test"):
                for g in metrics["splits"][split]["groups"]:
                    g["acc"] = 0.5 + 0.1 * m + 0.05 * seed + 0.01 * g["group"]
            runs[method] = runs.get(method, []) + [metrics]
    summary = json.loads(json.dumps(summarise(runs)))
    text = demo_html(summary)
    page = check_page(text)
    assert page.sections == ["comparison", "groups"]
    assert "&lt;script&gt;" in text and "<script" not in text
    joined = "".join(page.text)
    assert "±" in joined and "2 seeds" in joined
    assert "n=400" in joined  # group sizes next to the names
    write_html(tmp_path / "demo.html", text)


def demo_summary(wga: dict[str, float]) -> dict:
    """A demo summary with these test worst-group accuracies (one seed)."""
    from groupcoop.runs.demo import summarise, training_groups
    from groupcoop.methods import get_method

    runs = {}
    for method, worst in wga.items():
        metrics = full_metrics()
        metrics.update(method=method, needs_groups=get_method(method).needs_groups)
        for split in ("val", "test"):
            for g in metrics["splits"][split]["groups"]:
                g["acc"] = worst + 0.01 * g["group"]
        metrics["splits"]["test"]["worst_group_acc"] = worst
        runs[method] = [metrics]
    summary = json.loads(json.dumps(summarise(runs)))
    for entry in summary.values():
        entry["training_groups"] = training_groups(entry, {"a, x": 3498, "a, y": 184})
    return summary


def test_demo_report_opens_with_its_conclusion_and_shows_training_groups():
    summary = demo_summary({"zeroshot": 0.60, "coop": 0.20, "coop_balanced": 0.74, "dfr": 0.78, "groupcoop": 0.73})
    text = demo_html(summary)
    page = check_page(text)
    body = text.split("</header>", 1)[1]
    first = re.sub("<[^>]+>", "", body.strip().split("\n", 1)[0])
    assert first == ("On the test split dfr has the best worst-group accuracy, 78.0%, +18.0 points over zero-shot "
                     "(60.0%); next best coop_balanced (74.0%).")
    joined = " ".join(page.text)
    assert "3,498" in joined and "184" in joined  # the training split's group sizes
    methods = re.search(r"<h3>Methods</h3>(.*?)</table>", text, re.S).group(1)
    trained_on = dict(re.findall(r"<tr><td>([a-z_]+)</td><td>([^<]*)</td>", methods))
    assert trained_on == {"zeroshot": "none", "coop": "none", "dfr": "none", "coop_balanced": "pseudo",
                          "groupcoop": "pseudo"}
    assert "dfr: group labels on the validation split" in joined


def test_demo_conclusion_when_zero_shot_is_best():
    from groupcoop.runs.demo import conclusion

    line = conclusion(demo_summary({"zeroshot": 0.6, "coop": 0.2}))
    assert line.startswith("On the test split zeroshot has the best") and "over zero-shot" not in line


def test_demo_page_renders_the_sentences_it_is_given():
    from groupcoop.reports.demo import demo_report_html

    text = demo_report_html(demo_summary({"zeroshot": 0.6, "coop": 0.2}), "A <conclusion>.", "What they need: x.")
    assert '<p class="conclusion"><b>A &lt;conclusion&gt;.</b></p>' in text and "<p>What they need: x.</p>" in text


def test_one_percent_formatter():
    from groupcoop.reports.html import pct

    assert pct(0.8123, 0.0131) == "81.2 ± 1.3" and pct(0.8123) == "81.2"
    assert pct(float("nan"), 0.1) == pct(None) == "–" and pct(0.5, float("nan")) == "50.0"


def test_sweep_page_links_each_run_page():
    from groupcoop.reports.sweep import sweep_report_html

    rows = [{"dataset": "d<1>", "method": "coop", "groups": "-", "seed": s, "test_worst_group_acc": 0.5,
             "test_avg_acc": 0.7, "run_folder": f"runs/d_1/groupcoop-tiny/coop/-/seed-{s}"} for s in (0, 1)]
    text = sweep_report_html("grid", rows, "| method | d<1> |\n|---|---|\n| coop | 50.0 / 70.0 |")
    assert re.findall(r'href="([^"]+)"', text) == [f"runs/d_1/groupcoop-tiny/coop/-/seed-{s}/report.html"
                                                   for s in (0, 1)]
    assert "d&lt;1&gt;" in text and "<1>" not in text


# ---------------------------------------------------------------- nearest tokens


def test_nearest_tokens_of_an_initialised_prompt(tiny_backbone):
    from groupcoop.methods.prompts import PromptLearner, nearest_tokens

    learner = PromptLearner(tiny_backbone, ["cat", "dog"], n_ctx=4, init="a photo of a")
    out = nearest_tokens(learner, k=3)
    assert [e["prompt"] for e in out] == ["cat", "dog"]
    for entry in out:
        assert [s[0] for s in entry["slots"]] == ["a", "photo", "of", "a"]
        assert all(len(s) == 3 for s in entry["slots"])
        assert all(d[0] == pytest.approx(0.0, abs=1e-3) and d == sorted(d) for d in entry["distances"])
    shared = nearest_tokens(PromptLearner(tiny_backbone, ["cat", "dog"], n_ctx=4, init="a photo of a", shared=True), k=1)
    assert [e["prompt"] for e in shared] == ["shared context"]
    assert shared[0]["slots"] == [["a"], ["photo"], ["of"], ["a"]]


def test_token_text(tiny_backbone):
    ids = tiny_backbone.tokenize(["a photo of a"])[0][:6]
    assert tiny_backbone.token_text(ids) == ["<start_of_text>", "a", "photo", "of", "a", "<end_of_text>"]
    other = copy.copy(tiny_backbone)
    other.tokenizer = lambda texts: None  # a tokenizer without a vocabulary to read
    assert other.token_text([320, 1125]) == ["320", "1125"]


# ---------------------------------------------------------------- a real (tiny) run


@pytest.fixture(scope="module")
def mini_run(tiny_backbone):
    """groupcoop with pseudo groups, 1 epoch, on a 400-image slice of synth-waterbirds."""
    from groupcoop.data.world.datasets import make_task_dataset
    from groupcoop.data.world.render import SyntheticImages
    from groupcoop.runs.pipeline import check_run, prepare, run_method

    full = make_task_dataset("synth-waterbirds")
    keep = []
    for split, per_group in ((0, 50), (1, 20), (2, 20)):
        for g in range(full.n_groups):
            keep += list(np.flatnonzero((full.split == split) & (full.groups == g))[:per_group])
    keep = np.sort(np.array(keep))
    mini = dataclasses.replace(
        full, name="synth-mini", images=SyntheticImages(tuple(full.images.table[i] for i in keep), full.images.seed),
        y=full.y[keep], attrs=full.attrs[keep], split=full.split[keep])
    from groupcoop.runs.settings import make_settings

    prep = prepare(mini, tiny_backbone, progress=False)
    settings = make_settings({"dataset": "synth-mini", "backbone": "groupcoop-tiny", "method": "groupcoop",
                              "groups": "pseudo", "hyperparameters": {"epochs": 1}})
    run = run_method(prep, check_run(settings, mini, tiny_backbone)[1], log=lambda s: None)
    return run.metrics, run.learner


def test_report_of_a_real_run(mini_run):
    from groupcoop.methods.prompts import nearest_tokens

    metrics, learner = mini_run
    metrics = json.loads(json.dumps(metrics))  # as read back from metrics.json
    assert {"confusion", "min_recall"} <= set(metrics["group_quality"])
    tokens = nearest_tokens(learner, k=2)
    assert len(tokens) == len(learner.names) and all(len(e["slots"]) == learner.n_ctx for e in tokens)
    page = check_page(run_report_html(metrics, tokens))
    assert page.sections == ["summary", "groups", "training", "pseudo-groups", "prompts"]


# ---------------------------------------------------------------- report nits


def test_sweep_page_title_names_the_grid_once():
    from groupcoop.reports.sweep import sweep_report_html

    rows = [{"dataset": "d", "method": "coop", "groups": "-", "seed": 0, "test_worst_group_acc": 0.5,
             "test_avg_acc": 0.7}]
    default = sweep_report_html("sweep", rows, "| method | d |\n|---|---|\n| coop | 50.0 |")  # Grid's default name
    assert "<title>groupcoop sweep</title>" in default and "sweep sweep" not in default
    named = sweep_report_html("paper-waterbirds", rows, "| method | d |\n|---|---|\n| coop | 50.0 |")
    assert "<title>groupcoop sweep: paper-waterbirds</title>" in named


def _figures(monkeypatch, module: str) -> list:
    """Every matplotlib figure `module` turns into a PNG, kept for inspection."""
    import importlib

    kept = []
    target = importlib.import_module(module)
    real = target.png

    def keep(fig):
        kept.append(fig)
        fig.canvas.draw()  # ticks are placed on draw
        return real(fig)

    monkeypatch.setattr(target, "png", keep)
    return kept


def test_epoch_axes_have_whole_number_ticks(monkeypatch):
    figures = _figures(monkeypatch, "groupcoop.reports.run")
    check_page(run_report_html(full_metrics(), TOKENS))  # 4 epochs: matplotlib's default ticks are 1, 1.5, ...
    axes = [ax for fig in figures for ax in fig.axes if ax.get_xlabel() == "epoch"]
    assert len(axes) == 2  # training loss, validation accuracy
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_labeler_groups_show_by_name_in_a_report(monkeypatch):
    t = np.array([0] * 50 + [1] * 10 + [2] * 8 + [3] * 40)
    p = t.copy()
    p[:3] = 1
    labeler = ["bird, cluster 0", "bird, cluster 1", "fish, cluster 0", "fish, <cluster 1>"]
    metrics = full_metrics()
    metrics["group_quality"] = quality(t, p, names=NAMES, pred_names=labeler)
    assert [g["pred_name"] for g in metrics["group_quality"]["groups"]] == labeler
    assert metrics["group_quality"]["confusion"]["pred_names"] == labeler
    figures = _figures(monkeypatch, "groupcoop.reports.run")
    text = run_report_html(metrics)
    table = re.search(r'<section id="pseudo-groups">.*?</section>', text, re.S).group(0)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)
    assert "bird, cluster 1" in cells and "fish, &lt;cluster 1&gt;" in cells  # names, escaped, not ids
    heatmap = next(ax for fig in figures for ax in fig.axes if ax.get_xlabel().startswith("labeler group"))
    assert heatmap.get_xlabel() == "labeler group"
    assert sorted(label.get_text() for label in heatmap.get_xticklabels()) == sorted(labeler)
    json.dumps(metrics["group_quality"])  # metrics.json stays JSON


def test_demo_report_links_each_methods_run_folders():
    summary = demo_summary({"zeroshot": 0.60, "coop": 0.20, "groupcoop": 0.73})
    text = demo_html(summary)
    check_page(text)
    links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', text)
    seed = summary["coop"]["over_seeds"]["seeds"][0]  # the demo writes OUT/<method>/seed-<seed>/
    assert links == [(f"{m}/seed-{seed}/report.html", f"{m}/seed-{seed}") for m in ("zeroshot", "coop", "groupcoop")]


def test_epochs_csv_names_the_worst_part_as_metrics_json_does():
    from groupcoop.io.csv_safe import csv_text
    from groupcoop.runs.tracking import EPOCH_COLUMNS, epoch_rows

    history = [{"epoch": e, "loss": 0.5, "val_worst_class_acc": 0.6 + 0.1 * e, "val_avg_acc": 0.8} for e in range(2)]
    rows = epoch_rows({"history": history, "best_epoch": 2})
    assert [r["val_worst_class_acc"] for r in rows] == [h["val_worst_class_acc"] for h in history]
    assert all(r["val_worst_group_acc"] is None for r in rows)
    header = csv_text(rows, EPOCH_COLUMNS).splitlines()[0]
    assert '"val_worst_class_acc"' in header and '"val_worst_group_acc"' in header
    grouped = epoch_rows({"history": [{"epoch": 0, "loss": 1.0, "val_worst_group_acc": 0.4, "val_avg_acc": 0.7}]})
    assert grouped[0]["val_worst_group_acc"] == 0.4 and grouped[0]["val_worst_class_acc"] is None
