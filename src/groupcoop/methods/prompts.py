"""Learnable prompts: `[SOS] [V1..VM] <name> . [EOS]` with M context vectors per prompt.

One prompt per class (CoOp) or per (class, group) (GroupCoOp). The context is either shared
by all prompts or one per prompt. Initialisation from a phrase places the phrase's token
embeddings in the last slots (random N(0, 0.02) before them when M is longer than the
phrase). The name part stays frozen text, so a group prompt can carry its attribute words
("round shape on water"). Text features come through the backbone's embedding path
(`backbone.encode_text_embeddings`), cut after the last pooled token where the encoder is
causal. The learner knows the prompt layout only through the backbone protocol (special
tokens before the text, where it ends and pools), so it works for every backbone family.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError

FORMAT = "groupcoop-prompts/1"


def check_prompts_fit(backbone, names: list[str], n_ctx: int, init: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and pooled positions of the prompts; one clear line when they cannot fit.

    Cheap (tokenising only): called before feature extraction, so a bad n_ctx or ctx_init is
    refused before any image is read.
    """
    placeholder = " ".join(["X"] * n_ctx)
    ids = backbone.tokenize([f"{placeholder} {name}." for name in names])
    if int(backbone.eos_positions(ids).max()) >= ids.shape[1] - 1:
        raise UserError(f"prompts with n_ctx={n_ctx} context vectors do not fit the text encoder's {ids.shape[1]} "
                        "tokens; use a smaller --set n_ctx=... or shorter class and group names")
    if _content_tokens(backbone, placeholder) != n_ctx:
        raise UserError(f"backbone {backbone.name}: its tokenizer does not read the context placeholder 'X' as one "
                        "token per word; prompt learning cannot place context vectors with it")
    if init:
        k = _content_tokens(backbone, init)
        if k > n_ctx:
            raise UserError(f"ctx_init '{init}' has {k} tokens but n_ctx is {n_ctx}; raise --set n_ctx=... "
                            "or shorten --set ctx_init=...")
    return ids, backbone.pool_positions(ids)


def _content_tokens(backbone, text: str) -> int:
    """How many tokens `text` takes between the special tokens."""
    return int(backbone.eos_positions(backbone.tokenize([text]))[0]) - backbone.prefix_length


class PromptLearner(nn.Module):
    def __init__(self, backbone, names: list[str], n_ctx: int = 16, init: str | None = "a photo of a",
                 shared: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        self.backbone = backbone
        self.names = list(names)
        self.n_ctx = n_ctx
        self.init = init
        self.shared = shared
        self.info: dict = {}  # what else the saved prompts should say (classes, groups, aggregate)
        ids, pool_at = check_prompts_fit(backbone, names, n_ctx, init)
        with torch.no_grad():
            embedded = backbone.token_embeddings(ids)
        start = backbone.prefix_length  # the context follows the special tokens before the text
        length = backbone.text_length(pool_at, ids.shape[1])
        self.register_buffer("prefix", embedded[:, :start].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, start + n_ctx:length].clone(), persistent=False)
        self.register_buffer("pool_at", pool_at, persistent=False)
        ctx = torch.empty(1 if shared else len(names), n_ctx, backbone.token_width, device=self.prefix.device)
        nn.init.normal_(ctx, std=0.02, generator=generator)
        if init:
            phrase = backbone.tokenize([init])
            k = _content_tokens(backbone, init)
            with torch.no_grad():
                ctx[:, n_ctx - k:] = backbone.token_embeddings(phrase)[0, start:start + k]
        self.ctx = nn.Parameter(ctx)

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts' token embeddings (P, L, W), context included, and their pooled positions (P,):
        what the text encoder reads, so that a driver can encode several learners' prompts at once."""
        ctx = self.ctx.expand(len(self.names), -1, -1)
        return torch.cat([self.prefix, ctx, self.suffix], dim=1), self.pool_at

    @property
    def length(self) -> int:
        """Positions each prompt takes (the text encoder reads them all): specials, context, text."""
        return self.prefix.shape[1] + self.n_ctx + self.suffix.shape[1]

    def forward(self) -> torch.Tensor:
        """Text features (P, D), not normalised."""
        x, pool_at = self.prompt_embeddings()
        return self.backbone.encode_text_embeddings(x, pool_at, cut=True)

    def trainable_parameters(self) -> int:
        return self.ctx.numel()

    # -- saving and loading; safetensors + JSON, never pickle ------------------------------

    def metadata(self) -> dict:
        return {"format": FORMAT, "backbone": self.backbone.identity, "names": self.names, "n_ctx": self.n_ctx,
                "init": self.init, "shared": self.shared, **self.info}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"ctx": self.ctx.detach().cpu().contiguous()}, str(folder / "prompts.safetensors"))
        (folder / "prompts.json").write_text(json.dumps(self.metadata(), indent=1))


def nearest_tokens(learner: PromptLearner, k: int = 3) -> list[dict]:
    """The k vocabulary tokens nearest to each learned context vector, as CoOp's
    interpret_prompt.py reads them: Euclidean distance to every row of the frozen
    token-embedding matrix.

    One dict per prompt, `{"prompt": name, "slots": [[k token strings], ...],
    "distances": [[k floats], ...]}` with slots in prompt order (slot 1 right after
    [SOS]) and tokens nearest first; a shared context gives one entry, "shared context".
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    bb = learner.backbone
    with torch.no_grad():
        vocab = bb.vocabulary().detach().float()
        ctx = learner.ctx.detach().to(vocab.device).float()  # (P or 1, M, W)
        dist = torch.cdist(ctx.reshape(-1, ctx.shape[-1]), vocab)  # (P*M, V)
        top = torch.topk(dist, min(k, vocab.shape[0]), dim=1, largest=False)
    ids = top.indices.reshape(ctx.shape[0], ctx.shape[1], -1).cpu()
    dists = top.values.reshape(ctx.shape[0], ctx.shape[1], -1).cpu()
    names = ["shared context"] if learner.shared else list(learner.names)
    return [
        {"prompt": name,
         "slots": [bb.token_text(ids[p, m]) for m in range(ids.shape[1])],
         "distances": [[float(d) for d in dists[p, m]] for m in range(ids.shape[1])]}
        for p, name in enumerate(names)
    ]


def load_prompts(folder: Path, backbone, expect_classes: list[str] | None = None) -> tuple[PromptLearner, dict]:
    """Learned prompts from a run folder, checked against the backbone and class list."""
    folder = Path(folder)
    meta_path, weights_path = folder / "prompts.json", folder / "prompts.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise UserError(f"no learned prompts in {folder}: expected prompts.json and prompts.safetensors from `groupcoop train`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ctx = load_file(str(weights_path))["ctx"]
    except (ValueError, KeyError, SafetensorError, OSError) as err:
        raise UserError(f"cannot read prompts in {folder}: {str(err).splitlines()[0] if str(err) else repr(err)}; "
                        "re-run `groupcoop train`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path} is not a groupcoop prompts file; re-run `groupcoop train`")
    shapes = {"backbone": str, "names": list, "n_ctx": int, "shared": bool}
    for key, kind in shapes.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool) != (kind is bool):
            raise UserError(f"{meta_path}: '{key}' is missing or not a {kind.__name__}; re-run `groupcoop train`")
    if not meta["names"] or not all(isinstance(n, str) for n in meta["names"]) or not 1 <= meta["n_ctx"] <= 64:
        raise UserError(f"{meta_path}: prompt names or n_ctx are damaged; re-run `groupcoop train`")
    if meta["backbone"] != backbone.identity:
        raise UserError(f"prompts in {folder} were learned on backbone {meta['backbone']}, not {backbone.identity}; "
                        "load them with that backbone or train new ones")
    if expect_classes is not None and meta.get("classes") != list(expect_classes):
        raise UserError(f"prompts in {folder} are for classes {meta.get('classes')}, not {list(expect_classes)}; "
                        "use prompts trained on this dataset")
    learner = PromptLearner(backbone, meta["names"], n_ctx=meta["n_ctx"], init=None, shared=meta["shared"])
    if tuple(ctx.shape) != tuple(learner.ctx.shape):
        raise UserError(f"prompts in {folder} have context shape {tuple(ctx.shape)}, expected {tuple(learner.ctx.shape)}")
    with torch.no_grad():
        learner.ctx.copy_(ctx.to(learner.ctx.device))
    return learner, meta
