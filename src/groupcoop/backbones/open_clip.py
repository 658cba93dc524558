"""The open_clip adapter: open_clip architectures by name, `hf-hub:` and `local-dir:` models,
and the bundled `groupcoop-tiny`. The only module that imports open_clip.

Prompt learning needs a text forward that starts from token embeddings (open_clip's
`encode_text` takes token ids only). `OpenCLIPBackbone.encode_text_embeddings` runs the same
layers as `encode_text` on given embeddings, for both of open_clip's text-tower layouts (the
classic CLIP attributes on the model, and the `model.text` TextTransformer of the custom-text
models). Because the text mask is causal and the pooled token is the [EOS], every position
after the last [EOS] of a batch changes nothing: the batch is cut there. The text blocks run
fused (`_fused_blocks`: one packed projection and one scaled_dot_product_attention per block,
and in the last block only the pooled token gets a query and an MLP), equal to open_clip's
blocks within float rounding; `fused_text = False` switches back to open_clip's forward.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import open_clip
import torch
import torch.nn.functional as F

from .content import OWN_FILES, check_export_files, digest, file_sha256, folder_files, state_dict_sha256
from .fetch import hub_offline, open_clip_downloads
from .protocol import TINY, Backbone, special_prefix_length
from ..errors import UserError, close_matches
from ..io.read import read_text

RANDOM = "random"
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"  # the names open_clip's `local-dir:` loader looks for
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def _asset(name: str) -> Path:
    return Path(str(resources.files("groupcoop") / "assets" / name))


def tiny_weights_path() -> Path:
    return _asset(f"{TINY}.safetensors")


def _register_tiny_config() -> None:
    if TINY not in open_clip.list_models():
        open_clip.add_model_config(_asset(f"{TINY}.json"))


def available_backbones() -> list[str]:
    """Architecture names open_clip knows, plus the bundled tiny CLIP."""
    _register_tiny_config()
    return sorted(set(open_clip.list_models()))


def _looks_like_file(pretrained: str) -> bool:
    return pretrained.endswith(_CHECKPOINT_SUFFIXES) or "/" in pretrained or pretrained.startswith(".")


def _resolve_weights(name: str, pretrained: str | None) -> tuple[str | None, str]:
    """Check name + pretrained before building anything; return (open_clip pretrained arg, identity)."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return None, name
    known = available_backbones()
    if name not in known:
        raise UserError(
            f"unknown backbone '{name}'{close_matches(name, known)}; "
            f"use an open_clip architecture (`groupcoop backbones` lists them), an hf-hub: id or {TINY}"
        )
    if pretrained is None:
        if name == TINY:
            return str(tiny_weights_path()), f"{TINY}@{file_sha256(tiny_weights_path())[:16]}"
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(
            f"backbone '{name}' needs --pretrained: a tag ({', '.join(tags) or 'none published'}), "
            f"a checkpoint file, or '{RANDOM}' for random weights"
        )
    if pretrained == RANDOM:
        return None, f"{name}@random"
    if _looks_like_file(pretrained):
        path = Path(pretrained).expanduser()
        if path.is_dir():
            raise UserError(f"--pretrained {path} is a folder; pass a checkpoint file (.safetensors preferred), or "
                            f"use --backbone local-dir:{path} for a folder holding open_clip_config.json")
        if not path.is_file():
            raise UserError(f"checkpoint file not found: {path}; pass an existing .safetensors/.pt file or a pretrained tag")
        if not pretrained.endswith(_CHECKPOINT_SUFFIXES):
            raise UserError(f"checkpoint {path} has an unknown suffix; use .safetensors (preferred), .pt, .pth or .bin")
        return str(path), f"{name}@file:{file_sha256(path)[:16]}"
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise UserError(
            f"unknown pretrained tag '{pretrained}' for {name}{close_matches(pretrained, tags)}; "
            f"available: {', '.join(tags) or 'none (pass a checkpoint file or random)'}"
        )
    return pretrained, f"{name}@{pretrained}"


@dataclass
class TextTower:
    """The text-side modules of either open_clip layout, under one set of names."""

    token_embedding: torch.nn.Embedding
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    attn_mask: torch.Tensor | None
    ln_final: torch.nn.Module
    text_projection: torch.nn.Module | torch.Tensor | None
    pool_type: str
    eos_id: int | None
    cls_emb: torch.Tensor | None
    extra_mask: bool  # pad or CLS masks depend on token ids: no cut, no embedding path shortcut


def _run_sequence_first(transformer: torch.nn.Module) -> None:
    """Run open_clip's text blocks on (L, N, D) tensors, as open_clip does with batch_first=False.

    With batch_first=True, nn.MultiheadAttention transposes its input to a non-contiguous view
    and its input projection degrades to one small matmul per position; sequence-first keeps
    it one matmul (about 1.4x faster text forward+backward on CPU, same numbers).
    """
    blocks = list(getattr(transformer, "resblocks", []))
    if getattr(transformer, "batch_first", None) and blocks and all(
            isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) for b in blocks):
        transformer.batch_first = False
        for block in blocks:
            block.attn.batch_first = False


def _fusable(transformer: torch.nn.Module) -> bool:
    """open_clip's plain text blocks: self-attention through one packed nn.MultiheadAttention."""
    blocks = list(getattr(transformer, "resblocks", []))
    return bool(blocks) and not getattr(transformer, "grad_checkpointing", False) and all(
        type(b).__name__ == "ResidualAttentionBlock" and not hasattr(b, "ln_1_kv")
        and isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) and b.attn._qkv_same_embed_dim
        and b.attn.in_proj_bias is not None and b.attn.bias_k is None and not b.attn.add_zero_attn for b in blocks)


def _attend(block, h: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor:
    """Block's self-attention on (N, L, D), by scaled_dot_product_attention; with `rows` (N,), only
    the query at position rows[n] of each sequence (N, 1, D)."""
    attn = block.attn
    n, length, width = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(n, length, 3, heads, width // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (N, H, L, d) each
    if rows is not None:
        q = q[torch.arange(n, device=h.device), :, rows].unsqueeze(2)
        mask = None if mask is None else mask[rows].view(n, 1, 1, length)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.linear(out.transpose(1, 2).reshape(n, -1, width), attn.out_proj.weight, attn.out_proj.bias)


def _fused_blocks(transformer, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """The text blocks on (N, L, D) batch-first, returning only positions `rows` (N, D).

    Same numbers as open_clip's forward (to float rounding) with fewer copies: one packed
    projection and one fused attention per block, no layout changes. In the last block only the
    pooled positions need a query, an output projection and an MLP.
    """
    blocks = transformer.resblocks
    mask = None if mask is None else mask.to(x.dtype)
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        out = _attend(block, block.ln_1(x), mask, rows if last else None)
        if last:
            x = x[torch.arange(x.shape[0], device=x.device), rows].unsqueeze(1)
        x = x + block.ls_1(out)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x[:, 0]


def _text_tower(model) -> TextTower:
    if hasattr(model, "text"):
        t = model.text
        if not hasattr(t, "positional_embedding"):
            raise UserError(
                f"the text tower {type(t).__name__} is not supported for prompt learning; "
                "use a CLIP model with an open_clip text transformer"
            )
        return TextTower(
            t.token_embedding, t.positional_embedding, t.transformer, t.attn_mask, t.ln_final,
            t.text_projection, t.pool_type, getattr(t, "eos_id", None), t.cls_emb,
            bool(t.use_pad_mask or t.cls_emb is not None),
        )
    return TextTower(
        model.token_embedding, model.positional_embedding, model.transformer, model.attn_mask,
        model.ln_final, model.text_projection, getattr(model, "text_pool_type", "argmax"),
        getattr(model, "text_eos_id", None), None, False,
    )


class OpenCLIPBackbone(Backbone):
    """A frozen open_clip model with image encoding and an embedding-level text forward."""

    def __init__(self, model, preprocess, tokenizer, name: str, identity: str):
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.identity = identity
        self.weights_path: str | None = None
        self.text = _text_tower(model)
        _run_sequence_first(self.text.transformer)
        # text blocks by `_fused_blocks` (False: open_clip's own forward, for comparison)
        self.fused_text = _fusable(self.text.transformer)
        if self.text.extra_mask:
            raise UserError(f"backbone {name}: text towers with padding or CLS masks are not supported for prompt learning")
        inner = getattr(tokenizer, "tokenizer", None)  # a Hugging Face tokenizer wrapped by open_clip
        self._prefix = 1 if hasattr(tokenizer, "sot_token_id") or inner is None else special_prefix_length(inner)
        self._eos_id = getattr(tokenizer, "eot_token_id", getattr(inner, "eos_token_id", None))

    @property
    def device(self) -> torch.device:
        return self.text.positional_embedding.device

    @property
    def context_length(self) -> int:
        return int(self.text.positional_embedding.shape[0])

    @property
    def token_width(self) -> int:
        return int(self.text.token_embedding.weight.shape[1])

    @property
    def prefix_length(self) -> int:
        return self._prefix

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    @property
    def logit_bias(self) -> float | None:
        bias = getattr(self.model, "logit_bias", None)  # open_clip's SigLIP models
        return None if bias is None else float(bias)

    def to(self, device) -> "OpenCLIPBackbone":
        self.model.to(device)
        self.text = _text_tower(self.model)
        return self

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def tune_for_gpu(self) -> None:
        """Channels-last convolution weights (cuDNN's fast layout)."""
        self.model.visual.to(memory_format=torch.channels_last)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def token_text(self, ids) -> list[str]:
        """A readable string per vocabulary id (for showing nearest tokens).

        open_clip's SimpleTokenizer (CLIP's BPE): the token's bytes decoded, a word end
        (`</w>`) dropped and a piece that continues into the next token marked with a
        trailing '-' ("photo" is a whole word, "pho-" a word start); bytes that are only part of
        a UTF-8 character are shown as \\xNN. Hugging Face tokenizers
        wrapped by open_clip: their own token strings. Any other tokenizer: the id itself.
        """
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        tok = self.tokenizer
        decoder, byte_decoder = getattr(tok, "decoder", None), getattr(tok, "byte_decoder", None)
        if isinstance(decoder, dict) and isinstance(byte_decoder, dict):
            out = []
            for i in ids:
                piece = decoder.get(i)
                if piece is None:
                    out.append(str(i))
                    continue
                whole = piece.endswith("</w>")
                piece = piece[: -len("</w>")] if whole else piece
                if piece.startswith("<") and piece.endswith(">"):  # <start_of_text>, <end_of_text>
                    out.append(piece)
                    continue
                raw = bytearray(byte_decoder.get(c, ord("?")) for c in piece)
                out.append(raw.decode("utf-8", errors="backslashreplace") + ("" if whole else "-"))
            return out
        inner = getattr(tok, "tokenizer", None)
        if inner is not None and hasattr(inner, "convert_ids_to_tokens"):
            return [str(t) for t in inner.convert_ids_to_tokens(ids)]
        return [str(i) for i in ids]

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text.token_embedding(ids.to(self.device))

    def vocabulary(self) -> torch.Tensor:
        return self.text.token_embedding.weight

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        if self._eos_id is None:
            return ids.argmax(dim=-1)
        return (ids == self._eos_id).int().argmax(dim=-1)

    def pool_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the pooled token per sequence (the [EOS] for argmax/eos pooling)."""
        if self.text.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.text.pool_type == "eos":
            return (ids == self.text.eos_id).int().argmax(dim=-1)
        if self.text.pool_type == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)

    @property
    def pads_freely(self) -> bool:
        """A causal tower pooling at the [EOS]: what comes after a prompt's [EOS] changes nothing."""
        return self.text.attn_mask is not None and self.text.pool_type in ("argmax", "eos")

    def text_length(self, pool_at: torch.Tensor, length: int) -> int:
        """Up to the last pooled [EOS] for a causal tower pooling there, else every position."""
        return int(pool_at.max()) + 1 if self.pads_freely else length

    def encode_text_embeddings(self, x: torch.Tensor, pool_at: torch.Tensor, cut: bool = True) -> torch.Tensor:
        """Text features from token embeddings `x` (B, L, W); equals `encode_text` on the same tokens.

        `pool_at` (B,) is where the pooled token sits (`pool_positions`). With `cut`, the
        sequence stops after the last pooled position of the batch: the causal mask makes
        later positions irrelevant to earlier ones.
        """
        t = self.text
        length = x.shape[1]
        if cut:
            length = self.text_length(pool_at, length)
            x = x[:, :length]
        cast = t.transformer.get_cast_dtype() if hasattr(t.transformer, "get_cast_dtype") else x.dtype
        x = x.to(cast) + t.positional_embedding[:length].to(cast)
        mask = t.attn_mask[:length, :length] if t.attn_mask is not None else None
        rows = {"last": length - 1, "first": 0}.get(t.pool_type)
        rows = pool_at.to(x.device) if rows is None else torch.full_like(pool_at, rows, device=x.device)
        if self.fused_text and t.pool_type in ("argmax", "eos", "last", "first"):
            return self._project(t.ln_final(_fused_blocks(t.transformer, x, mask, rows)))
        x = t.ln_final(t.transformer(x, attn_mask=mask))
        return self._project(x[torch.arange(x.shape[0], device=x.device), rows])

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        t = self.text
        if t.text_projection is not None:
            pooled = t.text_projection(pooled) if isinstance(t.text_projection, torch.nn.Module) else pooled @ t.text_projection
        return pooled

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features for a preprocessed batch (B, 3, H, W)."""
        out = self.model.encode_image(images.to(self.device))
        return F.normalize(out, dim=-1) if normalize else out

    def export_model(self, folder: Path) -> dict:
        """What plain open_clip needs to build this backbone again.

        A model open_clip can fetch by itself (an architecture with a pretrained tag, an hf-hub:
        id) is named: `create_model_and_transforms(model, pretrained=pretrained)`. Any other (the
        bundled groupcoop-tiny, a checkpoint file, a local-dir: model, random weights) is written
        into `folder` as open_clip's `local-dir:` layout: its architecture and preprocessing in
        open_clip_config.json and its weights in open_clip_model.safetensors (a safetensors
        weights file is copied byte for byte), so that
        `create_model_and_transforms(f"local-dir:{folder}")` builds it.
        """
        from safetensors.torch import save_model

        named = {"library": "open_clip", "model": self.name, "pretrained": None, "weights": None,
                 "weights_sha256": None, "files_sha256": {}}
        if self.name.startswith("hf-hub:"):
            return named
        if self.pretrained and self.pretrained != RANDOM and not _looks_like_file(self.pretrained):
            return {**named, "pretrained": self.pretrained}
        if self.name.startswith("local-dir:"):
            source = Path(self.name.split(":", 1)[1]).expanduser() / OPEN_CLIP_CONFIG
            model_cfg = json.loads(read_text(source, "model config"))["model_cfg"]
        else:
            model_cfg = open_clip.get_model_config(self.name)
        preprocess_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.visual.preprocess_cfg.items()}
        (folder / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
                                                          indent=1) + "\n", encoding="utf-8")
        if self.weights_path and self.weights_path.endswith(".safetensors"):
            shutil.copyfile(self.weights_path, folder / OPEN_CLIP_WEIGHTS)
        else:  # a pickle checkpoint, a local-dir: model or random weights: the state dict as loaded
            save_model(self.model, str(folder / OPEN_CLIP_WEIGHTS))
        files = folder_files(folder)
        return {**named, "weights": OPEN_CLIP_WEIGHTS, "weights_sha256": files[OPEN_CLIP_WEIGHTS], "files_sha256": files}


def missing_dependency(name: str) -> str | None:
    """The pip package an architecture needs and this environment lacks (HF text towers need transformers)."""
    import importlib.util

    config = open_clip.get_model_config(name) or {}
    needs = "transformers" if config.get("text_cfg", {}).get("hf_model_name") or config.get(
        "text_cfg", {}).get("hf_tokenizer_name") else None
    return needs if needs and importlib.util.find_spec(needs) is None else None


def _quiet_loggers() -> list[logging.Logger]:
    """open_clip warns on purpose-built random init and the hub logs every retry; errors are ours to report."""
    return [logging.getLogger(n) for n in ("open_clip", "huggingface_hub", "timm")]


def _check_local_dir(folder: Path) -> None:
    """Its config and a weights file (without one open_clip builds random weights, and only logs it)."""
    if not folder.is_dir():
        raise UserError(f"local-dir: folder {folder} not found; give a folder holding {OPEN_CLIP_CONFIG} and the weights")
    if not any(p.suffix in (".safetensors", ".bin", ".pth") and p.name not in OWN_FILES and p.is_file()
               for p in folder.iterdir()):
        raise UserError(f"local-dir:{folder} holds no weights file ({OPEN_CLIP_WEIGHTS}); put the model's weights there")


def _content(name: str, pretrained: str | None, weights: str | None, model) -> str:
    """sha256 of what decides the model (`content.py`): a local-dir: folder's files, else the config,
    the tag's settings and the weights file's bytes (the loaded tensors when open_clip fetched them)."""
    if name.startswith("local-dir:"):
        return digest({"files": folder_files(Path(name.split(":", 1)[1]).expanduser())})
    from_file = weights is not None and Path(weights).is_file()
    tag = None if from_file or pretrained in (None, RANDOM) else open_clip.get_pretrained_cfg(name, pretrained)
    return digest({"config": repr(model) if name.startswith("hf-hub:") else open_clip.get_model_config(name),
                   "tag": tag, "weights": file_sha256(weights) if from_file else state_dict_sha256(model)})


def load(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> OpenCLIPBackbone:
    """Load a frozen CLIP by open_clip name + tag, local checkpoint, `hf-hub:` id, or the bundled tiny model.

    `pretrained='random'` builds the architecture with seeded random weights (tests, benchmarks),
    without touching the caller's random state.
    """
    if name.startswith("local-dir:"):
        _check_local_dir(Path(name.split(":", 1)[1]).expanduser())
    weights, identity = _resolve_weights(name, pretrained)
    if not name.startswith(("hf-hub:", "local-dir:")):
        needs = missing_dependency(name)
        if needs:
            raise UserError(f"backbone {name} needs the package '{needs}', which is not installed; "
                            f"pip install {needs}, or choose another backbone")
    named = not name.startswith(("hf-hub:", "local-dir:"))  # open_clip's own architecture: its configs are here
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if named and pretrained and not _looks_like_file(pretrained) \
        else None
    open_clip_downloads(name, pretrained, tag_cfg, open_clip.get_model_config(name) if named else None)  # or refuses
    loggers = _quiet_loggers()
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.CRITICAL)  # open_clip logs through the root logger
    try:
        with torch.random.fork_rng(devices=[]), hub_offline():
            torch.manual_seed(0)  # random-init weights are part of the identity: keep them reproducible
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=weights, device=device, weights_only=True
            )
            tokenizer = open_clip.get_tokenizer(name)
    except ImportError as err:
        missing = getattr(err, "name", None) or str(err)
        raise UserError(f"backbone {name} needs the package '{missing}', which is not installed; pip install {missing}") from None
    except Exception as err:  # noqa: BLE001 - torch/safetensors/open_clip raise many types; all mean "cannot load"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        if weights and Path(weights).is_file():
            raise UserError(f"checkpoint {weights} does not fit architecture {name} or is not a checkpoint ({type(err).__name__}: {first}); "
                            "pass an open_clip checkpoint of that architecture (.safetensors preferred)") from None
        if name.startswith("local-dir:"):
            raise UserError(f"cannot load {name} ({type(err).__name__}: {first}); give a folder holding "
                            "open_clip_config.json and the model's weights") from None
        if isinstance(err, OSError) or "download" in first.lower() or "hub" in first.lower() or "connect" in first.lower():
            raise UserError(f"could not fetch the weights of {name}{' ' + pretrained if pretrained else ''}: "
                            "no network access and not in the local hub cache; download them where there is "
                            "network access and pass the file with --pretrained FILE") from None
        raise UserError(f"cannot build backbone {name}: {type(err).__name__}: {first}") from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        logging.getLogger().setLevel(root_level)
    content = _content(name, pretrained, weights, model)
    if name.startswith("local-dir:"):  # a folder is its files, wherever it lies
        identity = f"local-dir@file:{content[:16]}"
    backbone = OpenCLIPBackbone(model, preprocess, tokenizer, name, identity)
    backbone.content = content
    backbone.pretrained = pretrained
    backbone.weights_path = weights if weights and Path(weights).is_file() else None
    return backbone


def load_export(folder: Path, info: dict, device: str | torch.device = "cpu") -> OpenCLIPBackbone:
    """The model an export folder carries (`OpenCLIPBackbone.export_model`), its files checked first."""
    check_export_files(folder, info)
    return load(f"local-dir:{folder}", device=device)


def describe() -> SimpleNamespace:
    """Names and tags for `groupcoop backbones`; architectures this environment cannot build go to `unusable`."""
    models, unusable = [], {}
    for name in available_backbones():
        needs = missing_dependency(name) if name != TINY else None
        if needs:
            unusable[name] = needs
        else:
            models.append(name)
    return SimpleNamespace(models=models, pretrained=open_clip.list_pretrained(), unusable=unusable)
