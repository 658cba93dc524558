"""The backbone protocol: what groupcoop asks of a frozen image-text model.

A `Backbone` is used only through the operations below; nothing outside an adapter module
(`open_clip.py`, `transformers.py`) touches a model's internals.

A prompt is `[prefix specials] [V1..VM] <text> [EOS] [padding]`; `prefix_length` says how many
special tokens come before the text (1 for CLIP's [SOS], 0 for SigLIP), `eos_positions` where
the text ends, `pool_positions` where the text encoder pools (the [EOS] for CLIP, the last
position for SigLIP) and `text_length` how many leading positions it reads (a causal encoder
ignores everything after its pooled token; `pads_freely` says so). `encode_text_embeddings` runs the text encoder
from token embeddings, which prompt learning needs; scores are `logit_scale * cos + logit_bias`
(the bias is SigLIP's; CLIP has none).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..templates import TEMPLATES
from .names import TINY, TRANSFORMERS_PREFIX  # noqa: F401 (the adapters read them here)



class Backbone(ABC):
    """A frozen image-text model, seen through the operations groupcoop needs."""

    name: str  # as the user spelled it (`--backbone`)
    identity: str  # the weights' identity: part of the feature-cache key, checked when a run is loaded
    preprocess: object  # PIL image -> (3, H, W) tensor; its repr is part of the feature-cache key
    # sha256 of everything that decides the model's features (weights, config, tokenizer and
    # preprocessing files: `content.py`), never a path or a name; part of the feature-cache key
    content: str | None = None
    pretrained: str | None = None  # the --pretrained value it was loaded with (for `export`)
    weights_path: str | None = None  # the weights file, when loaded from one (for `export`)

    # -- the model ---------------------------------------------------------------------------------

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def logit_scale(self) -> float: ...

    @property
    def logit_bias(self) -> float | None:
        """A constant added to every logit (SigLIP's sigmoid scoring); None when there is none."""
        return None

    @abstractmethod
    def parameter_count(self) -> int: ...

    @abstractmethod
    def to(self, device) -> "Backbone": ...

    def tune_for_gpu(self) -> None:
        """Layout changes that make image encoding faster on CUDA (none by default)."""

    def export_model(self, folder: Path) -> dict:
        """Write into `folder` what the model's own library needs to build this backbone without
        groupcoop (`groupcoop export`); return the head metadata that says how: `library`, `model`,
        `pretrained`, `weights` (a file in `folder`, None when the library fetches the model by
        name) with its `weights_sha256`, and `files_sha256`, the sha256 of every file written (all
        of them decide predictions). An adapter's `load_export` checks them and reads the folder back."""
        raise UserError(f"backbone {self.name}: export cannot write this model family; use the run folder itself "
                        "(groupcoop predict RUN, Classifier.from_run)")

    # -- images ------------------------------------------------------------------------------------

    @abstractmethod
    def encode_images(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features for a preprocessed batch (B, 3, H, W)."""

    # -- text --------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    @property
    @abstractmethod
    def token_width(self) -> int:
        """The width W of a token embedding (a context vector's size)."""

    @property
    @abstractmethod
    def prefix_length(self) -> int:
        """Special tokens the tokenizer puts before the text."""

    @abstractmethod
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (B, context_length), padded as the text encoder expects."""

    @abstractmethod
    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, W) token embeddings."""

    @abstractmethod
    def vocabulary(self) -> torch.Tensor:
        """The (V, W) token-embedding matrix (nearest tokens of learned context vectors)."""

    @abstractmethod
    def token_text(self, ids) -> list[str]:
        """A readable string per vocabulary id."""

    @abstractmethod
    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the end-of-text token per sequence."""

    @abstractmethod
    def pool_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the token the text encoder pools, per sequence."""

    @abstractmethod
    def text_length(self, pool_at: torch.Tensor, length: int) -> int:
        """How many leading positions of a length-`length` batch pooled at `pool_at` the encoder reads."""

    @property
    def pads_freely(self) -> bool:
        """Whether a prompt's text features ignore every position after its pooled one (a causal
        mask pooling at the [EOS]): prompts of different lengths padded at the end then encode in
        one batch as each alone (fused training). False, the safe default, fuses only prompts of
        equal length."""
        return False

    @abstractmethod
    def encode_text_embeddings(self, x: torch.Tensor, pool_at: torch.Tensor, cut: bool = True) -> torch.Tensor:
        """Text features from token embeddings `x` (B, L, W) pooled at `pool_at` (B,); equals the
        model's own text encoding of the same tokens. With `cut`, positions after `text_length`
        are dropped first (same numbers, less work)."""

    # -- built on the above ------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return int(self.encode_text(["a"]).shape[-1])

    @torch.inference_mode()
    def encode_text(self, texts: list[str], normalize: bool = False) -> torch.Tensor:
        ids = self.tokenize(texts)
        out = self.encode_text_embeddings(self.token_embeddings(ids), self.pool_positions(ids))
        return F.normalize(out, dim=-1) if normalize else out

    def text_features(self, texts: list[str], templates=TEMPLATES) -> torch.Tensor:
        """Normalised text features per text, averaged over templates (the usual CLIP ensemble)."""
        return torch.stack([F.normalize(self.encode_text([t.format(x) for t in templates], normalize=True).mean(0),
                                        dim=-1) for x in texts])

    def row_bias(self, n_rows: int) -> torch.Tensor | None:
        """The logit bias as a classifier head's per-row bias (None when the model has none)."""
        return None if self.logit_bias is None else torch.full((n_rows,), float(self.logit_bias))


class Delegating(Backbone):
    """Another backbone with some operations changed: everything not overridden is the inner
    backbone's. A wrapper family (docs/extending.md) subclasses it; set `name` and `identity` to
    say what changed, so the feature cache never serves the inner model's features for it."""

    def __init__(self, inner: Backbone, name: str, identity: str):
        self.inner, self.name, self.identity = inner, name, identity
        self.preprocess = inner.preprocess

    device = property(lambda self: self.inner.device)
    content = property(lambda self: self.inner.content)  # the same model files; `identity` says what changed
    logit_scale = property(lambda self: self.inner.logit_scale)
    logit_bias = property(lambda self: self.inner.logit_bias)
    context_length = property(lambda self: self.inner.context_length)
    token_width = property(lambda self: self.inner.token_width)
    prefix_length = property(lambda self: self.inner.prefix_length)
    pads_freely = property(lambda self: self.inner.pads_freely)

    def parameter_count(self) -> int:
        return self.inner.parameter_count()

    def to(self, device) -> "Delegating":
        self.inner.to(device)
        return self

    def tune_for_gpu(self) -> None:
        self.inner.tune_for_gpu()

    def encode_images(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.inner.encode_images(images, normalize)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.inner.tokenize(texts)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner.token_embeddings(ids)

    def vocabulary(self) -> torch.Tensor:
        return self.inner.vocabulary()

    def token_text(self, ids) -> list[str]:
        return self.inner.token_text(ids)

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner.eos_positions(ids)

    def pool_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner.pool_positions(ids)

    def text_length(self, pool_at: torch.Tensor, length: int) -> int:
        return self.inner.text_length(pool_at, length)

    def encode_text_embeddings(self, x: torch.Tensor, pool_at: torch.Tensor, cut: bool = True) -> torch.Tensor:
        return self.inner.encode_text_embeddings(x, pool_at, cut)


def special_prefix_length(tokenizer) -> int:
    """How many special tokens a Hugging Face tokenizer puts before a text ([SOS]/[BOS]: 1 for CLIP's, 0 for SigLIP's)."""
    content = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(content) + 1):
        if full[start:start + len(content)] == content:
            return start
    raise UserError("the checkpoint's tokenizer does not keep a text's tokens between its special tokens; "
                    "prompt learning cannot place context vectors")
