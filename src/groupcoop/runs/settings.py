"""Settings: every value a run depends on, typed, frozen and validated once, before any work.

The CLI, a config file and the Python API all build the same `RunSettings`; from there it is
passed whole. A bad value is refused here with one line naming the key, the value and what is
valid. `RunSettings.dump()` is the resolved configuration written to a run's `config.yaml`;
loading that file with `--config` reproduces the run. The method's `Recipe` and its typed
hyper-parameters are resolved once per settings value (`recipe`, `params`), and every stage
reads them from there. This module imports no torch, so `groupcoop --help` stays fast.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from ..choices import DEVICE_PATTERN, HIDEABLE_SPLITS, FeatureDtype, HideableSplit, Selection
from ..data.registry import dataset_options, is_known
from ..errors import UserError
from ..grouping.options import GroupingOptions
from ..methods import Recipe, get_method
from ..schema import Frozen, Seed, Text, build, shown_key, unknown_key
from .paths import absolute_paths


# --- a whole run -----------------------------------------------------------------------------

class RunSettings(Frozen):
    """One run: dataset, backbone, method with its hyper-parameters, groups, model selection, the
    bias labels it hides, seed, device."""

    dataset: Text
    root: Annotated[str, Field(strict=True)] | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict, validate_default=True)  # defaults filled in
    backbone: Text
    pretrained: Text | None = None
    method: Text
    groups: GroupingOptions = Field(default_factory=GroupingOptions)
    selection: Selection = "auto"  # how val selects the model (choices.Selection)
    hide_bias_labels: list[HideableSplit] = []  # splits whose bias labels are dropped right after loading
    seed: Seed = 0
    device: Annotated[str, Field(strict=True)] = "cpu"
    feature_dtype: FeatureDtype = "float32"
    hyperparameters: dict[str, Any] = Field(default_factory=dict, validate_default=True)  # defaults filled in

    @model_validator(mode="before")
    @classmethod
    def _paths_and_split_seed(cls, values):
        """Paths absolute (relative ones from the current folder: a config file's were made absolute from
        its own folder as it was read), and random splits seeded by the run's seed unless given."""
        if not isinstance(values, dict):
            return values
        try:
            values = absolute_paths(values, os.getcwd())
        except OSError:  # the current folder is gone: relative paths stay relative
            pass
        options = values.get("dataset_options")
        if isinstance(options, dict) and options.get("split_seed") is None and any(
                options.get(k) is not None for k in ("val_fraction", "test_fraction")):
            values = {**values, "dataset_options": {**options, "split_seed": values.get("seed", 0)}}
        return values

    @field_validator("device")
    @classmethod
    def _device(cls, value):
        if not re.fullmatch(DEVICE_PATTERN, value):
            raise ValueError("use cpu, cuda, cuda:N or mps")
        return value

    @field_validator("hide_bias_labels", mode="before")
    @classmethod
    def _hidden_splits(cls, value):
        """'train,val' or [train, val]; test always keeps its labels (it reports true groups)."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            if "test" in value:
                raise ValueError("the test split always keeps its bias labels, it reports true groups; "
                                 f"hide {' and/or '.join(HIDEABLE_SPLITS)}")
            if len(set(map(str, value))) != len(value):
                raise ValueError("a split is named twice")
        return value

    @field_validator("hide_bias_labels")
    @classmethod
    def _in_order(cls, value):
        return [s for s in HIDEABLE_SPLITS if s in value]

    @field_validator("root")
    @classmethod
    def _expand_root(cls, value):
        return None if value is None else str(Path(value).expanduser())

    @field_validator("dataset_options", mode="after")
    @classmethod
    def _options(cls, value, info):
        """The dataset's options, checked against its loader's schema, with defaults filled in."""
        name = info.data.get("dataset")
        return dataset_options(name, value) if name and is_known(name) else value

    @field_validator("hyperparameters", mode="after")
    @classmethod
    def _hyperparameters(cls, value, info):
        """The method's hyper-parameters, checked against its schema, with defaults filled in."""
        if "method" not in info.data:
            return value
        recipe = get_method(info.data["method"])
        where = f"method {recipe.name} hyper-parameters"
        check_hyperparameter_keys(value, [recipe.name], where, flag="--set")
        return build(recipe.schema, value, where, flag="--set").model_dump()

    @cached_property
    def recipe(self) -> Recipe:
        """The method, looked up once."""
        return get_method(self.method)

    @cached_property
    def params(self):
        """The method's typed hyper-parameters, built once (the values are frozen)."""
        return self.recipe.params(self.hyperparameters)

    def __getstate__(self) -> dict:
        """Pickled without the cached `recipe` and `params` (rebuilt on use; a recipe's check may be a closure)."""
        state = super().__getstate__()
        return {**state, "__dict__": {k: v for k, v in state["__dict__"].items() if k not in ("recipe", "params")}}

    def dump(self) -> dict:
        """The resolved configuration (plain YAML-able values)."""
        return self.model_dump(mode="json")

    def replace(self, **changes) -> "RunSettings":
        """A copy with some values changed, validated again."""
        return make_settings({**self.dump(), **changes}, "settings")


def make_settings(values: dict, where: str = "settings") -> RunSettings:
    """RunSettings from plain values; every problem becomes one UserError line."""
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of keys to values")
    for key in ("dataset", "backbone", "method"):
        if values.get(key) in (None, ""):
            raise UserError(f"missing --{key} (or `{key}:` in --config)")
    return build(RunSettings, values, where)


def check_hyperparameter_keys(values: dict, methods: list[str], where: str, flag: str = "") -> None:
    """The one check of hyper-parameter names, for `train --set` (one method) and a sweep's
    `--set` and grid `hyperparameters:` (each key for every method that has it): a key that none of
    `methods` has is refused with one line naming it and its close matches."""
    if not isinstance(values, dict):
        return  # not a mapping: the schema says so
    known = list(dict.fromkeys(k for m in methods for k in get_method(m).schema.model_fields))
    for key in values:
        if key not in known:
            raise unknown_key(where, str(key), known, flag)


# --- KEY=VALUE flags and config files -----------------------------------------------------------

def key_values(pairs: list[str] | None, flag: str) -> dict:
    """KEY=VALUE strings -> dict, values read as YAML scalars (numbers, booleans, lists); a value that
    is not YAML stays text, one past `parse_yaml`'s bounds is refused."""
    from ..errors import quoted
    from ..io.read import NotYaml, parse_yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise UserError(f"{flag} expects KEY=VALUE, got {quoted(pair)}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = parse_yaml(value, f"{flag} {shown_key(key.strip())}")
        except NotYaml:
            out[key.strip()] = value
    return out


CONFIG_KEYS = tuple(RunSettings.model_fields)
