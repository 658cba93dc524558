"""`groupcoop sweep --dry-run`'s cost estimate: a sweep's feature extraction and training on one GPU, by arithmetic.

The facts come from their owners: a dataset's size and shape from the dataset registry
(`data.registry.dataset_facts`), a backbone's FLOPs from its family (`backbones.families.cost_facts`),
a method's epochs from its recipe (`Recipe.loop_epochs`). What stays here are assumptions about
one GPU. No GPU was available to measure them (benchmarks/gpu.py measures what they stand for);
presets/paper/README.md says how to replace them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .grid import RunSpec

GPU_EFFECTIVE_TFLOPS = 50.0  # bf16 inference on an A100/H100-class GPU at a modest utilisation
GPU_DECODE_IMAGES_PER_S = 2000.0  # JPEG decoding + resizing with ~16 CPU workers
# Training: a step's text-encoder call costs a floor (the family's `text_call_s`: kernel launches; a
# few prompts hardly fill a GPU) plus its FLOPs; each run of the step adds its own work (its batch
# of cached features, loss, optimiser): a fused step of R runs and P prompts of L tokens costs
# text_call_s + P * L * text_gflops_per_token / GPU_TRAIN_TFLOPS + R * GPU_RUN_STEP_S.
GPU_TRAIN_TFLOPS = 25.0  # the text tower trains in fp32
GPU_RUN_STEP_S = 0.0005  # one run's own work in a step, launch-bound
PROMPT_TEXT_TOKENS = 8  # tokens of a prompt beside its n_ctx context vectors: [SOS], name words, '.', [EOS]


@dataclass
class TrainingCost:
    """What the cost model needs of one run of the training loop."""

    steps: int
    prompts: int  # 0: free vectors, no text encoder
    tokens: int


@dataclass
class SweepCost:
    """A sweep's estimated seconds on one GPU, and the (dataset, backbone) pairs left out of it."""

    extraction: float = 0.0
    alone: float = 0.0  # training, every run alone
    fused: float = 0.0  # training, the learned-prompt runs of each (dataset, backbone) fused
    unknown: set[str] = field(default_factory=set)  # 'dataset/backbone' of unknown size or FLOPs


def _training_cost(spec: RunSpec) -> TrainingCost | None:
    """The run's steps (each epoch of its examples / batch_size steps, for each run of the loop its
    recipe makes; no early stopping) and prompts; None for methods trained in one go, or a dataset
    of unknown size."""
    from ..data.registry import dataset_facts
    from ..methods import get_method
    from ..runs.fusion import fusable

    facts = dataset_facts(spec.data_key[0])
    recipe = get_method(spec.settings["method"])
    if facts is None or recipe.start is None:
        return None
    (_, n_train), (classes, groups) = facts
    hp = recipe.params(spec.settings["hyperparameters"])
    steps = sum(epochs * math.ceil(examples / hp.batch_size) for epochs, examples in recipe.loop_epochs(hp, n_train))
    if not fusable(recipe):
        return TrainingCost(steps, 0, 0)
    return TrainingCost(steps, classes * (groups if recipe.rows == "group" else 1), hp.n_ctx + PROMPT_TEXT_TOKENS)


def step_seconds(backbone: str, runs: list[TrainingCost]) -> float:
    """One training step of `runs` together (one text-encoder call for all their prompts)."""
    from ..backbones.families import cost_facts

    facts = cost_facts(backbone)
    prompts = [r for r in runs if r.prompts]
    text = facts.text_call_s + sum(r.prompts for r in prompts) * max(r.tokens for r in prompts) * \
        facts.text_gflops_per_token / (GPU_TRAIN_TFLOPS * 1e3) if prompts else 0.0
    return text + len(runs) * GPU_RUN_STEP_S


def fused_pass_seconds(backbone: str, runs: list[TrainingCost], max_prompts: int) -> float:
    """A fused pass as `fusion.drive_together` runs it: runs join while their prompts fit the cap and
    leave when their steps are done; between two such events every step costs the same."""
    queue, active, seconds = list(runs), [], 0.0
    while queue or active:
        while queue and (not active or sum(r.prompts for r, _ in active) + queue[0].prompts <= max_prompts):
            active.append((queue[0], queue[0].steps))
            queue.pop(0)
        steps = min(left for _, left in active)
        seconds += steps * step_seconds(backbone, [r for r, _ in active])
        active = [(r, left - steps) for r, left in active if left > steps]
    return seconds


def sweep_cost(specs: list[RunSpec], max_prompts: int | None = None) -> SweepCost:
    """Extraction once per (dataset, backbone), and training with every run alone and with the
    learned-prompt runs of each (dataset, backbone) fused, at most `max_prompts` prompts per call."""
    from ..backbones.families import cost_facts
    from ..data.registry import dataset_facts
    from ..runs.fusion import DEFAULT_MAX_PROMPTS

    cost = SweepCost()
    for key in {s.data_key for s in specs}:
        dataset, backbone = key[0], key[3]
        facts, flops = dataset_facts(dataset), cost_facts(backbone)
        if facts is None or flops is None:
            cost.unknown.add(f"{dataset}/{backbone}")
            continue
        n = facts[0][0]
        cost.extraction += max(n * flops.image_gflops * 1e9 / (GPU_EFFECTIVE_TFLOPS * 1e12),
                               n / GPU_DECODE_IMAGES_PER_S)
    by_data: dict[tuple, list[TrainingCost]] = {}
    for s in sorted(specs, key=lambda s: (s.data_key, s.method, s.groups, s.seed)):
        run = _training_cost(s) if cost_facts(s.data_key[3]) is not None else None
        if run is None:
            continue
        cost.alone += run.steps * step_seconds(s.data_key[3], [run])
        if run.prompts:
            by_data.setdefault(s.data_key, []).append(run)
        else:
            cost.fused += run.steps * step_seconds(s.data_key[3], [run])
    for key, runs in by_data.items():
        cost.fused += fused_pass_seconds(key[3], runs, max_prompts or DEFAULT_MAX_PROMPTS)
    return cost


def estimate(specs: list[RunSpec], fuse: bool = True, max_prompts: int | None = None) -> str:
    """A rough cost of a sweep on one GPU, in words: extraction once per (dataset, backbone) plus
    training, with the learned-prompt runs of each (dataset, backbone) fused (`fuse`) or each run alone."""
    cost = sweep_cost(specs, max_prompts)
    training = (f"training at most {duration(cost.fused)} with the learned-prompt runs of each (dataset, backbone) "
                f"fused ({duration(cost.alone)} run one by one)" if fuse else
                f"training at most {duration(cost.alone)} (every run alone, --no-fuse)")
    lines = [f"{len(specs)} runs over {len({s.data_key for s in specs})} (dataset, backbone) pairs",
             f"estimated on one GPU: feature extraction {duration(cost.extraction)}, {training}; every run's epochs "
             "(early stopping ends most runs sooner). These are assumptions, not measurements: see "
             "presets/paper/README.md"]
    if cost.unknown:
        lines.append(f"no size or FLOPs known for: {', '.join(sorted(cost.unknown))} (not in the estimate)")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """Seconds in the unit that shows them: hours from one hour, minutes from one minute, else seconds
    (a synthetic grid costs seconds, which "0.00 h" hid)."""
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    if seconds == 0:
        return "0 s"
    return f"{seconds:.1f} s" if seconds >= 0.1 else "under 0.1 s"
