"""Backbones by name: `FAMILIES`, the table of model families, and the loaders that look names up in it.

A `Family` says which names are its own (a prefix, or every name no other family claims), how its
adapter loads them and reads its exports back, how `groupcoop backbones` lists them, its part of the
`--backbone` help, and the cost facts of its architectures for `groupcoop sweep --dry-run`.

- `open_clip.py`: open_clip names (`ViT-B-16`, `RN50`, `hf-hub:...`, `local-dir:...`) and the
  bundled `groupcoop-tiny`; the only module that imports open_clip.
- `transformers.py`: Hugging Face `CLIPModel` and `SiglipModel` checkpoints, spelled
  `transformers:<hub id or save_pretrained folder>` (needs `pip install groupcoop[transformers]`).

Adapters are imported on first use, so importing this module imports no model library. Every
backbone is a `Backbone` (`protocol.py`): the rest of groupcoop uses only its operations. Adding a
family is one adapter module and one entry in `FAMILIES` (docs/extending.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from ..choices import DEVICE_PATTERN
from ..errors import UserError
from .names import TINY, TRANSFORMERS_PREFIX

if TYPE_CHECKING:  # importing the protocol imports torch; the table is read by `--help`
    import torch

    from .protocol import Backbone

__all__ = ["FAMILIES", "TINY", "TRANSFORMERS_PREFIX", "CostFacts", "Family", "backbone_help", "check_device",
           "cost_facts", "describe_models", "family_of", "load_backbone", "load_export_backbone"]


@dataclass(frozen=True)
class CostFacts:
    """What `groupcoop sweep --dry-run` assumes of one architecture (open_clip's model profile
    for the image encoder; presets/paper/README.md says how they were chosen)."""

    image_gflops: float  # image encoder, per image
    text_gflops_per_token: float  # text tower forward + input-gradient backward: 4 x the blocks' weights
    text_call_s: float  # floor of one text-encoder call on a GPU: kernel launches, a few prompts hardly fill it


@dataclass(frozen=True)
class Family:
    """One model family: which backbone names are its own and what its adapter does with them.

    A family loads its models (`load`) or wraps another family's (`wrap`: its names are its prefix
    followed by any other backbone name, which is loaded first; its cost facts are the inner one's)."""

    name: str
    prefix: str | None  # names starting with it are the family's; None: every name no other family claims
    help: str  # its part of the `--backbone` help
    load: Callable[[str, str | None, str | torch.device], Backbone] | None = None  # (name, pretrained, device)
    wrap: Callable[[Backbone], Backbone] | None = None  # (the inner backbone) -> the wrapped one
    load_export: Callable[[Path, dict, str | torch.device], Backbone] | None = None  # (folder, head metadata, device)
    describe: Callable[[], SimpleNamespace] | None = None  # models, pretrained pairs, unusable {name: package}, notes
    library: str | None = None  # the `library` its exports name in their head metadata (None: it writes none)
    costs: Mapping[str, CostFacts] = field(default_factory=dict)  # by architecture name

    def __post_init__(self):
        if (self.load is None) == (self.wrap is None):
            raise TypeError(f"backbone family {self.name}: give exactly one of load and wrap")

    def listing(self) -> SimpleNamespace:
        """What `groupcoop backbones` shows of it: its models, or a line saying what names it takes."""
        if self.describe is not None:
            return self.describe()
        return SimpleNamespace(models=[], pretrained=[], unusable={}, notes=[self.help])


def _adapter(module: str):
    """A family's adapter module, imported on first use (it imports its model library)."""
    import importlib

    return importlib.import_module(f"{__package__}.{module}")


def _transformers_listing() -> SimpleNamespace:
    """No list of models: any Hugging Face CLIP or SigLIP checkpoint, by hub id or folder."""
    return SimpleNamespace(models=[], pretrained=[], unusable={}, notes=[
        f"{TRANSFORMERS_PREFIX}<hub id or folder>   a Hugging Face CLIPModel or SiglipModel "
        "(pip install groupcoop[transformers])"])


FAMILIES: tuple[Family, ...] = (
    Family("open_clip", None, "open_clip architecture (ViT-B-16, RN50, ...), an hf-hub: id, groupcoop-tiny",
           load=lambda name, pretrained, device: _adapter("open_clip").load(name, pretrained, device),
           load_export=lambda folder, info, device: _adapter("open_clip").load_export(folder, info, device),
           describe=lambda: _adapter("open_clip").describe(), library="open_clip",
           costs={"RN50": CostFacts(9.2, 0.15, 0.006), "RN101": CostFacts(12.8, 0.15, 0.006),
                  "ViT-B-32": CostFacts(4.4, 0.15, 0.006), "ViT-B-16": CostFacts(17.6, 0.15, 0.006),
                  "ViT-L-14": CostFacts(81.1, 0.34, 0.012), TINY: CostFacts(0.03, 0.0016, 0.003)}),
    Family("transformers", TRANSFORMERS_PREFIX,
           f"{TRANSFORMERS_PREFIX}<hub id or folder> for a Hugging Face CLIPModel or SiglipModel",
           load=lambda name, pretrained, device: _adapter("transformers").load(name, pretrained, device),
           load_export=lambda folder, info, device: _adapter("transformers").load_export(folder, info, device),
           describe=_transformers_listing, library="transformers"),
)


def family_of(name: str) -> Family:
    """The family whose prefix `name` starts with, else the one that takes every other name."""
    for family in FAMILIES:
        if family.prefix and name.startswith(family.prefix):
            return family
    for family in FAMILIES:
        if family.prefix is None:
            return family
    raise UserError(f"no backbone family takes the name {name!r}; `groupcoop backbones` lists them")


def backbone_help() -> str:
    """The `--backbone` help: every family's part, in the table's order."""
    parts = [f.help for f in FAMILIES]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", or " + parts[-1]


def cost_facts(name: str) -> CostFacts | None:
    """The dry-run cost facts of a backbone name; None when its family does not know the architecture."""
    if not isinstance(name, str):
        return None
    family = family_of(name)
    return cost_facts(name[len(family.prefix):]) if family.wrap else family.costs.get(name)


def check_device(device: str) -> None:
    """A torch device this machine has: cpu, cuda, cuda:N (N < the GPU count) or mps."""
    import torch

    if not re.fullmatch(DEVICE_PATTERN, str(device)):
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is visible to torch here; use --device cpu")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here; use cuda:0..")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's MPS backend is not available here; use --device cpu")


def load_backbone(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> Backbone:
    """A frozen backbone by name, loaded by its family's adapter (`FAMILIES`): `transformers:<id-or-folder>`
    for Hugging Face checkpoints, anything else for open_clip (architecture + `pretrained` tag or file,
    `hf-hub:`, `local-dir:`, or the bundled tiny model; `pretrained='random'` builds seeded random weights)."""
    if not isinstance(name, str) or not name:
        raise UserError("--backbone needs a model name; `groupcoop backbones` lists them")
    if pretrained is not None and (not isinstance(pretrained, str) or not pretrained):
        # every loader takes it from here: a flag, a run's config.yaml, a sweep grid, the API
        raise UserError(f"pretrained {pretrained!r} is not a weights name: give a tag, a checkpoint file or "
                        "'random' (in a run's config.yaml: `pretrained: openai`, or `pretrained: null`)")
    check_device(str(device))
    family = family_of(name)
    if family.wrap is not None:
        return family.wrap(load_backbone(name[len(family.prefix):], pretrained, device))
    return family.load(name, pretrained, device)


def load_export_backbone(folder, info: dict, device: str | torch.device = "cpu") -> Backbone:
    """The backbone an export folder carries, read back by the adapter of the library that wrote it
    (`info` is the head's metadata: `Backbone.export_model`'s answer)."""
    check_device(str(device))
    library = info.get("library")
    for family in FAMILIES:
        if family.library == library and family.load_export is not None:
            return family.load_export(folder, info, device)
    raise UserError(f"{folder}/head.safetensors names no model library it was exported for ({library!r}); "
                    "export the run again")


def describe_models() -> SimpleNamespace:
    """Names and tags for `groupcoop backbones`, every family's: `models`, `pretrained` (name, tag)
    pairs, `unusable` (architectures this environment cannot build: the package each needs) and
    `notes` (a line for each family whose names cannot be listed)."""
    info = SimpleNamespace(models=[], pretrained=[], unusable={}, notes=[])
    for family in FAMILIES:
        mine = family.listing()
        info.models += list(mine.models)
        info.pretrained += list(mine.pretrained)
        info.unusable.update(mine.unusable)
        info.notes += list(getattr(mine, "notes", []))
    return info
