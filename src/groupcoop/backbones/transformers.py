"""The Hugging Face transformers adapter: `CLIPModel` and `SiglipModel` checkpoints, by hub id or
by a folder written with `save_pretrained`, spelled `transformers:<id-or-folder>`.

Needs the optional extra: `pip install groupcoop[transformers]`. The checkpoint's own
tokenizer and image processor are used (padding to the text encoder's full length, as both
families were trained). The text encoder runs from given token embeddings through the model's
own forward: the token-embedding layer's output is replaced by them for that call, so
positions, attention masks, layers and final norm are the model's; pooling and projection
are done here:

- CLIP: causal attention, pooled at the [EOS] token (the first end-of-text id, or the largest
  id for checkpoints whose config says eos_token_id = 2, as transformers does), projected by
  `text_projection`; a batch is cut after its last [EOS] (the causal mask makes later
  positions irrelevant).
- SigLIP: bidirectional attention over the whole padded sequence, pooled at its last position
  and projected by the text model's head; no cut. Its scores are sigmoid ones,
  `logit_scale * cos + logit_bias`: the bias is exposed as `logit_bias` and goes into the
  classifier head's rows (a constant per row, so class decisions and softmax class
  probabilities are those of the cosine scores).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .content import check_export_files, digest, folder_files
from .fetch import before_download, in_hub_cache, offline
from .protocol import TRANSFORMERS_PREFIX, Backbone, special_prefix_length
from ..errors import UserError

FAMILIES = {"clip": "CLIPModel", "siglip": "SiglipModel"}  # config.model_type -> the model class we support
EXPORT_WEIGHTS = "model.safetensors"  # what save_pretrained writes for a model saved as one file


class HFImagePreprocess:
    """The checkpoint's image processor as a picklable PIL -> (3, H, W) tensor transform whose
    repr names every setting (the feature cache's key)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        settings = self.processor.to_dict()
        return f"{type(self.processor).__name__}({json.dumps(settings, sort_keys=True, default=str)})"


class TransformersBackbone(Backbone):
    """A frozen transformers CLIPModel or SiglipModel."""

    def __init__(self, model, tokenizer, processor, name: str, identity: str):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = HFImagePreprocess(processor)
        self.name, self.identity = name, identity
        self.weights_path: str | None = None
        self.family = model.config.model_type
        self.causal = self.family == "clip"
        text_config = model.config.text_config
        self._context = int(text_config.max_position_embeddings)
        self._embedding = model.text_model.embeddings.token_embedding
        self._prefix = special_prefix_length(tokenizer)
        if tokenizer.eos_token_id is None:
            raise UserError(f"backbone {name}: its tokenizer has no end-of-text token; prompt learning needs one")
        self._eos_id = int(tokenizer.eos_token_id)
        self._pool_eos_id = getattr(text_config, "eos_token_id", None)  # what transformers' CLIP pools on

    # -- the model ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._embedding.weight.device

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    @property
    def logit_bias(self) -> float | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def to(self, device) -> "TransformersBackbone":
        self.model.to(device)
        return self

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = _pooled(self.model.get_image_features(pixel_values=images.to(self.device)))
        return F.normalize(out, dim=-1) if normalize else out

    # -- text --------------------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def token_width(self) -> int:
        return int(self._embedding.weight.shape[1])

    @property
    def prefix_length(self) -> int:
        return self._prefix

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self._context, truncation=True,
                             return_tensors="pt")["input_ids"]
        return ids.to(self.device)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self._embedding(ids.to(self.device))

    def vocabulary(self) -> torch.Tensor:
        return self._embedding.weight

    def token_text(self, ids) -> list[str]:
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens(ids)]

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids == self._eos_id).int().argmax(dim=-1)

    def pool_positions(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.causal:  # SigLIP pools the last position
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        if self._pool_eos_id == 2:  # transformers' rule for configs from before its eos fix: the largest id
            return ids.argmax(dim=-1)
        return (ids == (self._eos_id if self._pool_eos_id is None else self._pool_eos_id)).int().argmax(dim=-1)

    @property
    def pads_freely(self) -> bool:
        return self.causal  # CLIP; SigLIP attends both ways

    def text_length(self, pool_at: torch.Tensor, length: int) -> int:
        return int(pool_at.max()) + 1 if self.causal else length

    def encode_text_embeddings(self, x: torch.Tensor, pool_at: torch.Tensor, cut: bool = True) -> torch.Tensor:
        if cut:
            x = x[:, :self.text_length(pool_at, x.shape[1])]
        ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)  # only their shape is read
        hook = self._embedding.register_forward_hook(lambda module, args, out: x.to(out.dtype))
        try:
            hidden = self.model.text_model(input_ids=ids).last_hidden_state
        finally:
            hook.remove()
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), pool_at.to(hidden.device)]
        if self.causal:
            return self.model.text_projection(pooled)
        return self.model.text_model.head(pooled)

    # -- export ------------------------------------------------------------------------------------

    def export_model(self, folder: Path) -> dict:
        """The model, its tokenizer and its image processor written with `save_pretrained` (the
        weights as one model.safetensors, whose sha256 the head records), so that transformers'
        `AutoModel.from_pretrained(folder)` and `AutoImageProcessor.from_pretrained(folder)` build it."""
        self.model.save_pretrained(folder, max_shard_size="100000GB")
        self.tokenizer.save_pretrained(folder)
        self.preprocess.processor.save_pretrained(folder)
        files = folder_files(folder)  # config, weights, tokenizer and processor files: all decide predictions
        return {"library": "transformers", "model": self.name, "pretrained": None, "weights": EXPORT_WEIGHTS,
                "weights_sha256": files.get(EXPORT_WEIGHTS), "files_sha256": files}


def _pooled(out) -> torch.Tensor:
    """transformers < 5 returns features, 5 an output whose pooler_output holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _content(source: str, folder: Path | None, config) -> tuple[str, str | None]:
    """(identity, content digest): a folder's model is named by the bytes of all its files (weights,
    config, tokenizer, image processor), wherever the folder is; a hub model by its id and the
    commit it resolved to (a content hash)."""
    if folder is None:
        return f"{TRANSFORMERS_PREFIX}{source}@{getattr(config, '_commit_hash', None) or 'hub'}", None
    content = digest({"files": folder_files(folder)})
    return f"{TRANSFORMERS_PREFIX}{config.model_type}@file:{content[:16]}", content


def load(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> TransformersBackbone:
    """`transformers:<hub id or local folder>` as a frozen backbone."""
    source = name[len(TRANSFORMERS_PREFIX):].strip()
    if not source:
        raise UserError(f"--backbone {name}: give a Hugging Face hub id or a save_pretrained folder after "
                        f"'{TRANSFORMERS_PREFIX}', e.g. {TRANSFORMERS_PREFIX}openai/clip-vit-base-patch32")
    if pretrained is not None:
        raise UserError(f"--pretrained does not apply to {TRANSFORMERS_PREFIX} backbones (the weights are part of "
                        f"{source}); drop --pretrained")
    try:
        import transformers
    except ImportError:
        raise UserError(f"backbone {name} needs the package 'transformers', which is not installed; "
                        "pip install groupcoop[transformers]") from None
    folder = Path(source).expanduser()
    local = folder.is_dir()
    if not local and (source.startswith((".", "/", "~")) or folder.exists()):
        raise UserError(f"--backbone {name}: {folder} is not a folder; give a folder written by save_pretrained "
                        "(config.json, the weights, the tokenizer and image processor files) or a hub id")
    where = str(folder) if local else source
    if not local and not in_hub_cache(source, "config.json"):
        before_download(f"{source} from the Hugging Face hub", name, "download it where there is network access, "
                        f"save_pretrained it to a folder and pass --backbone {TRANSFORMERS_PREFIX}FOLDER")
    cached_only = local or offline()  # transformers' own switch for no network: the hub cache or nothing
    loggers = _quiet(transformers)
    try:
        config = transformers.AutoConfig.from_pretrained(where, local_files_only=cached_only)
        kind = getattr(config, "model_type", None)
        if kind not in FAMILIES:
            raise UserError(f"--backbone {name} is a {kind or 'unknown'} model; groupcoop reads "
                            f"{' and '.join(FAMILIES.values())} checkpoints")
        model_class = getattr(transformers, FAMILIES[kind])
        if local:
            _check_processor_files(name, folder, transformers)
        with torch.random.fork_rng(devices=[]):
            model, report = model_class.from_pretrained(where, local_files_only=cached_only, output_loading_info=True)
        _check_loading_report(name, report)
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, local_files_only=cached_only)
        if local:
            _check_tokenizer_files(name, folder, tokenizer)
        processor = transformers.AutoImageProcessor.from_pretrained(where, local_files_only=cached_only)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - transformers and the hub raise many types; all mean "cannot load"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        if local:
            raise UserError(f"cannot load {name} ({type(err).__name__}: {first}); give a folder written by "
                            "save_pretrained of a CLIPModel or SiglipModel, with its tokenizer and image "
                            "processor") from None
        raise UserError(f"could not load {name} from the Hugging Face hub ({type(err).__name__}: {first}); without "
                        "network access, download it where there is some, save_pretrained it to a folder and pass "
                        f"--backbone {TRANSFORMERS_PREFIX}FOLDER") from None
    finally:
        _restore(loggers)
    identity, content = _content(source, folder if local else None, config)
    backbone = TransformersBackbone(model.to(device), tokenizer, processor, name, identity)
    backbone.content = content
    if local:
        weights = sorted(folder.glob("*.safetensors"))
        backbone.weights_path = str(weights[0]) if len(weights) == 1 else None
    return backbone


# A model is whole or refused: transformers builds a 2-token tokenizer from a folder without tokenizer
# files, and loads weights its config does not fit with only a log line (silenced here), so both are
# checked, with transformers' own lists of the files a tokenizer reads and of the weights it loaded.

def _check_processor_files(name: str, folder: Path, transformers) -> None:
    names = (getattr(transformers.utils, "IMAGE_PROCESSOR_NAME", "preprocessor_config.json"),
             getattr(transformers.utils, "PROCESSOR_NAME", "processor_config.json"))
    if not any((folder / n).is_file() for n in names):
        raise UserError(f"--backbone {name}: {folder} has no image processor file ({names[0]}); save the model's "
                        "processor into it too (processor.save_pretrained(folder))")


def _check_tokenizer_files(name: str, folder: Path, tokenizer) -> None:
    names = sorted(set(getattr(tokenizer, "vocab_files_names", {}).values()))
    if names and not any((folder / n).is_file() for n in names):
        raise UserError(f"--backbone {name}: {folder} has no tokenizer files ({', '.join(names)}); save the model's "
                        "tokenizer into it too (tokenizer.save_pretrained(folder))")


def _check_loading_report(name: str, report: dict) -> None:
    """Weights the architecture lacks or does not use: config.json and the weights do not belong together."""
    kinds = {"missing_keys": "weights its config needs are missing", "unexpected_keys": "weights its config does not use",
             "mismatched_keys": "weights of the wrong shape", "error_msgs": "errors"}
    found = [(what, sorted(str(k) for k in report.get(key) or ())) for key, what in kinds.items()]
    found = [(what, keys) for what, keys in found if keys]
    if found:
        said = "; ".join(f"{len(keys)} {what} ({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})"
                         for what, keys in found)
        raise UserError(f"--backbone {name}: the weights do not fit its config.json: {said}; give a folder whose "
                        "config and weights were saved together (save_pretrained)")


def _quiet(transformers):
    """Its log (the loading report, checked by `_check_loading_report`) and its weights-loading progress
    bar off: stderr is ours, for one line when something is wrong."""
    level, bar = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers, level, bar


def _restore(state) -> None:
    transformers, level, bar = state
    transformers.logging.set_verbosity(level)
    if bar:
        transformers.logging.enable_progress_bar()


def load_export(folder: Path, info: dict, device: str | torch.device = "cpu") -> TransformersBackbone:
    """The model an export folder carries (`TransformersBackbone.export_model`), its files checked first."""
    check_export_files(folder, info)
    return load(f"{TRANSFORMERS_PREFIX}{folder}", device=device)
