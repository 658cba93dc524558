"""The schema toolkit: typed, frozen settings values and their errors as one line.

Every options class (a run's settings, a method's hyper-parameters, a dataset loader's
options, a sweep grid) is a `Frozen` model built with `build`, which turns pydantic's
validation errors into one `UserError` line naming the key, the value and what is valid.
A leaf module: it imports nothing of groupcoop but `errors`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .errors import UserError, close_matches, quoted

MAX_SEED = 2**32 - 1
# bias phrases (a vocabulary, --bias-prompts, a CSV dataset's attr_values / attr_phrases): groups are
# classes x the product of the attributes' sizes, and every phrase is a text the encoder reads
MAX_VOCABULARY_ATTRIBUTES = 256  # a vocabulary's attributes (a run uses at most --discover-top of them)
MAX_BIAS_ATTRIBUTES = 16  # attributes given for one dataset
MAX_VALUES = 64  # values (phrases) of one attribute
MAX_PHRASE_CHARS = 300  # one phrase (CLIP reads 77 tokens)


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


def _distinct_phrases(lists):
    """Refuse an attribute that lists a value twice ('on land' and ' on  land', or 'on land' and
    '{} on land'): two groups would share one phrase and one of them could never be assigned."""
    for values in lists:
        seen = set()
        for phrase in values:
            key = " ".join(phrase.split())
            key = key if "{}" in key else "{} " + key  # apply_phrase puts a phrase without {} after the class
            if key in seen:
                raise ValueError(f"{quoted(phrase)} is listed twice for one attribute; give each value once")
            seen.add(key)
    return lists


def _number_list(value):
    """'0.1,1' or [0.1, 1] -> [0.1, 1] (YAML reads '--set c_values=0.1,1' as one string)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


Int = Annotated[int, BeforeValidator(_no_bool), Field(strict=True)]
Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
Text = Annotated[str, Field(strict=True, min_length=1)]
TextList = Annotated[list[Annotated[str, Field(strict=True, min_length=1)]], BeforeValidator(_text_list)]
Phrase = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_PHRASE_CHARS)]
PhraseList = Annotated[list[Phrase], BeforeValidator(_text_list), Field(max_length=MAX_VALUES)]
PhraseLists = Annotated[list[PhraseList], BeforeValidator(_phrase_lists), Field(max_length=MAX_BIAS_ATTRIBUTES),
                        AfterValidator(_distinct_phrases)]
PositiveList = Annotated[list[Annotated[Number, Field(gt=0, le=1e6)]], BeforeValidator(_number_list),
                         Field(min_length=1)]
Seed = Annotated[Int, Field(ge=0, le=MAX_SEED)]


class Frozen(BaseModel):
    """Base of every settings value: immutable, unknown keys refused, strings kept as strings."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class NoOptions(Frozen):
    """The options of something that takes none."""


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
    item = (getattr(annotation, "__args__", None) or [None])[0] if getattr(annotation, "__origin__", None) is list else None
    if getattr(item, "__origin__", None) is Literal:
        return "a list of " + ", ".join(str(c) for c in item.__args__)
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
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        inner = [a for a in getattr(field.annotation, "__args__", (field.annotation,))] if field else []
        nested = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is None:
            return model, part
        model = nested
    return model, loc[-1] if loc else ""


def _plain(loc) -> list[str]:
    """An error location without pydantic's union branch tags ("literal['auto']", "function-after[...]")."""
    return [str(p) for p in loc if not (isinstance(p, str) and "[" in p)]


def as_user_error(err: ValidationError, model: type[BaseModel], where: str, flag: str = "") -> UserError:
    """The first problem of a ValidationError as one line: where, key, value, what is valid.

    `flag` is the command-line flag the keys are given with (`--set`, `--option`): the line then
    names the key as the user typed it, `--set n_ctx=500`.
    """
    errors = err.errors()
    first = errors[0]
    if first["type"] == "literal_error":  # a union (`auto` or a list) fails on each branch: say the one meant
        first = next((e for e in errors[1:] if _plain(e["loc"])[:len(_plain(first["loc"]))] == _plain(first["loc"])),
                     first)
    loc = _plain(first["loc"])
    typed = ".".join(loc)
    key = shown_key(typed) or "(value)"
    leaf_model, name = _leaf(model, loc)
    if first["type"] == "extra_forbidden":
        return unknown_key(where, typed, list(leaf_model.model_fields), flag, name)
    if first["type"] == "missing":
        return UserError(f"{where} needs '{key}'; give it" + (f" with {flag} {key}=..." if flag else ""))
    message = first["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    shown = quoted(first.get("input"))  # a short prefix: never the whole of a huge or deeply shared value
    valid = _valid(leaf_model, name)
    named = f"{flag} {key}" if flag else key
    return UserError(f"{where}: {named}={shown} is not valid ({message})" + (f"; expected {valid}" if valid else ""))


def shown_key(key: str) -> str:
    """A key a user typed, as an error line shows it: as typed when printable and short, else quoted
    and cut (a newline or a megabyte in a key never reaches the message)."""
    return key if key.isprintable() and len(key) <= 60 else quoted(key)


def unknown_key(where: str, key: str, known: list[str], flag: str = "", name: str | None = None) -> UserError:
    """The one line for a key that is not a setting: where, the key as typed (`--set epcohs`), the
    close matches of its last part `name` and every valid key."""
    key = shown_key(key)
    unknown = f"there is no {flag} {key}" if flag else f"has no setting '{key}'"
    return UserError(f"{where}{':' if flag else ''} {unknown}{close_matches(name or key, known)}; "
                     f"valid: {', '.join(known)}")


def build(model: type[BaseModel], values: Any, where: str, flag: str = "", context: dict | None = None):
    """`model(**values)`, with any validation problem as one UserError line (see `as_user_error`);
    `context` reaches the model's validators (`ValidationInfo.context`)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of keys to values, not {type(values).__name__}")
    try:
        return model.model_validate(values, context=context) if context is not None else model(**values)
    except ValidationError as err:
        raise as_user_error(err, model, where, flag) from None
    except TypeError as err:  # a key that is not a string
        raise UserError(f"{where}: {err}") from None
