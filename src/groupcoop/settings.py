"""Settings: every value a run depends on, typed, frozen and validated once, before any work.

The CLI, a config file and the Python API all build the same `RunSettings`; from there it is
passed whole. A bad value is refused here with one line naming the key, the value and what is
valid. `RunSettings.dump()` is the resolved configuration written to a run's `config.yaml`;
loading that file with `--config` reproduces the run. This module imports no torch, so
`groupcoop --help` stays fast.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError, close_matches

GROUP_SOURCES = ("gt", "zeroshot", "kmeans", "pseudo")
PSEUDO_VARIANT_NAMES = ("selftrain", "selftrain_balanced", "calibrated", "recall", "kmeans", "gmm", "blend")
DEFAULT_PSEUDO_VARIANT = "recall"  # chosen on the dev suite (docs/defaults.md)
FEATURE_DTYPES = ("float32", "float16")
MAX_SEED = 2**32 - 1


# --- reusable field types ----------------------------------------------------------------------

def _no_bool(value):
    """YAML turns `true` into a bool, and Python counts bools as ints: refuse them as numbers."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def _text_list(value):
    """'a,b' or ['a', 'b'] -> ['a', 'b']; a lone string is one item, never its characters."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _phrase_lists(value):
    """'on land,on water;young,old' -> [['on land', 'on water'], ['young', 'old']]."""
    if isinstance(value, str):
        return [_text_list(attr) for attr in value.split(";") if attr.strip()]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [value]  # one attribute given as a flat list
    return value


Int = Annotated[int, BeforeValidator(_no_bool), Field(strict=True)]
Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
TextList = Annotated[list[Annotated[str, Field(strict=True, min_length=1)]], BeforeValidator(_text_list)]
PhraseLists = Annotated[list[TextList], BeforeValidator(_phrase_lists)]


class Frozen(BaseModel):
    """Base of every settings value: immutable, unknown keys refused, strings kept as strings."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


# --- turning pydantic's errors into one line ---------------------------------------------------

def _valid(model: type[BaseModel], name: str) -> str:
    """What a field accepts, in words: 'a number > 0', 'one of adamw, sgd', ..."""
    field = model.model_fields.get(name)
    if field is None:
        return ""
    annotation = field.annotation
    choices = getattr(annotation, "__args__", None) if getattr(annotation, "__origin__", None) is Literal else None
    if choices:
        return "one of " + ", ".join(str(c) for c in choices)
    bounds = []
    for meta in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sign} {getattr(meta, attr)}")
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(annotation, "")
    if not kind:
        text = str(annotation).replace("typing.", "")
        kind = "a list" if "list" in text else "text or null" if "str" in text else ""
    return " ".join([kind, " and ".join(bounds)]).strip()


def _leaf(model: type[BaseModel], loc: list[str]) -> tuple[type[BaseModel], str]:
    """The (nested) model and field name an error location points at."""
    for i, part in enumerate(loc[:-1]):
        field = model.model_fields.get(part)
        inner = [a for a in getattr(field.annotation, "__args__", (field.annotation,))] if field else []
        nested = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is None:
            return model, part
        model = nested
    return model, loc[-1] if loc else ""


def as_user_error(err: ValidationError, model: type[BaseModel], where: str, flag: str = "") -> UserError:
    """The first problem of a ValidationError as one line: where, key, value, what is valid.

    `flag` is the command-line flag the keys are given with (`--set`, `--option`): the line then
    names the key as the user typed it, `--set n_ctx=500`.
    """
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "(value)"
    leaf_model, name = _leaf(model, loc)
    if first["type"] == "extra_forbidden":
        known = list(leaf_model.model_fields)
        unknown = f"there is no {flag} {key}" if flag else f"has no setting '{key}'"
        return UserError(f"{where}{':' if flag else ''} {unknown}{close_matches(name, known)}; "
                         f"valid: {', '.join(known)}")
    if first["type"] == "missing":
        return UserError(f"{where} needs '{key}'; give it" + (f" with {flag} {key}=..." if flag else ""))
    message = first["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    value = first.get("input")
    shown = repr(value) if len(repr(value)) < 60 else type(value).__name__
    valid = _valid(leaf_model, name)
    named = f"{flag} {key}" if flag else key
    return UserError(f"{where}: {named}={shown} is not valid ({message})" + (f"; expected {valid}" if valid else ""))


def build(model: type[BaseModel], values: Any, where: str, flag: str = ""):
    """`model(**values)`, with any validation problem as one UserError line (see `as_user_error`)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of keys to values, not {type(values).__name__}")
    try:
        return model(**values)
    except ValidationError as err:
        raise as_user_error(err, model, where, flag) from None
    except TypeError as err:  # a key that is not a string
        raise UserError(f"{where}: {err}") from None


# --- grouping --------------------------------------------------------------------------------

class GroupingOptions(Frozen):
    """Where training groups come from, and the labelers' knobs.

    `source` None means "gt when the data has bias labels, else pseudo" and is resolved once,
    when the dataset is known (`resolved`).
    """

    source: Literal["gt", "zeroshot", "kmeans", "pseudo"] | None = None
    bias_prompts: PhraseLists | None = None  # value phrases per attribute, for zeroshot/pseudo
    clusters: Annotated[Int, Field(ge=2, le=1000)] | None = None  # kmeans clusters per attribute
    variant: Literal[PSEUDO_VARIANT_NAMES] = DEFAULT_PSEUDO_VARIANT  # the pseudo labeler's variant

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"source": value} if isinstance(value, str) else value

    def resolved(self, has_group_labels: bool) -> "GroupingOptions":
        if self.source is not None:
            return self
        return self.model_copy(update={"source": "gt" if has_group_labels else "pseudo"})


# --- a whole run -----------------------------------------------------------------------------

class RunSettings(Frozen):
    """One run: dataset, backbone, method with its hyper-parameters, groups, seed, device."""

    dataset: Annotated[str, Field(strict=True, min_length=1)]
    root: Annotated[str, Field(strict=True)] | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict, validate_default=True)  # defaults filled in
    backbone: Annotated[str, Field(strict=True, min_length=1)]
    pretrained: Annotated[str, Field(strict=True, min_length=1)] | None = None
    method: Annotated[str, Field(strict=True, min_length=1)]
    groups: GroupingOptions = Field(default_factory=GroupingOptions)
    seed: Annotated[Int, Field(ge=0, le=MAX_SEED)] = 0
    device: Annotated[str, Field(strict=True)] = "cpu"
    feature_dtype: Literal["float32", "float16"] = "float32"
    hyperparameters: dict[str, Any] = Field(default_factory=dict, validate_default=True)  # defaults filled in

    @model_validator(mode="before")
    @classmethod
    def _flat_group_keys(cls, value):
        """Older config files had `bias_prompts` and `clusters` at the top level."""
        if isinstance(value, dict) and ("bias_prompts" in value or "clusters" in value):
            value = dict(value)
            groups = value.get("groups")
            groups = {"source": groups} if isinstance(groups, str) or groups is None else dict(groups)
            for key in ("bias_prompts", "clusters"):
                if key in value:
                    groups[key] = value.pop(key)
            value["groups"] = {k: v for k, v in groups.items() if v is not None}
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value):
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", value):
            raise ValueError("use cpu, cuda, cuda:N or mps")
        return value

    @field_validator("root")
    @classmethod
    def _expand_root(cls, value):
        return None if value is None else str(Path(value).expanduser())

    @field_validator("dataset_options", mode="after")
    @classmethod
    def _options(cls, value, info):
        """The dataset's options, checked against its loader's schema, with defaults filled in."""
        from .data.registry import dataset_options, is_known

        name = info.data.get("dataset")
        return dataset_options(name, value) if name and is_known(name) else value

    @field_validator("hyperparameters", mode="after")
    @classmethod
    def _hyperparameters(cls, value, info):
        """The method's hyper-parameters, checked against its schema, with defaults filled in."""
        from .methods import get_method

        if "method" not in info.data:
            return value
        recipe = get_method(info.data["method"])
        return build(recipe.schema, value, f"method {recipe.name} hyper-parameters", flag="--set").model_dump()

    @property
    def params(self):
        """The method's typed hyper-parameters."""
        from .methods import get_method

        return get_method(self.method).params(self.hyperparameters)

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


# --- KEY=VALUE flags and config files -----------------------------------------------------------

def key_values(pairs: list[str] | None, flag: str) -> dict:
    """KEY=VALUE strings -> dict, values read as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise UserError(f"{flag} expects KEY=VALUE, got '{pair}'")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file holding a mapping, or one UserError line saying what is wrong with it."""
    import yaml

    from .files import read_text

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a YAML file")
    if not os.path.lexists(p):
        raise UserError(f"{what} not found: {p}")
    text = read_text(p, what, "give a YAML file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{what} {p} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {p} must hold a mapping of keys to values, not a {type(data).__name__}")
    if not all(isinstance(k, str) for k in data):
        raise UserError(f"{what} {p}: every key must be text")
    return data


CONFIG_KEYS = tuple(RunSettings.model_fields) + ("bias_prompts", "clusters")
