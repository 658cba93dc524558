"""The GPU check in one command: extraction, precision, the training step with and without fusion,
a fused Waterbirds-size sweep and the demo, on one CUDA GPU. Prints a table per section and
writes every number to a JSON file.

    python benchmarks/gpu.py                       # every section (~6 min on one H200)
    python benchmarks/gpu.py --quick               # smaller sizes (~3 min)
    python benchmarks/gpu.py --json gpu.json --sections train_step,sweep

Sections; each is independent (one that fails records its error and the next still runs) and the
JSON file is rewritten after each, so a crash or a time limit keeps what was measured:

1. extraction: images/s of the bare image encoder (a preloaded, preprocessed tensor on the GPU)
   against `extract_features` (JPEG decoding in DataLoader workers, a fresh cache, shard writes)
   for ViT-B-16 and ViT-L-14 with seeded random weights, in fp32, bf16 and fp16 autocast, alternating.
2. agreement: how closely bf16 and fp16 image features agree with fp32 on the same images
   (cosine of the normalised features: min and mean; max abs difference).
3. train_step: k GroupCoOp runs of 4 prompts (n_ctx 4) stepped one by one against the same k
   runs fused into one text-encoder call, 4 to 256 prompts in all, ViT-B-16 and ViT-L-14 text
   towers, batches of 128 cached features; and the dry-run cost model's constants fitted to it
   (each architecture's `text_call_s` in backbones/families.py, `sweeps.cost.GPU_RUN_STEP_S`) beside
   their assumed values.
4. sweep: the learned-prompt runs of one (dataset, backbone) of the paper presets but JTT (whose
   second run on random features would upsample half the set): CoOp, coop_balanced,
   coop_groupdro and GroupCoOp x 3 seeds on Waterbirds-size random features, ViT-B-16, no early
   stopping, fused against one by one, beside the cost model's estimate for the same runs.
5. demo: `groupcoop demo --device cuda` in a fresh process with a fresh feature cache.

Without a CUDA GPU it exits with status 2 and one line. `--device cpu` runs the sections on the
CPU instead (fp16 skipped), to check the script itself: its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SECTIONS = ("extraction", "agreement", "train_step", "sweep", "demo")
TINY = "groupcoop-tiny"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def sizes(args) -> dict:
    """How much each section does; --quick about halves the run, --images and --prompts override."""
    quick = args.quick
    images = args.images or (512 if quick else 2048)
    return {"images": images, "agreement_images": min(256, images), "repeats": 1 if quick else 2,
            "prompts": args.prompts or ([4, 64] if quick else [4, 16, 64, 256]), "steps": 8 if quick else 20,
            "sweep_epochs": 2 if quick else 10, "sweep_seeds": 2 if quick else 3, "demo_timeout": 300}


def load(name: str, device: str):
    from groupcoop.backbones.families import load_backbone

    return load_backbone(name, None if name == TINY else "random", device=device)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def autocast(device: str, precision: str):
    import torch

    kind = "cuda" if device.startswith("cuda") else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return torch.autocast(kind, dtype=dtype, enabled=precision != "fp32")


def precisions(device: str) -> list[str]:
    return ["fp32", "bf16", "fp16"] if device.startswith("cuda") else ["fp32", "bf16"]


def free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --- sections ---------------------------------------------------------------------------------------

class Images:
    """The synthetic JPEG dataset the image sections read, made once (rendered, 256 px)."""

    def __init__(self, folder: Path):
        self.folder, self.made = folder, 0

    def get(self, n: int):
        from extract import make_dataset

        from groupcoop.data.registry import load_dataset

        root = self.folder / f"images-{n}"
        if not root.is_dir():
            root.mkdir(parents=True)
            make_dataset(root, n)
        return load_dataset("csv", str(root), csv_path="meta.csv", path_col="path", label_col="y")


def preloaded(bb, dataset, n: int, device: str):
    import torch

    batch = torch.stack([bb.preprocess(dataset.images.load(i)) for i in range(n)]).to(device)
    return batch.contiguous(memory_format=torch.channels_last) if device.startswith("cuda") else batch


def encode_all(bb, batch, size: int, device: str, precision: str):
    import torch

    with autocast(device, precision):
        return torch.cat([bb.encode_images(batch[s:s + size]).float() for s in range(0, len(batch), size)])


def section_extraction(args, ctx) -> dict:
    import torch

    from groupcoop.features.decode import default_workers
    from groupcoop.features.extract import extract_features

    n, repeats = ctx["sizes"]["images"], ctx["sizes"]["repeats"]
    dataset = ctx["images"].get(n)
    rows = []
    for arch in args.archs:
        bb = load(arch, args.device)
        if args.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
            bb.tune_for_gpu()  # what extract_features does first; the bare encoder gets it too
        tensor = preloaded(bb, dataset, n, args.device)
        for precision in precisions(args.device):
            def bare():
                encode_all(bb, tensor, args.batch, args.device, precision)

            def extract():
                with tempfile.TemporaryDirectory(dir=ctx["tmp"]) as cache:
                    extract_features(bb, dataset.images, cache_dir=cache, batch_size=args.batch, progress=False,
                                     precision=precision)

            bare()  # warm-up (cuDNN autotuning, allocator)
            t_bare, t_extract = [], []
            for _ in range(repeats):
                t_bare.append(timed(bare, args.device))
                t_extract.append(timed(extract, args.device))
            bare_ips, extract_ips = n / statistics.median(t_bare), n / statistics.median(t_extract)
            rows.append({"arch": arch, "precision": precision, "images": n, "batch": args.batch,
                         "workers": default_workers(args.device), "bare_images_per_s": bare_ips,
                         "extract_images_per_s": extract_ips, "extract_over_bare": extract_ips / bare_ips,
                         "bare_s": t_bare, "extract_s": t_extract})
            ctx["say"](f"  extraction {arch} {precision}: bare {bare_ips:.0f} images/s, "
                       f"extract_features {extract_ips:.0f} images/s")
        del bb, tensor
        free(args.device)
    table = [[r["arch"], r["precision"], f"{r['bare_images_per_s']:.0f}", f"{r['extract_images_per_s']:.0f}",
              f"{100 * r['extract_over_bare']:.0f}%", str(r["workers"])] for r in rows]
    return {"rows": rows, "table": (["arch", "precision", "bare encoder images/s", "extract_features images/s",
                                     "extract / bare", "decode workers"], table)}


def section_agreement(args, ctx) -> dict:
    import torch.nn.functional as F

    n = ctx["sizes"]["agreement_images"]
    dataset = ctx["images"].get(n)
    rows = []
    for arch in args.archs:
        bb = load(arch, args.device)
        tensor = preloaded(bb, dataset, n, args.device)
        reference = F.normalize(encode_all(bb, tensor, args.batch, args.device, "fp32"), dim=-1)
        for precision in precisions(args.device)[1:]:
            feats = F.normalize(encode_all(bb, tensor, args.batch, args.device, precision), dim=-1)
            cos = (feats * reference).sum(-1)
            rows.append({"arch": arch, "precision": precision, "images": n, "cosine_min": float(cos.min()),
                         "cosine_mean": float(cos.mean()), "max_abs_diff": float((feats - reference).abs().max())})
        del bb, tensor
        free(args.device)
    table = [[r["arch"], f"{r['precision']} vs fp32", f"{r['cosine_min']:.6f}", f"{r['cosine_mean']:.6f}",
              f"{r['max_abs_diff']:.1e}"] for r in rows]
    return {"rows": rows, "table": (["arch", "features", "cosine min", "cosine mean", "max abs diff"], table)}


def section_train_step(args, ctx) -> dict:
    import numpy as np
    from fused import run_settings
    from train_step import waterbirds_like

    from groupcoop.runs.fusion import step_together
    from groupcoop.runs.pipeline import plan_run
    from groupcoop.backbones.families import cost_facts
    from groupcoop.sweeps.cost import GPU_RUN_STEP_S

    steps = ctx["sizes"]["steps"]
    rows, fits = [], {}
    for arch in args.archs:
        bb = load(arch, args.device)
        prep = waterbirds_like(bb, scale=2.0)  # 75 batches of 128 a run: no epoch ends while timing
        for total in ctx["sizes"]["prompts"]:
            k = max(1, total // 4)
            settings = run_settings(prep, arch, ["groupcoop"], k, 1)
            runs = [plan_run(prep, s, log=lambda _: None).start() for s in settings]
            for run in runs:
                run.start()

            def one_by_one():
                for run in runs:
                    run.next_batch()
                    run.loss(run.rows.encode()).backward()
                    run.step()

            def fused():
                for run in runs:
                    run.next_batch()
                step_together(runs)

            one_by_one(), fused()  # warm-up
            samples = [(timed(one_by_one, args.device), timed(fused, args.device)) for _ in range(steps)]  # alternate
            t_alone, t_fused = (statistics.median(s) for s in zip(*samples))
            rows.append({"arch": arch, "runs": k, "prompts": 4 * k, "tokens": runs[0].rows.learner.length,
                         "one_by_one_ms": 1e3 * t_alone, "fused_ms": 1e3 * t_fused, "speedup": t_alone / t_fused})
            ctx["say"](f"  train step {arch}, {k} runs x 4 prompts: one by one {1e3 * t_alone:.1f} ms, "
                       f"fused {1e3 * t_fused:.1f} ms")
            del runs
        mine = [r for r in rows if r["arch"] == arch]
        if len(mine) >= 2:  # fused step = call floor + per-run cost x runs (4 prompts each)
            slope, floor = np.polyfit([r["runs"] for r in mine], [r["fused_ms"] / 1e3 for r in mine], 1)
            fits[arch] = {"text_call_s_fitted": float(floor), "per_run_s_fitted": float(slope),
                          "one_run_step_s": mine[0]["one_by_one_ms"] / 1e3 / mine[0]["runs"],
                          "assumed_text_call_s": getattr(cost_facts(arch), "text_call_s", None),
                          "assumed_run_step_s": GPU_RUN_STEP_S}
        del bb, prep
        free(args.device)
    table = [[r["arch"], str(r["runs"]), str(r["prompts"]), str(r["tokens"]), f"{r['one_by_one_ms']:.1f}",
              f"{r['fused_ms']:.1f}", f"{r['speedup']:.2f}x"] for r in rows]
    for arch, f in fits.items():
        ctx["say"](f"  cost model, {arch}: fused step = {1e3 * f['text_call_s_fitted']:.2f} ms + "
                   f"{1e3 * f['per_run_s_fitted']:.2f} ms per run of 4 prompts (assumed: call "
                   f"{1e3 * (f['assumed_text_call_s'] or float('nan')):.1f} ms, run {1e3 * f['assumed_run_step_s']:.1f} ms "
                   "+ its prompts' FLOPs)")
    return {"rows": rows, "cost_model_fit": fits,
            "table": (["text tower", "runs", "prompts", "tokens", "one by one ms/step", "fused ms/step", "speedup"],
                      table)}


def section_sweep(args, ctx) -> dict:
    from fused import max_differences
    from train_step import waterbirds_like

    from groupcoop.runs.fusion import DEFAULT_MAX_PROMPTS, fit_runs
    from groupcoop.runs.pipeline import check_run
    from groupcoop.runs.settings import make_settings
    from groupcoop.sweeps.cost import fused_pass_seconds, step_seconds, TrainingCost

    arch = args.archs[0]
    epochs, seeds = ctx["sizes"]["sweep_epochs"], ctx["sizes"]["sweep_seeds"]
    bb = load(arch, args.device)
    prep = waterbirds_like(bb, scale=args.sweep_scale)
    methods = ["coop", "coop_balanced", "coop_groupdro", "groupcoop"]
    settings = [check_run(make_settings({"dataset": prep.dataset.name, "backbone": arch, "method": m, "seed": s,
                                         "groups": "gt", "hyperparameters": {"epochs": epochs, "patience": epochs}}),
                          prep.dataset, bb)[1] for m in methods for s in range(seeds)]
    out = {}
    for fuse in (True, False):
        start = time.perf_counter()
        runs = fit_runs(prep, settings, log=lambda _: None, fuse=fuse)
        sync(args.device)
        out[fuse] = (time.perf_counter() - start, runs)
        ctx["say"](f"  sweep {'fused' if fuse else 'one by one'}: {out[fuse][0]:.1f} s")
    n_train = int((prep.dataset.split == 0).sum())
    costs = [TrainingCost(epochs * -(-n_train // s.params.batch_size), len(r.head.row_names), r.learner.length)
             for s, r in zip(settings, out[True][1])]
    modelled = {"fused_s": fused_pass_seconds(arch, costs, DEFAULT_MAX_PROMPTS) if arch in ctx["model_archs"] else None,
                "one_by_one_s": sum(c.steps * step_seconds(arch, [c]) for c in costs)
                if arch in ctx["model_archs"] else None}
    wga, avg, head = max_differences(out[False][1], out[True][1])
    row = {"arch": arch, "runs": len(settings), "epochs": epochs, "train_rows": n_train,
           "prompts": sum(c.prompts for c in costs), "fused_s": out[True][0], "one_by_one_s": out[False][0],
           "speedup": out[False][0] / out[True][0], "max_diff_test_wga": wga, "max_diff_test_avg": avg,
           "max_diff_head": head, "model_fused_s": modelled["fused_s"], "model_one_by_one_s": modelled["one_by_one_s"]}
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    table = [[arch, f"{len(settings)} x {epochs} epochs", f"{row['one_by_one_s']:.1f}", f"{row['fused_s']:.1f}",
              f"{row['speedup']:.2f}x", f"{wga:.1e} / {avg:.1e}", fmt(modelled["one_by_one_s"]),
              fmt(modelled["fused_s"])]]
    return {"rows": [row], "table": (["backbone", "runs", "one by one s", "fused s", "speedup",
                                      "max |diff| test WGA / avg", "model: one by one s", "model: fused s"], table)}


def section_demo(args, ctx) -> dict:
    with tempfile.TemporaryDirectory(dir=ctx["tmp"]) as tmp:
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, "-m", "groupcoop", "demo", "--device", args.device, "--out", f"{tmp}/demo",
               "--cache-dir", f"{tmp}/cache", "--quiet"]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=ctx["sizes"]["demo_timeout"])
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"groupcoop demo exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        methods = sorted(json.loads(Path(f"{tmp}/demo/summary.json").read_text()))
    command = f"groupcoop demo --device {args.device}"
    return {"rows": [{"command": command, "seconds": seconds, "methods": methods, "stdout": done.stdout[-4000:]}],
            "table": (["command", "wall s (fresh cache: extraction included)", "methods"],
                      [[command, f"{seconds:.1f}", ", ".join(methods)]])}


RUNNERS = {"extraction": section_extraction, "agreement": section_agreement, "train_step": section_train_step,
           "sweep": section_sweep, "demo": section_demo}


# --- the command ---------------------------------------------------------------------------------------

def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes (fewer images, prompts, steps and epochs)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of: " + ", ".join(SECTIONS))
    p.add_argument("--json", default=None, help="where to write the numbers (default gpu-benchmark-<time>.json); "
                   "an existing file is never replaced")
    p.add_argument("--archs", default="ViT-B-16,ViT-L-14", help="open_clip architectures (random weights)")
    p.add_argument("--batch", type=int, default=256, help="image batch for extraction")
    p.add_argument("--images", type=int, default=None, help="images for extraction (default 2048, --quick 512)")
    p.add_argument("--prompts", default=None, help="prompt counts of the training step, comma-separated "
                   "(default 4,16,64,256, --quick 4,64)")
    p.add_argument("--sweep-scale", type=float, default=1.0, help="Waterbirds' group sizes times this in the sweep")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N; cpu only checks that the script runs")
    p.add_argument("--tmp", default=None, help="folder for the temporary images and caches")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section {unknown[0]}; choose from {', '.join(SECTIONS)}")
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.prompts = [int(v) for v in args.prompts.split(",")] if args.prompts else None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu.py: no CUDA GPU is visible to torch here (torch.cuda.is_available() is False); run it on a "
              "machine with one (or --device cpu to check the script itself)", file=sys.stderr)
        return 2
    path = Path(args.json or f"gpu-benchmark-{time.strftime('%Y%m%d-%H%M%S')}.json")
    if path.exists():
        print(f"gpu.py: {path} exists; give another --json (this script never replaces a file)", file=sys.stderr)
        return 2
    import open_clip

    from groupcoop.backbones.families import cost_facts
    from speed import cpu_count, cpu_model, say, table

    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "none (--device cpu)"
    data = {"machine": {"gpu": gpu, "cpu": f"{cpu_model()}, {cpu_count()} cores", "torch": torch.__version__,
                        "cuda": torch.version.cuda, "open_clip": open_clip.__version__, "device": args.device,
                        "quick": args.quick, "archs": args.archs},
            "sections": {}}
    say("# groupcoop GPU check")
    say()
    say(table(["setting", "value"], [[k, str(v)] for k, v in data["machine"].items()]))
    say()
    write_json(path, data)
    ctx = {"sizes": sizes(args), "say": say, "model_archs": {a for a in args.archs if cost_facts(a)}}
    start_all = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="groupcoop-gpu-") as tmp:
        ctx["tmp"], ctx["images"] = tmp, Images(Path(tmp))
        for name in args.sections:
            say(f"## {name}")
            start = time.perf_counter()
            try:
                result = RUNNERS[name](args, ctx)
                headers, rows = result.pop("table")
                say()
                say(table(headers, rows))
                entry = {"status": "ok", **result}
            except Exception as err:  # noqa: BLE001 -- a failed section must not lose the others' numbers
                say(f"  FAILED: {type(err).__name__}: {err}")
                entry = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc()[-4000:]}
                free(args.device)
            entry["seconds"] = time.perf_counter() - start
            data["sections"][name] = entry
            write_json(path, data)
            say(f"({name}: {entry['status']}, {entry['seconds']:.0f} s)")
            say()
    say("## summary")
    say()
    say(table(["section", "status", "seconds"], [[n, e["status"], f"{e['seconds']:.0f}"]
                                                 for n, e in data["sections"].items()]))
    say()
    say(f"total {time.perf_counter() - start_all:.0f} s; numbers in {path}")
    failed = [n for n, e in data["sections"].items() if e["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
