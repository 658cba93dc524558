"""Pretrain the bundled tiny CLIP (groupcoop-tiny) contrastively on the synthetic world.

The loss is CLIP's image-text contrastive loss plus, as in SLIP (Mu, Kirillov, Wagner, Xie,
ECCV 2022), an image-image contrastive term: `--views` scenes of each batch are rendered a second
time (same attributes; position, texture and noise drawn anew) and a small projection head must
match the two renders among the batch. Without it the image features keep only what captions
name; with it they also keep what captions never say (the world's mark), as real CLIP features
encode much their captions never describe (docs/world.md).

    python scripts/pretrain_tiny.py --out src/groupcoop/assets/groupcoop-tiny.safetensors

Seeded and deterministic on a given device; about 1500 steps of batch 256 by default.
Prints the zero-shot accuracy on held-out renders for every attribute of the world and stores
it, with the caption rates, in the weights file's metadata.

Calibration (docs/world.md): `--caption-rate pattern=0.05` overrides how often captions name
an attribute, to measure how held-out zero-shot accuracy follows it; the shipped weights use the
world's own rates (pretraining.CAPTION_RATES).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from groupcoop.backbones.families import TINY, load_backbone
from groupcoop.data.world import card as world
from groupcoop.data.world import pretraining

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), as the tiny model's preprocess does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


class Batches(torch.utils.data.Dataset):
    def __init__(self, seed: int, steps: int, batch: int, rates: dict[str, float], views: int):
        self.seed, self.steps, self.batch, self.rates, self.views = seed, steps, batch, rates, views

    def __len__(self):
        return self.steps

    def __getitem__(self, step):
        images, captions = pretraining.sample_pretraining_batch(self.seed, step, self.batch, self.rates)
        second = pretraining.pretraining_views(self.seed, step, self.batch, self.views)
        return to_tensor(images), captions, to_tensor(second)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views (row i of a matches row i of b)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def parse_rates(pairs: list[str]) -> dict[str, float]:
    rates = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in pretraining.CAPTION_RATES or not value:
            raise SystemExit(f"--caption-rate {pair}: expected ATTR=RATE with ATTR one of {', '.join(pretraining.CAPTION_RATES)}")
        rates[name] = float(value)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where to write the fp16 safetensors weights")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="processes rendering batches ahead")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--views", type=int, default=64, help="scenes per batch rendered twice for the image-image term")
    ap.add_argument("--view-weight", type=float, default=1.0, help="weight of the image-image term (0: CLIP loss only)")
    ap.add_argument("--view-temperature", type=float, default=0.1)
    ap.add_argument("--caption-rate", action="append", default=[], metavar="ATTR=RATE",
                    help="calibration only: override how often captions name ATTR")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    rates = {**pretraining.CAPTION_RATES, **parse_rates(args.caption_rate)}
    print("caption rates:", rates, flush=True)
    torch.manual_seed(args.seed)
    backbone = load_backbone(TINY, "random", device=args.device)
    model = backbone.model.train().requires_grad_(True)
    width = model.visual.output_dim
    head = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.ReLU(), torch.nn.Linear(2 * width, width))
    head.to(args.device)  # the image-image term's projection; not part of the saved model
    named = list(model.named_parameters()) + [(f"view_head.{n}", p) for n, p in head.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    loader = torch.utils.data.DataLoader(Batches(args.seed, args.steps, args.batch, rates, args.views if args.view_weight > 0 else 0), batch_size=None,
                                         shuffle=False, num_workers=args.workers)
    start = time.time()
    for step, (images, captions, second) in enumerate(loader):
        ids = backbone.tokenize(captions)
        features = model.encode_image(images.to(args.device))
        img = F.normalize(features, dim=-1)
        txt = F.normalize(backbone.encode_text_embeddings(backbone.token_embeddings(ids), backbone.pool_positions(ids)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        target = torch.arange(len(ids), device=logits.device)
        clip_loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        loss = clip_loss
        if len(second):
            view_loss = info_nce(head(features[:len(second)]), head(model.encode_image(second.to(args.device))),
                                 args.view_temperature)
            loss = clip_loss + args.view_weight * view_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f} (clip {clip_loss.item():.3f})  "
                  f"scale {model.logit_scale.exp().item():.1f}  "
                  f"{time.time() - start:.0f}s", flush=True)
    model.eval().requires_grad_(False)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"steps": str(args.steps), "seed": str(args.seed), "batch": str(args.batch),
                                             "caption_rates": json.dumps(rates), "views": str(args.views),
                                             "view_weight": str(args.view_weight)})
    shipped = load_backbone(TINY, str(args.out))  # the fp16 file as users get it, through its own preprocessing
    print("zero-shot on held-out renders:", world.zero_shot_accuracy(shipped), flush=True)
    print("linear probe on held-out renders:", world.probe_accuracy(shipped), flush=True)
    print(f"wrote {args.out} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
