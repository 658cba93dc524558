"""Fused training: several runs of the training loop on one dataset and backbone in one pass,
with one text-encoder call (forward and backward) per step for all their prompts.

The runs stay what they are alone (`loop.LoopRun`, or a chain of them such as JTT's): each
keeps its own sampler, generator, optimiser, schedule, early stopping and model selection, and
each step's loss is its own loss on its own batch. Only the text encoder's work is shared: the
runs' prompt embeddings (`PromptLearner.prompt_embeddings`) are concatenated, encoded in one
call and split again. The runs' parameters are independent and every row of the text encoder
depends only on its own prompt, so each run gets the gradient it would get alone, and the
results equal those of training each alone up to float rounding (tests/test_fusion.py).

Prompts of different runs differ in length. On a backbone that `pads_freely` (a causal tower
pooling at the [EOS]: open_clip's CLIPs, transformers' CLIPModel) they are padded at the end to
the longest, which changes nothing before each prompt's [EOS]; elsewhere (SigLIP attends both
ways) only prompts of equal length share a call. A run that stops early leaves the pass, and
`max_prompts` bounds the prompts in the pass (its memory): a run joins when its prompts fit
beside those of the runs already training (one larger than the cap trains alone). Runs that are
not learned prompts (linear heads, free vectors) never need this: `fit_runs` trains them one
by one, as before. This module imports no torch at module level (the CLI reads its default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..methods import Fitted, Recipe

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PROMPTS = 256  # per text-encoder call; ViT-L-14's text tower needs ~25 MB per 24-token prompt in fp32


def fusable(recipe: Recipe) -> bool:
    """Whether a method's runs can share the text encoder: learned prompts trained by the loop."""
    return recipe.kind == "prompt" and recipe.start is not None


def encode_together(rows: list) -> list[torch.Tensor]:
    """Each `PromptRows`' text features, as its own `encode()` gives them, from one text-encoder call."""
    import torch
    import torch.nn.functional as F

    backbone = rows[0].learner.backbone
    parts = [r.learner.prompt_embeddings() for r in rows]
    length = max(x.shape[1] for x, _ in parts)
    if not backbone.pads_freely and any(x.shape[1] != length for x, _ in parts):
        raise ValueError(f"backbone {backbone.name} does not pad freely: only prompts of one length share a call")
    x = torch.cat([F.pad(x, (0, 0, 0, length - x.shape[1])) for x, _ in parts])
    out = backbone.encode_text_embeddings(x, torch.cat([pool for _, pool in parts]), cut=True)
    return list(out.split([len(pool) for _, pool in parts]))


def _call_key(rows) -> tuple:
    """Rows with equal keys share a text-encoder call: one backbone, and one length unless it pads freely."""
    learner = getattr(rows, "learner", None)
    if learner is None:  # free vectors: nothing to share
        return ("alone", id(rows))
    bb = learner.backbone
    return (id(bb), None if bb.pads_freely else learner.length)


@dataclass
class _Member:
    index: int
    run: Any
    started: float
    ready: bool = False  # holds this step's batch


def _advance(run) -> bool:
    """Draw the run's next batch, ending epochs (validation, selection) on the way; False when it is done."""
    while not run.next_batch():
        if not run.end_epoch():
            return False
    return True


def drive_together(makers: Iterable[Callable[[], Any]], finished: Callable[[int, Fitted, float], None],
                   max_prompts: int = DEFAULT_MAX_PROMPTS) -> None:
    """Advance the runs that `makers` make (each a run of the loop, not started) to their ends in one pass.

    Each step, every active run draws its batch; the runs' prompts go through the text encoder in
    as few calls as their backbone and lengths allow; each run's loss is backpropagated and its
    optimiser stepped. `finished(i, fitted, seconds)` gets run i's result as soon as it ends
    (early stopping included), with the seconds since it joined. A run is made and joins when its
    prompts fit beside the active runs' within `max_prompts` (or when none are active).
    """
    if max_prompts < 1:
        raise ValueError("max_prompts must be at least 1")
    queue = iter(enumerate(makers))
    waiting = None  # (index, run) made but not yet admitted
    active: list[_Member] = []

    def admit() -> None:
        nonlocal waiting
        while True:
            if waiting is None:
                nxt = next(queue, None)
                if nxt is None:
                    return
                waiting = (nxt[0], nxt[1]())
            index, run = waiting
            load = sum(m.run.rows.n_rows for m in active)
            if active and load + run.rows.n_rows > max_prompts:
                return
            run.start()
            active.append(_Member(index, run, time.perf_counter()))
            waiting = None

    while True:
        changed = True
        while changed:  # runs that end make room for waiting ones, which join this very step
            admit()
            changed = False
            for m in [m for m in active if not m.ready]:
                if _advance(m.run):
                    m.ready = True
                else:
                    active.remove(m)
                    finished(m.index, m.run.fitted(), time.perf_counter() - m.started)
                    changed = True
        if not active:
            return
        step_together([m.run for m in active])
        for m in active:
            m.ready = False


def step_together(runs: list) -> None:
    """One training step of runs that each hold their batch (`next_batch()` was True): their prompts
    through the text encoder in as few calls as backbone and lengths allow, each run's loss
    backpropagated, each optimiser stepped."""
    calls: dict[tuple, list] = {}
    for run in runs:
        calls.setdefault(_call_key(run.rows), []).append(run)
    for members in calls.values():
        rows = [run.rows for run in members]
        encoded = [rows[0].encode()] if len(rows) == 1 else encode_together(rows)
        sum(run.loss(e) for run, e in zip(members, encoded)).backward()
    for run in runs:
        run.step()


def fit_runs(prep, settings: list, log: Callable[[str], None] = print, fuse: bool = True,
             max_prompts: int = DEFAULT_MAX_PROMPTS,
             done: Callable[[int, Any, float], None] | None = None) -> list:
    """Train every run of `settings` (RunSettings as `pipeline.check_run` returns them) on one
    prepared dataset and backbone; returns their `Run`s in order.

    With `fuse`, the learned-prompt runs train together (`drive_together`), each logging with
    its method and seed in front; the others, and all of them without `fuse`, one by one.
    `done(i, run, seconds)` is called as each run finishes (a sweep writes its folder there).
    """
    from .pipeline import plan_run, run_method

    runs: list = [None] * len(settings)

    def finish(i: int, run, seconds: float) -> None:
        runs[i] = run
        if done is not None:
            done(i, run, seconds)

    together = [i for i, s in enumerate(settings) if fuse and fusable(s.recipe)]
    for i, s in enumerate(settings):
        if i not in together:
            start = time.perf_counter()
            finish(i, run_method(prep, s, log), time.perf_counter() - start)
    planned = {}

    def maker(i: int):
        def make():
            s = settings[i]
            planned[i] = plan_run(prep, s, lambda line, tag=f"[{s.method} seed {s.seed}]": log(f"{tag} {line}"))
            return planned[i].start()
        return make

    drive_together([maker(i) for i in together],
                   lambda k, fitted, seconds: finish(together[k], planned.pop(together[k]).finish(fitted), seconds),
                   max_prompts)
    return runs
