"""Backbones by name: the loader picks the adapter of a model family by the name's spelling.

- `backbone_openclip.py`: open_clip names (`ViT-B-16`, `RN50`, `hf-hub:...`, `local-dir:...`)
  and the bundled `groupcoop-tiny`; the only module that imports open_clip.
- `backbone_transformers.py`: Hugging Face `CLIPModel` and `SiglipModel` checkpoints, spelled
  `transformers:<hub id or save_pretrained folder>` (needs `pip install groupcoop[transformers]`).

Every backbone is a `Backbone` (`backbone_protocol.py`): the rest of groupcoop uses only its
operations. Adding a family is one adapter module and one branch in `load_backbone`, and
one in `load_export_backbone` when `groupcoop export` can write its models (docs/extending.md).
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from .protocol import TINY, TRANSFORMERS_PREFIX, Backbone, weights_checksum
from ..choices import DEVICE_PATTERN
from ..errors import UserError

__all__ = ["TINY", "TRANSFORMERS_PREFIX", "Backbone", "check_device", "describe_models", "load_backbone",
           "load_export_backbone", "weights_checksum"]


def check_device(device: str) -> None:
    """A torch device this machine has: cpu, cuda, cuda:N (N < the GPU count) or mps."""
    if not re.fullmatch(DEVICE_PATTERN, str(device)):
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is visible to torch here; use --device cpu")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here; use cuda:0..")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's MPS backend is not available here; use --device cpu")


def load_backbone(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> Backbone:
    """A frozen backbone by name: `transformers:<id-or-folder>` for Hugging Face checkpoints,
    anything else for open_clip (architecture + `pretrained` tag or file, `hf-hub:`, `local-dir:`,
    or the bundled tiny model; `pretrained='random'` builds seeded random weights)."""
    if not isinstance(name, str) or not name:
        raise UserError("--backbone needs a model name; `groupcoop backbones` lists them")
    check_device(str(device))
    if name.startswith(TRANSFORMERS_PREFIX):
        from . import transformers as backbone_transformers

        return backbone_transformers.load(name, pretrained, device)
    from . import open_clip as backbone_openclip

    return backbone_openclip.load(name, pretrained, device)


def load_export_backbone(folder, info: dict, device: str | torch.device = "cpu") -> Backbone:
    """The backbone an export folder carries, read back by the adapter of the library that wrote it
    (`info` is the head's metadata: `Backbone.export_model`'s answer)."""
    check_device(str(device))
    library = info.get("library")
    if library == "transformers":
        from . import transformers as backbone_transformers

        return backbone_transformers.load_export(folder, info, device)
    if library == "open_clip":
        from . import open_clip as backbone_openclip

        return backbone_openclip.load_export(folder, info, device)
    raise UserError(f"{folder}/head.safetensors names no model library it was exported for ({library!r}); "
                    "export the run again")


def describe_models() -> SimpleNamespace:
    """Names and tags for `groupcoop backbones`; architectures this environment cannot build go to `unusable`."""
    from . import open_clip as backbone_openclip

    return backbone_openclip.describe()
