"""The grouping settings of a run (`groups:` in a config, --groups/--variant/... on the command line).

The choices come from the tables that own them (labelers.py's `LABELERS`, pseudo.py's
`PSEUDO_VARIANTS`, labelfree.py's defaults); nothing here imports scikit-learn, so settings are
checked before anything heavy loads.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ..choices import AUTO, DiscoveryScore
from ..schema import Frozen, Int, PhraseLists, Text
from .labelers import GROUP_SOURCES
from .labelfree import DISCOVER_TOP, DISCOVERY_SCORE
from .pseudo import DEFAULT_PSEUDO_VARIANT, PSEUDO_VARIANTS


class GroupingOptions(Frozen):
    """Where training groups come from (a labeler of `LABELERS`), and the labelers' knobs.

    `source` None means "gt when the training split has bias labels, else pseudo" and is
    resolved once, when the dataset is known (`plan.resolve_grouping`). `bias_prompts: auto`
    takes the labeler's attributes from bias discovery (discovery.py): at most `discover_top`
    candidates of `vocabulary` (default: the shipped one for the dataset) ranked by
    `discover_score`; with it, `source` None means pseudo.
    """

    source: Literal[GROUP_SOURCES] | None = None
    bias_prompts: Literal[AUTO] | PhraseLists | None = None  # value phrases per attribute, for zeroshot/pseudo
    clusters: Annotated[Int, Field(ge=2, le=1000)] | None = None  # clusters per attribute of an unnamed labeler (kmeans)
    variant: Literal[tuple(PSEUDO_VARIANTS)] = DEFAULT_PSEUDO_VARIANT  # the pseudo labeler's variant
    discover_top: Annotated[Int, Field(ge=1, le=8)] = DISCOVER_TOP  # bias_prompts auto: attributes kept at most
    discover_score: DiscoveryScore = DISCOVERY_SCORE  # bias_prompts auto: how candidates are ranked
    vocabulary: Text | None = None  # bias_prompts auto: a vocabulary YAML file (default: the shipped one)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"source": value} if isinstance(value, str) else value

    @property
    def discovers(self) -> bool:
        """Whether the labeler's attributes come from bias discovery (`bias_prompts: auto`)."""
        return self.bias_prompts == AUTO

    def resolved(self, train_labelled: bool) -> "GroupingOptions":
        if self.source is not None:
            return self
        return self.model_copy(update={"source": "gt" if train_labelled and not self.discovers else "pseudo"})
