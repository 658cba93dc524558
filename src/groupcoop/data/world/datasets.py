"""A task's dataset: the scenes of every split, drawn from a seed, rendered on demand (`make_task_dataset`)."""

from __future__ import annotations

import numpy as np

from ...errors import UserError, close_matches
from ..base import SPLITS, GroupDataset, decode_group
from .attributes import ATTRIBUTES, FAMILIES, value_phrase
from .random_tasks import RANDOM_TASK_PREFIX, parse_random_task_name, random_task
from .render import Scene, SyntheticImages
from .tasks import TASKS, SyntheticTask

# In task images whose bias is the background, this share shows a shoreline of the other
# background value: zero-shot background prediction is then right most of the time, not always.
SHORE_PROBABILITY = 0.25


def get_task(task: str | SyntheticTask) -> SyntheticTask:
    """A built-in task by name, a random task by `synth-random:<seed>`, or the task itself."""
    if isinstance(task, SyntheticTask):
        return task
    if task in TASKS:
        return TASKS[task]
    seed = parse_random_task_name(task)
    if seed is None:
        raise UserError(
            f"unknown synthetic task '{task}'{close_matches(task, TASKS)}; choose one of: "
            f"{', '.join(TASKS)}, or {RANDOM_TASK_PREFIX}<seed>"
        )
    return random_task(seed)


def make_task_dataset(task_name: str | SyntheticTask, seed: int = 0):
    """The GroupDataset of a synthetic task; every split has exactly the task's group counts.

    `task_name` is a name in TASKS, `synth-random:<seed>` or a SyntheticTask. `seed` picks the
    dataset's draw of the free attributes and the images. Built-in tasks render with `seed`
    itself; a task with its own `render_seed` (a random task) renders with render_seed + seed,
    and mixes its render seed into the draw of the free attributes too.
    """
    task = get_task(task_name)
    sizes = [len(values) for _, values in task.biases]
    if task.render_seed is None:
        rng = np.random.default_rng([seed, 99])
        image_seed = seed
    else:
        rng = np.random.default_rng([seed, 99, task.render_seed])
        image_seed = task.render_seed + seed
    rows, ys, attrs, splits = [], [], [], []
    next_index = {s: 0 for s in SPLITS}
    for split, counts in task.counts.items():
        order = []
        for g, count in enumerate(counts):
            y, digits = decode_group(g, sizes)
            order += [(y, tuple(digits))] * count
        for k in rng.permutation(len(order)):
            y, digits = order[k]
            value = {attr: values[a] for (attr, values), a in zip(task.biases, digits)}
            family = task.classes[y]
            factors = {a: str(rng.choice(FAMILIES[family] if a == "shape" else values)) for a, values in ATTRIBUTES.items()}
            factors.update(value)
            shore = ""
            if "background" in value and rng.random() < SHORE_PROBABILITY:
                shore = str(rng.choice([b for b in dict(task.biases)["background"] if b != value["background"]]))
            rows.append(Scene(**factors, stream=split, index=next_index[split], shore=shore))
            next_index[split] += 1
            ys.append(y)
            attrs.append(digits)
            splits.append(SPLITS[split])
    info = {"description": task.description, "seed": seed}
    if task.render_seed is not None:
        info["render_seed"] = image_seed
    return GroupDataset(
        name=task.name,
        images=SyntheticImages(tuple(rows), image_seed),
        y=np.array(ys),
        attrs=np.array(attrs).reshape(len(ys), len(sizes)),
        split=np.array(splits),
        class_names=[_class_name(f) for f in task.classes],
        attribute_names=[attr for attr, _ in task.biases],
        attribute_values=[list(values) for _, values in task.biases],
        attribute_phrases=[[value_phrase(attr, v) for v in values] for attr, values in task.biases],
        info=info,
    )


def _class_name(family: str) -> str:
    return f"{family} shape"
