"""Pretrain the bundled tiny CLIP (groupcoop-tiny) contrastively on the synthetic world.

    python scripts/pretrain_tiny.py --out src/groupcoop/assets/groupcoop-tiny.safetensors

Seeded and deterministic on a given device; about 1500 steps of batch 256 by default.
Prints the zero-shot accuracy on held-out renders for shape, colour, background and size.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from groupcoop.backbone import TINY, load_backbone
from groupcoop.data import synthetic

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), as the tiny model's preprocess does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


class Batches(torch.utils.data.Dataset):
    def __init__(self, seed: int, steps: int, batch: int):
        self.seed, self.steps, self.batch = seed, steps, batch

    def __len__(self):
        return self.steps

    def __getitem__(self, step):
        images, captions = synthetic.sample_pretraining_batch(self.seed, step, self.batch)
        return to_tensor(images), captions


@torch.no_grad()
def zero_shot_report(backbone, n: int = 2000) -> dict[str, float]:
    images, labels = synthetic.heldout_renders(n)
    feats = torch.cat([backbone.encode_images(to_tensor(images[i:i + 500]).to(backbone.device), normalize=True)
                       for i in range(0, n, 500)])
    report = {}
    for attribute in synthetic.ATTRIBUTES:
        prompts = synthetic.attribute_prompts(attribute)
        text = torch.stack([F.normalize(backbone.encode_text(p, normalize=True).mean(0), dim=-1)
                            for p in prompts.values()])
        pred = (feats @ text.T).argmax(1).cpu().numpy()
        report[attribute] = float((pred == labels[attribute]).mean())
    return report


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
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    backbone = load_backbone(TINY, "random", device=args.device)
    model = backbone.model.train().requires_grad_(True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    loader = torch.utils.data.DataLoader(Batches(args.seed, args.steps, args.batch), batch_size=None,
                                         shuffle=False, num_workers=args.workers)
    start = time.time()
    for step, (images, captions) in enumerate(loader):
        ids = backbone.tokenize(captions)
        img = F.normalize(model.encode_image(images.to(args.device)), dim=-1)
        txt = F.normalize(backbone.encode_text_embeddings(backbone.token_embeddings(ids), backbone.pool_positions(ids)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        target = torch.arange(len(ids), device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  scale {model.logit_scale.exp().item():.1f}  "
                  f"{time.time() - start:.0f}s", flush=True)
    model.eval().requires_grad_(False)
    print("zero-shot on held-out renders:", zero_shot_report(backbone), flush=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"steps": str(args.steps), "seed": str(args.seed), "batch": str(args.batch)})
    print(f"wrote {args.out} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
