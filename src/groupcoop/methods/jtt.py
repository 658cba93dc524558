"""Just Train Twice on CoOp: an ERM run, then a second run with its training errors upsampled.

Both stages are runs of the training loop; `JTTRun` chains them behind the loop's step
interface, so a driver advances JTT like any other run.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field, StrictBool

from ..schema import Int
from .base import FitTask, Fitted, PromptParams, Recipe, prompts_fit
from .coop import class_prompts


class JTTParams(PromptParams):
    """Just Train Twice [Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang, Finn, ICML 2021]
    on CoOp: an ERM CoOp run of `first_epochs` epochs (its last epoch is kept, no model
    selection), then a fresh CoOp run on the training set with that run's misclassified
    examples upsampled `upweight` times (JTT's lambda_up; each error appears `upweight` times
    per epoch). No group labels are used for training; model selection of the second run uses
    the validation groups like every method. JTT's grid for lambda_up is {20, 50, 100}."""

    shared_ctx: StrictBool = True
    first_epochs: Annotated[Int, Field(ge=1, le=100_000)] = 5  # dev suite (docs/defaults.md)
    upweight: Annotated[Int, Field(ge=1, le=1000)] = 20  # dev suite, of {20, 100}


def jtt_repeats(head, train, upweight: int) -> tuple[np.ndarray, dict]:
    """JTT's upsampling: `upweight` copies of each training example the first model misclassifies, 1 otherwise."""
    errors = head.predict_classes(train.feats) != train.y
    repeats = np.where(errors, upweight, 1).astype(np.int64)
    return repeats, {"errors": int(errors.sum()), "error_rate": float(errors.mean()), "upweight": upweight}


class JTTRun:
    """The two stages as one run of the loop: when the first (ERM, last epoch kept) ends, the
    second starts on fresh prompts with the first's training errors upsampled."""

    def __init__(self, task: FitTask, hp: JTTParams):
        from .loop import Objective, loop_run

        self.task, self.hp = task, hp
        self.stage = loop_run(task, self._rows(), hp.model_copy(update={"epochs": hp.first_epochs}),
                              Objective("class", "natural"), keep="last")
        self.first, self.block = None, None

    def _rows(self):
        from .loop import prompt_rows

        return prompt_rows(self.task, class_prompts(self.hp, self.task.spec), self.hp)

    @property
    def rows(self):
        return self.stage.rows

    def start(self) -> None:
        self.task.log(f"  JTT: first (ERM) run, {self.hp.first_epochs} epoch(s)")
        self.stage.start()

    def next_batch(self) -> bool:
        return self.stage.next_batch()

    def loss(self, encoded):
        return self.stage.loss(encoded)

    def step(self) -> None:
        self.stage.step()

    def end_epoch(self) -> bool:
        if self.stage.end_epoch():
            return True
        if self.first is not None:
            return False
        from .loop import Objective, loop_run

        task, hp = self.task, self.hp
        self.first = self.stage.result()
        train = task.train
        repeats, self.block = jtt_repeats(self.first.model.head(task.n_classes, "max"), train, hp.upweight)
        names = task.spec.names()
        self.block["errors_per_group"] = {names[g]: int(n) for g, n in
                                          enumerate(np.bincount(train.groups[repeats > 1], minlength=task.spec.n_groups))}
        self.block["first_run_history"] = self.first.history
        task.log(f"  JTT: {self.block['errors']} training errors upsampled x{hp.upweight}; second run")
        self.stage = loop_run(task, self._rows(), hp, Objective("class", "natural"), repeats=repeats)
        self.stage.start()
        return True

    def fitted(self) -> Fitted:
        fitted = self.stage.fitted()
        fitted.extra = {"jtt": self.block, **fitted.extra}
        return fitted


JTT_ERROR_RATE = 0.1  # assumed training error rate of the first run, for the dry-run cost estimate


def jtt_epoch_sizes(hp: JTTParams, n_train: int) -> list[tuple[int, float]]:
    """The first run over the training set, then the second over it with its errors (assumed
    JTT_ERROR_RATE of it) appearing `upweight` times: its epochs are that much longer."""
    return [(hp.first_epochs, n_train), (hp.epochs, n_train * (1 + (hp.upweight - 1) * JTT_ERROR_RATE))]


JTT = Recipe("jtt", "Just Train Twice on CoOp: an ERM run's training errors upsampled in a second run",
             "prompt", "class", "none", JTTParams, "M*W (per run; 2 runs)", start=JTTRun,
             check=prompts_fit(class_prompts), epoch_sizes=jtt_epoch_sizes)
