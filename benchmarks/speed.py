"""Speed benchmark: GroupCoOp's training step, the cut text path and feature extraction, on CPU.

Runs on a real open_clip architecture (ViT-B-16 by default) with seeded random weights, so
no download is needed; speed does not depend on the weights' values. Prints plain-text
(markdown-style) tables and a final table of the project's acceptance targets.

    .venv/bin/python benchmarks/speed.py            # the full run (at most ~10 min on 2 cores)
    .venv/bin/python benchmarks/speed.py --help     # every flag

See benchmarks/README.md for what each table measures.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TARGET_STEP_SPEEDUP = 50.0
TARGET_CUT_SPEEDUP = 3.0
TARGET_EXTRACT_RATIO = 0.85
EQUAL_OUTPUT_TOL = 1e-5


# --- context ----------------------------------------------------------------------------

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class CpuMonitor:
    """How much CPU other processes (and the hypervisor: steal) took while a section ran.

    This machine may be shared: with torch using every core, any other busy process makes
    each parallel op wait for a descheduled thread and the timings balloon. Reported with
    every table so the numbers can be judged."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = self._snap()

    def _snap(self):
        try:
            with open("/proc/stat") as fh:
                f = [int(v) for v in fh.readline().split()[1:]]
            busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)  # user nice system irq softirq steal
            total = sum(f[:8])
        except (OSError, ValueError, IndexError):
            busy = total = None
        t = os.times()
        return time.perf_counter(), busy, total, t.user + t.system + t.children_user + t.children_system

    def other_fraction(self) -> float | None:
        """Share of all cores' time used by anything but this process (and its reaped children)."""
        now = self._snap()
        if now[1] is None or self.start[1] is None or now[2] == self.start[2]:
            return None
        busy = (now[1] - self.start[1]) / self.tick
        total = (now[2] - self.start[2]) / self.tick
        return max(0.0, (busy - (now[3] - self.start[3])) / total)

    def line(self) -> str:
        frac = self.other_fraction()
        if frac is None:
            return "CPU used by other processes during this section: unknown (no /proc/stat)"
        note = "" if frac < 0.05 else "  <-- machine was shared: these timings are inflated"
        return f"CPU used by other processes during this section: {100 * frac:.0f}% of all cores{note}"


def wait_until_idle(limit_s: float, threshold: float = 0.05) -> None:
    """Wait (at most limit_s) for a 3 s window in which other processes use < threshold of the CPU."""
    deadline = time.perf_counter() + limit_s
    while True:
        mon = CpuMonitor()
        time.sleep(3)
        frac = mon.other_fraction()
        if frac is None or frac < threshold:
            return
        if time.perf_counter() > deadline:
            say(f"(machine still busy: {100 * frac:.0f}% of the CPU used by other processes; going on anyway)")
            return


# --- timing -----------------------------------------------------------------------------

@dataclass
class Timing:
    samples: list[float]  # seconds

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def ms(self) -> float:
        return 1e3 * self.median

    def spread(self) -> str:
        return f"{1e3 * min(self.samples):.1f}-{1e3 * max(self.samples):.1f}"


def measure(fn, repeats: int, warmup: int, min_time: float) -> Timing:
    """Median-friendly samples of fn(): `warmup` untimed calls, then at least `repeats` timed
    calls, more for fast functions until the timed calls add up to `min_time` seconds."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    while len(samples) < repeats or (sum(samples) < min_time and len(samples) < 10_000):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(samples)


def table(headers: list[str], rows: list[list[str]]) -> str:
    cells = [headers] + rows
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(headers))]
    def line(r):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def say(text: str = "") -> None:
    print(text, flush=True)


# --- prompts ----------------------------------------------------------------------------

class FullLengthPrompts:
    """The same prompts as a PromptLearner (same context parameter), but built on all of the
    text encoder's tokens, as the original CoOp code does: [SOS] ctx name . [EOS] + padding."""

    def __init__(self, learner):
        bb = learner.backbone
        placeholder = " ".join(["X"] * learner.n_ctx)
        ids = bb.tokenize([f"{placeholder} {name}." for name in learner.names])
        with torch.no_grad():
            embedded = bb.token_embeddings(ids)
        self.learner = learner
        self.suffix = embedded[:, 1 + learner.n_ctx:].clone()
        self.pool_at = bb.pool_positions(ids)
        assert torch.equal(self.pool_at, learner.pool_at)
        assert torch.equal(embedded[:, :1], learner.prefix)

    @property
    def length(self) -> int:
        return 1 + self.learner.n_ctx + self.suffix.shape[1]

    def __call__(self) -> torch.Tensor:
        lr = self.learner
        ctx = lr.ctx.expand(len(lr.names), -1, -1)
        x = torch.cat([lr.prefix, ctx, self.suffix], dim=1)
        return lr.backbone.encode_text_embeddings(x, self.pool_at, cut=False)


def group_prompt_names() -> list[str]:
    """GroupCoOp's prompts for synth-waterbirds: 2 classes x 2 background groups."""
    from groupcoop.data.world.datasets import make_task_dataset

    ds = make_task_dataset("synth-waterbirds")
    return [phrase.format(c) for c in ds.class_names for phrase in ds.attribute_phrases[0]]


def many_prompt_names(n: int) -> list[str]:
    """n distinct group-style prompt names ("red circle on water") from the synthetic world."""
    from groupcoop.data.world.attributes import BACKGROUNDS, COLOURS, SHAPES, SIZES

    names = [f"{z} {c} {s} on {b}" for b in BACKGROUNDS for c in COLOURS for s in SHAPES for z in SIZES]
    if n > len(names):
        raise SystemExit(f"--many-prompts is at most {len(names)}")
    return names[:n]


# --- 1. training step -------------------------------------------------------------------

def bench_step(bb, args, timing_kw) -> dict:
    from groupcoop.data.world.datasets import make_task_dataset
    from groupcoop.data.world.render import SyntheticImages
    from groupcoop.methods.prompts import PromptLearner

    names = group_prompt_names()
    learner = PromptLearner(bb, names, n_ctx=args.n_ctx, init="a photo of a", shared=False,
                            generator=torch.Generator().manual_seed(0))
    full = FullLengthPrompts(learner)
    scale = bb.logit_scale
    # CoOp's defaults: SGD, lr 0.002, momentum 0.9 (the optimizer's cost is negligible either way)
    opt = torch.optim.SGD([learner.ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)

    # reference style: a batch of real (synthetic) images, preprocessed as CoOp's loader would
    ds = make_task_dataset("synth-waterbirds")
    src = SyntheticImages(ds.images.table[:args.batch], ds.images.seed)
    images = torch.stack([bb.preprocess(src.load(i)) for i in range(len(src))])
    targets = torch.randint(0, len(names), (args.batch,), generator=gen)

    def reference_step():
        with torch.no_grad():
            img = F.normalize(bb.model.encode_image(images), dim=-1)
        text = F.normalize(full(), dim=-1)
        loss = F.cross_entropy(scale * img @ text.T, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # ours: a bank of cached, normalised image features; each step indexes a batch of it
    n_train = 4795  # synth-waterbirds' training split size
    dim = bb.embed_dim
    bank = F.normalize(torch.randn(n_train, dim, generator=gen), dim=-1)
    bank_targets = torch.randint(0, len(names), (n_train,), generator=gen)

    def ours_step():
        idx = torch.randint(0, n_train, (args.batch,), generator=gen)
        text = F.normalize(learner(), dim=-1)
        loss = F.cross_entropy(scale * bank[idx] @ text.T, bank_targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    mon = CpuMonitor()
    say(f"timing the CoOp-reference-style step (image encoder on {args.batch} images + {full.length}-token text) ...")
    ref = measure(reference_step, **timing_kw)
    say("timing the groupcoop step (cached features + cut text) ...")
    ours = measure(ours_step, **timing_kw)
    cut_len = int(learner.pool_at.max()) + 1
    speedup = ref.median / ours.median
    say()
    say(f"## 1. Training step: {len(names)} prompts (2 classes x 2 groups), M={args.n_ctx}, batch {args.batch}")
    say()
    say(table(
        ["path", "per step", "text tokens", "ms/step (median)", "min-max ms", "samples"],
        [["CoOp-reference style", "image encoder (no_grad) + text fwd/bwd + SGD", str(full.length),
          f"{ref.ms:.1f}", ref.spread(), str(len(ref.samples))],
         ["groupcoop (ours)", "cached features + text fwd/bwd + SGD", str(cut_len),
          f"{ours.ms:.1f}", ours.spread(), str(len(ours.samples))]]))
    say()
    say(f"speedup per step: {speedup:.1f}x")
    say(f"prompts: {', '.join(names)}")
    say(mon.line())
    say()
    return {"step_speedup": speedup}


# --- 2. text forward+backward, cut vs 77 tokens -----------------------------------------

def bench_text(bb, args, timing_kw) -> dict:
    from groupcoop.methods.prompts import PromptLearner

    mon = CpuMonitor()
    rows, cut_rows, worst_diff = [], [], 0.0
    for label, names in (("GroupCoOp-sized", group_prompt_names()),
                         ("many prompts", many_prompt_names(args.many_prompts))):
        learner = PromptLearner(bb, names, n_ctx=args.n_ctx, init="a photo of a", shared=False,
                                generator=torch.Generator().manual_seed(1))
        full = FullLengthPrompts(learner)
        with torch.no_grad():
            out_cut, out_full = learner(), full()
        diff = float((out_cut - out_full).abs().max())
        assert out_cut.dtype == torch.float32 and out_full.dtype == torch.float32
        assert diff <= EQUAL_OUTPUT_TOL, f"cut and full text outputs differ by {diff} > {EQUAL_OUTPUT_TOL}"
        # gradients w.r.t. the context must agree as well
        grads = []
        for fn in (learner, full):
            learner.ctx.grad = None
            fn().square().mean().backward()
            grads.append(learner.ctx.grad.clone())
        gdiff = float((grads[0] - grads[1]).abs().max())
        gscale = float(grads[1].abs().max())

        def fwd_bwd(fn):
            def run():
                learner.ctx.grad = None
                fn().square().mean().backward()
            return run

        say(f"timing text fwd+bwd, {len(names)} prompts, cut / {full.length} tokens ...")
        t_cut = measure(fwd_bwd(learner), **timing_kw)
        t_full = measure(fwd_bwd(full), **timing_kw)
        speedup = t_full.median / t_cut.median
        worst_diff = max(worst_diff, diff)
        cut_rows.append((len(names), speedup, diff))
        cut_len = int(learner.pool_at.max()) + 1
        rows.append([f"{len(names)} ({label})", f"{cut_len} / {full.length}", f"{t_cut.ms:.1f}", f"{t_full.ms:.1f}",
                     f"{speedup:.2f}x", f"{diff:.2e}", f"{gdiff:.2e} (of {gscale:.1e})",
                     f"{len(t_cut.samples)}/{len(t_full.samples)}"])
    say()
    say(f"## 2. Text encoder forward+backward (w.r.t. the context), M={args.n_ctx}: cut after [EOS] vs all tokens")
    say()
    say(table(["prompts", "tokens cut/full", "cut ms", "full ms", "speedup", "max abs out diff", "max abs grad diff",
               "samples"], rows))
    say()
    say(f"outputs equal within {EQUAL_OUTPUT_TOL:g} (fp32): yes, worst max abs diff = {worst_diff:.2e}")
    say(mon.line())
    say()
    return {"cut_rows": cut_rows}


# --- 3. extraction throughput -----------------------------------------------------------

def bench_extract(bb, args) -> dict:
    from groupcoop.data.world.datasets import make_task_dataset
    from groupcoop.data.world.render import SyntheticImages
    from groupcoop.features.decode import default_workers
    from groupcoop.features.extract import extract_features

    ds = make_task_dataset("synth-waterbirds")
    src = SyntheticImages(ds.images.table[:args.images], ds.images.seed)
    n = len(src)
    workers = default_workers() if args.workers is None else args.workers
    say(f"preloading {n} preprocessed images for the bare encoder ...")
    preloaded = torch.stack([bb.preprocess(src.load(i)) for i in range(n)])
    say(f"  tensor {tuple(preloaded.shape)}")

    def bare():
        out = [bb.encode_images(preloaded[s:s + args.batch]) for s in range(0, n, args.batch)]
        return torch.cat(out)

    def extract() -> torch.Tensor:
        """extract_features into a fresh cache; its rows are read before the cache folder goes."""
        with tempfile.TemporaryDirectory(prefix="groupcoop-bench-") as tmp:
            feats = extract_features(bb, src, cache_dir=tmp, batch_size=args.batch, workers=args.workers,
                                     progress=False)
            return feats.rows(slice(None))  # a `Features` (row blocks on disk), read as one (n, d) tensor

    mon = CpuMonitor()
    for _ in range(args.warmup):  # warm the encoder up on one batch
        bb.encode_images(preloaded[:args.batch])
    t_bare, t_ext = [], []
    feats_bare = feats_ext = None
    for r in range(args.extract_repeats):  # alternate, so drifts hit both sides alike
        say(f"  repeat {r + 1}/{args.extract_repeats}: bare encoder ...")
        t0 = time.perf_counter()
        feats_bare = bare()
        t_bare.append(time.perf_counter() - t0)
        say(f"  repeat {r + 1}/{args.extract_repeats}: extract_features ...")
        t0 = time.perf_counter()
        feats_ext = extract()
        t_ext.append(time.perf_counter() - t0)
    bare_ips = n / statistics.median(t_bare)
    ext_ips = n / statistics.median(t_ext)
    ratio = ext_ips / bare_ips
    # extract_features' rows are L2-normalised: compare with the bare encoder's, normalised alike
    diff = float((torch.nn.functional.normalize(feats_bare.float(), dim=-1) - feats_ext).abs().max())
    say()
    say(f"## 3. Feature extraction: {n} synthetic images -> {preloaded.shape[-1]} px, batch {args.batch}")
    say()
    say(table(["path", "what runs", "images/s (median)", "s per run (all)", "runs"],
              [["bare image encoder", "preloaded preprocessed tensor, inference mode", f"{bare_ips:.2f}",
                ", ".join(f"{t:.1f}" for t in t_bare), str(len(t_bare))],
               ["extract_features", f"render+preprocess in {workers} DataLoader worker(s), fresh cache dir, "
                f"shard write", f"{ext_ips:.2f}", ", ".join(f"{t:.1f}" for t in t_ext), str(len(t_ext))]]))
    say()
    say(f"extract_features / bare encoder: {100 * ratio:.1f}% of the images/s; max abs feature diff = {diff:.2e}")
    say(mon.line())
    say()
    return {"extract_ratio": ratio}


# --- main -------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    cores = cpu_count()
    p = argparse.ArgumentParser(
        description="Speed benchmark of groupcoop on CPU: (1) time per training step, CoOp-reference style "
                    "(image encoder + 77-token text each step) vs groupcoop (cached image features + text cut "
                    "after [EOS]); (2) text forward+backward with and without the cut, with an output-equality "
                    "check; (3) extract_features throughput vs the bare image encoder. Ends with a PASS/FAIL "
                    "table of the project's speed targets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="ViT-B-16",
                   help="open_clip architecture, built with seeded random weights (no download)")
    p.add_argument("--batch", type=int, default=32,
                   help="images per training step, and per encoder batch in the extraction benchmark")
    p.add_argument("--repeats", type=int, default=3,
                   help="minimum timed repeats of each measurement in tables 1 and 2; the median is reported")
    p.add_argument("--min-time", type=float, default=3.0,
                   help="fast measurements keep repeating until their timed repeats add up to this many seconds "
                        "(so millisecond-scale timings get many samples)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed warm-up calls before each measurement (and encoder batches before table 3)")
    p.add_argument("--n-ctx", type=int, default=16, help="context vectors per prompt (M)")
    p.add_argument("--many-prompts", type=int, default=100,
                   help="prompt count of the second row of table 2 (the first row is GroupCoOp-sized: 4 prompts)")
    p.add_argument("--images", type=int, default=256,
                   help="synthetic images for the extraction benchmark (256 takes about a minute per run on 2 cores)")
    p.add_argument("--extract-repeats", type=int, default=2,
                   help="runs of each extraction path (bare encoder and extract_features, alternated); median reported")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers for extract_features (default: its own default, min(4, cores-1))")
    p.add_argument("--threads", type=int, default=cores,
                   help="torch.set_num_threads (default: the CPU cores available to this process)")
    p.add_argument("--only", default="step,text,extract",
                   help="comma-separated subset of the benchmarks to run: step, text, extract")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before starting, wait up to this many seconds for the machine to be idle (other "
                        "processes using < 5%% of the CPU); useful on a shared machine")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a target is missed")
    args = p.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.only - {"step", "text", "extract"}
    if unknown:
        p.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}; choose from step, text, extract")
    if args.batch < 1 or args.repeats < 1 or args.images < 1 or args.extract_repeats < 1 or args.warmup < 0:
        p.error("--batch, --repeats, --images and --extract-repeats must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    import open_clip

    from groupcoop.backbones.families import load_backbone

    say("# groupcoop speed benchmark")
    say()
    say(table(["setting", "value"], [
        ["torch", torch.__version__],
        ["open_clip", open_clip.__version__],
        ["python", platform.python_version()],
        ["CPU model", cpu_model()],
        ["CPU cores available", str(cpu_count())],
        ["torch threads", str(torch.get_num_threads())],
        ["device", "cpu, float32"],
        ["backbone", f"{args.backbone}, random weights (seeded)"],
        ["batch", str(args.batch)],
        ["repeats / min-time / warm-up", f"{args.repeats} / {args.min_time:g} s / {args.warmup}"],
    ]))
    say()
    if args.wait_idle > 0:
        say(f"waiting up to {args.wait_idle:g} s for an idle machine ...")
        wait_until_idle(args.wait_idle)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    whole = CpuMonitor()
    torch.manual_seed(0)
    bb = load_backbone(args.backbone, "random")
    timing_kw = {"repeats": args.repeats, "warmup": args.warmup, "min_time": args.min_time}

    results: dict = {}
    if "step" in args.only:
        results.update(bench_step(bb, args, timing_kw))
    if "text" in args.only:
        results.update(bench_text(bb, args, timing_kw))
    if "extract" in args.only:
        results.update(bench_extract(bb, args))

    rows, failed = [], False
    def target(name, key, fmt, goal, ok):
        nonlocal failed
        if key not in results:
            rows.append([name, goal, "not run", "-"])
            return
        passed = ok(results[key])
        failed |= not passed
        rows.append([name, goal, fmt(results[key]), "PASS" if passed else "FAIL"])
    target("training step speedup over CoOp-reference style", "step_speedup", lambda v: f"{v:.1f}x",
           f">= {TARGET_STEP_SPEEDUP:g}x", lambda v: v >= TARGET_STEP_SPEEDUP)
    for n, speedup, diff in results.get("cut_rows", [(None, None, None)]):
        if n is None:
            rows.append(["cut text fwd+bwd vs 77 tokens, equal output", f">= {TARGET_CUT_SPEEDUP:g}x, "
                         f"diff <= {EQUAL_OUTPUT_TOL:g}", "not run", "-"])
            continue
        results[f"cut{n}"] = (speedup, diff)
        target(f"cut text fwd+bwd vs 77 tokens, {n} prompts, equal output", f"cut{n}",
               lambda v: f"{v[0]:.2f}x, max abs diff {v[1]:.1e}", f">= {TARGET_CUT_SPEEDUP:g}x, diff <= {EQUAL_OUTPUT_TOL:g}",
               lambda v: v[0] >= TARGET_CUT_SPEEDUP and v[1] <= EQUAL_OUTPUT_TOL)
    target("extract_features images/s vs bare encoder", "extract_ratio", lambda v: f"{100 * v:.1f}%",
           f">= {100 * TARGET_EXTRACT_RATIO:g}%", lambda v: v >= TARGET_EXTRACT_RATIO)
    say("## Acceptance targets")
    say()
    say(table(["target", "goal", "measured", "result"], rows))
    say()
    say(f"total wall time: {time.perf_counter() - start:.0f} s; "
        + whole.line().replace("during this section", "during the whole run")
        + (f"; load average at start {load[0]:.2f}" if load else ""))
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
