"""Model downloads: one line before a download starts, and none at all offline.

Offline is the Hugging Face convention, HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1): open_clip and
transformers both download through the hub, and the CLI's --offline sets it. Each adapter says what
a backbone would fetch before its library is asked to load it (`before_download`), so offline a
backbone that is not on this machine is one error line at once, not minutes of the hub's retries.
No model library is imported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import UserError
from ..io.progress import info

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # what huggingface_hub reads
_TRUE = ("1", "on", "yes", "true")  # huggingface_hub's spelling of true


def offline() -> bool:
    """Whether downloads are off: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set true (--offline sets it)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_VARIABLES)


@contextmanager
def offline_mode(on: bool = True) -> Iterator[None]:
    """HF_HUB_OFFLINE=1 while the block runs (the CLI's --offline); the variable is restored after."""
    from unittest import mock

    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"} if on else {}):
        yield


def before_download(what: str, name: str, instead: str) -> None:
    """Say that `what` (words: "ViT-B-16 openai weights") is about to be downloaded for backbone `name`,
    or refuse at once when downloads are off, with `instead` (what to do) in the one line."""
    if offline():
        raise UserError(f"--backbone {name}: {what} must be downloaded (not in the local cache), and downloads are "
                        f"off (--offline or HF_HUB_OFFLINE=1); {instead}")
    info(f"fetching {what} (not in the local cache)")


@contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub in offline mode while the block runs, when downloads are off: it reads
    HF_HUB_OFFLINE once, at import, and online it would ask the hub about a cached file first."""
    if not offline():
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def in_hub_cache(repo: str, *files: str) -> bool:
    """Whether the local Hugging Face cache holds one of these files of `repo` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    except ValueError:  # not a repo id the hub accepts: nothing of it is cached (loading says what is wrong)
        return False


# open_clip's file names on the hub: its default weights file, and the safetensors file it tries first
_OPEN_CLIP_WEIGHTS, _OPEN_CLIP_SAFE = "open_clip_pytorch_model.bin", "open_clip_model.safetensors"


def _tag_is_local(cfg: dict) -> bool:
    """Whether open_clip finds a pretrained tag's weights without a download, in its `download_pretrained`
    order: a file, the hub when the tag has a hub entry, else its URL's file in ~/.cache/clip."""
    if cfg.get("file") or not (cfg.get("hf_hub") or cfg.get("url")):
        return True
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or _OPEN_CLIP_WEIGHTS
        stem, suffix = os.path.splitext(filename)
        safe = _OPEN_CLIP_SAFE if filename == _OPEN_CLIP_WEIGHTS else f"{stem}.safetensors" if suffix in (".bin", ".pth") \
            else filename
        return in_hub_cache(repo, safe, filename)
    return os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"])))


def open_clip_downloads(name: str, pretrained: str | None, tag_cfg: dict | None, model_cfg: dict | None) -> None:
    """`before_download` for what open_clip would fetch to build `name`: an `hf-hub:` model's config and
    weights, a pretrained tag's weights (`tag_cfg`, open_clip's for the tag), a Hugging Face tokenizer
    that the architecture's config (`model_cfg`) names. Nothing when all of it is on this machine."""
    missing = []
    if name.startswith("hf-hub:"):
        repo = name.split(":", 1)[1]
        if not (in_hub_cache(repo, "open_clip_config.json") and in_hub_cache(repo, _OPEN_CLIP_SAFE, _OPEN_CLIP_WEIGHTS)):
            missing.append(f"{name}'s config and weights")
    elif tag_cfg and not _tag_is_local(tag_cfg):
        missing.append(f"{name} {pretrained} weights")
    tokenizer = ((model_cfg or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if tokenizer and not in_hub_cache(tokenizer, "tokenizer_config.json", "tokenizer.json"):
        missing.append(f"the {tokenizer} tokenizer")
    if missing:
        before_download(" and ".join(missing), name, "fetch them once where there is network access (the hub cache "
                        "keeps them), or pass a checkpoint file with --pretrained FILE")
