"""Bias vocabularies: attribute names -> value phrases, the candidates bias discovery (discovery.py) scores.

A vocabulary is a YAML file `{attributes: {name: [phrase, ...]}}`, optionally with `extends:
clip|world` to add to (or replace attributes of) a shipped one (`vocabularies/*.yaml`); "{}" in a
phrase is where the class name goes (a phrase without one gets it in front).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ..io.read import read_yaml_mapping
from ..schema import MAX_VALUES, MAX_VOCABULARY_ATTRIBUTES, Frozen, Phrase, build

SHIPPED = {"clip": "vocabularies/clip.yaml", "world": "vocabularies/world.yaml"}


class VocabularyFile(Frozen):
    """What a vocabulary file holds."""

    extends: Literal[tuple(SHIPPED)] | None = None
    attributes: Annotated[dict[Annotated[str, Field(strict=True, min_length=1)],
                               Annotated[list[Phrase], Field(min_length=2, max_length=MAX_VALUES)]],
                          Field(min_length=1, max_length=MAX_VOCABULARY_ATTRIBUTES)]

    @field_validator("attributes")
    @classmethod
    def _distinct(cls, value):
        for name, phrases in value.items():
            normalised = [with_slot(p) for p in phrases]
            if len(set(normalised)) != len(normalised):
                raise ValueError(f"attribute {name} lists a value twice")
        return value


@dataclass(frozen=True)
class Vocabulary:
    name: str  # where it came from, for reports: "world (shipped)" or the file's path
    attributes: dict[str, tuple[str, ...]]  # name -> value phrases, each with "{}"


def with_slot(phrase: str) -> str:
    """A value phrase with "{}" where the class name goes ("on water" -> "{} on water", as apply_phrase reads it)."""
    phrase = phrase.strip()
    return phrase if "{}" in phrase else f"{{}} {phrase}"


def value_name(phrase: str) -> str:
    """A value's short name from its phrase: "{} on water" -> "on water"."""
    return " ".join(phrase.replace("{}", " ").split()) or phrase


def _read(path: Path, what: str) -> VocabularyFile:
    return build(VocabularyFile, read_yaml_mapping(path, what), f"{what} {path}")


def shipped_path(name: str) -> Path:
    """The file of a vocabulary that ships inside the package."""
    from importlib import resources

    return Path(str(resources.files("groupcoop") / SHIPPED[name]))


def load_vocabulary(path: str | Path | None = None, dataset=None) -> Vocabulary:
    """A vocabulary file (or, with no path, the shipped one for the dataset: `world` for the
    synthetic world, `clip` otherwise); a bad file is one UserError line."""
    if path is None:
        name = default_vocabulary(dataset)
        shipped = shipped_path(name)
        return Vocabulary(f"{name} (shipped)", _attributes(_read(shipped, "shipped vocabulary")))
    path = Path(path).expanduser()
    given = _read(path, "vocabulary file")
    attributes = {}
    if given.extends:
        attributes = _attributes(_read(shipped_path(given.extends), "shipped vocabulary"))
    attributes.update(_attributes(given))
    return Vocabulary(str(path) + (f" (extends {given.extends})" if given.extends else ""), attributes)


def _attributes(vocabulary: VocabularyFile) -> dict[str, tuple[str, ...]]:
    return {name: tuple(with_slot(p) for p in phrases) for name, phrases in vocabulary.attributes.items()}


def default_vocabulary(dataset) -> str:
    """The shipped vocabulary a dataset uses by default: `world` for synthetic tasks, `clip` otherwise."""
    from ..data.world.render import SyntheticImages

    return "world" if dataset is not None and isinstance(dataset.images, SyntheticImages) else "clip"
