"""The grouping settings of a run (`groups:` in a config, --groups/--variant/... on the command line).

The choices come from the tables that own them (labelers.py's `LABELERS`, pseudo.py's
`PSEUDO_VARIANTS`, labelfree.py's defaults); nothing here imports scikit-learn, so settings are
checked before anything heavy loads.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_serializer, model_validator

from ..choices import AUTO, DiscoveryScore
from ..errors import UserError
from ..schema import Frozen, Int, PhraseLists, Text
from .labelers import FILE_SOURCE, GROUP_SOURCES
from .labelfree import DISCOVER_TOP, DISCOVERY_SCORE
from .pseudo import DEFAULT_PSEUDO_VARIANT, PSEUDO_VARIANTS


class GroupingOptions(Frozen):
    """Where training groups come from (a labeler of `LABELERS`), and the labelers' knobs.

    `source` None means "gt when the training split has bias labels, else pseudo" and is
    resolved once, when the dataset is known (`plan.resolve_grouping`). `bias_prompts: auto`
    takes the labeler's attributes from bias discovery (discovery.py): at most `discover_top`
    candidates of `vocabulary` (default: the shipped one for the dataset) ranked by
    `discover_score`; with it, `source` None means pseudo. `source: file` reads the training groups
    from `file` (from_file.py; `--groups file:PATH` says both at once).
    """

    source: Literal[(*GROUP_SOURCES, FILE_SOURCE)] | None = None
    file: Text | None = None  # source file: the groups file (a groups.csv), matched to the images by path
    bias_prompts: Literal[AUTO] | PhraseLists | None = None  # value phrases per attribute, for zeroshot/pseudo
    clusters: Annotated[Int, Field(ge=2, le=1000)] | None = None  # clusters per attribute of an unnamed labeler (kmeans)
    variant: Literal[tuple(PSEUDO_VARIANTS)] = DEFAULT_PSEUDO_VARIANT  # the pseudo labeler's variant
    discover_top: Annotated[Int, Field(ge=1, le=8)] = DISCOVER_TOP  # bias_prompts auto: attributes kept at most
    discover_score: DiscoveryScore = DISCOVERY_SCORE  # bias_prompts auto: how candidates are ranked
    vocabulary: Text | None = None  # bias_prompts auto: a vocabulary YAML file (default: the shipped one)
    name_attribute: Text | None = None  # bias_prompts auto: "NAME=A,B", names for the unnamed attribute (unnamed.py)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        """`pseudo` for {source: pseudo}; `file:PATH` for {source: file, file: PATH}."""
        value = {"source": value} if isinstance(value, str) else value
        source = value.get("source") if isinstance(value, dict) else None
        if isinstance(source, str) and source.startswith(FILE_SOURCE + ":"):
            value = {**value, "source": FILE_SOURCE, "file": source.split(":", 1)[1].strip() or None}
        return value

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Without `file` or `name_attribute` where there is none: a run's config.yaml and metrics.json stay as
        they were."""
        data = handler(self)
        for key in ("file", "name_attribute"):
            if getattr(self, key) is None and isinstance(data, dict):
                data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _file(self):
        """A groups file goes with `source: file`, and that source with a file."""
        if self.source == FILE_SOURCE and self.file is None:
            raise UserError("--groups file needs the file: --groups file:groups.csv (written by `groupcoop groups`)")
        if self.file is not None and self.source != FILE_SOURCE:
            raise UserError(f"groups file {self.file} is read with --groups file:PATH, not with --groups "
                            f"{self.source or '(default)'}; drop one of them")
        return self

    @model_validator(mode="after")
    def _name(self):
        """A name for the unnamed attribute parses, and goes with discovery (where one is found)."""
        if self.name_attribute is not None:
            from .unnamed import parse_name

            parse_name(self.name_attribute)
            if not self.discovers:
                raise UserError("--name-attribute names the attribute discovery finds in the image features: "
                                "it goes with --bias-prompts auto")
        return self

    @property
    def discovers(self) -> bool:
        """Whether the labeler's attributes come from bias discovery (`bias_prompts: auto`)."""
        return self.bias_prompts == AUTO

    def resolved(self, train_labelled: bool) -> "GroupingOptions":
        if self.source is not None:
            return self
        return self.model_copy(update={"source": "gt" if train_labelled and not self.discovers else "pseudo"})
