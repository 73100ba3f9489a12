"""Speed measurements of the sampler and the trainer, side by side in one process (issue: "at the speed limit").

Each measurement times a callable ``repeats`` times after a warm-up and keeps min/median/max; ratios are formed from
the medians. Everything runs on whatever pipeline it is given: the embedded world on CPU, or the Stable Diffusion 1.4
architecture built from config (random weights, no download) on a GPU (:func:`paper_arch_pipeline`).

``benchmarks/speed.py`` is the command line; ``notebooks/05_performance.ipynb`` plots what it writes.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import pandas as pd

from .sampling import sample_branches, sample_trajectories

__all__ = [
    "Timing",
    "time_it",
    "time_pair",
    "paired_ratio",
    "UnetTimer",
    "machine_info",
    "bench_sampler_vs_pipeline",
    "bench_branching",
    "bench_branch_loop",
    "bench_unet_share_sampling",
    "SamplingParts",
    "branching_bound",
    "flops_per_image",
    "paper_flops",
    "sampling_parts_table",
    "bench_training_share",
    "bench_stage_reload",
    "paper_arch_pipeline",
    "bench_paper_arch",
    "PEAK_TFLOPS",
]


@dataclass
class Timing:
    """Seconds of ``repeats`` timed runs (after ``warmup`` untimed ones)."""

    seconds: list[float]
    work: float = 1.0  # units of work per run (images, trajectories, ...): rates are work / seconds

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def rate(self) -> dict[str, float]:
        """min/median/max of work per second (min rate = slowest run)."""
        rates = sorted(self.work / s for s in self.seconds)
        return {"min": rates[0], "median": statistics.median(rates), "max": rates[-1]}

    def summary(self) -> dict:
        return {"seconds": self.seconds, "work": self.work, "rate": self.rate()}


def _sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def time_it(fn: Callable[[int], object], repeats: int = 5, warmup: int = 1, work: float = 1.0,
            desc: str | None = None) -> Timing:
    """Time ``fn(r)`` (``r`` = repeat index, e.g. a seed) ``repeats`` times after ``warmup`` calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    for w in range(warmup):
        fn(-1 - w)
    seconds = []
    for r in tqdm(range(repeats), desc=desc, leave=False, disable=desc is None):
        _sync()
        t = time.perf_counter()
        fn(r)
        _sync()
        seconds.append(time.perf_counter() - t)
    return Timing(seconds, work)


def time_pair(fa: Callable[[int], object], fb: Callable[[int], object], repeats: int = 5, warmup: int = 1,
              work: float = 1.0, desc: str | None = None) -> tuple[Timing, Timing]:
    """Time two callables with their repeats interleaved (A B, B A, A B, ...), so that a drift of the machine's speed
    during the measurement (other tenants, clock changes) lands on both columns instead of biasing their ratio.
    Read the pair with :func:`paired_ratio`."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    for w in range(warmup):
        fa(-1 - w)
        fb(-1 - w)
    seconds: dict[str, list[float]] = {"a": [], "b": []}
    for r in tqdm(range(repeats), desc=desc, leave=False, disable=desc is None):
        for key in ("ab" if r % 2 == 0 else "ba"):
            fn = fa if key == "a" else fb
            _sync()
            t = time.perf_counter()
            fn(r)
            _sync()
            seconds[key].append(time.perf_counter() - t)
    return Timing(seconds["a"], work), Timing(seconds["b"], work)


def paired_ratio(a: Timing, b: Timing) -> dict[str, float]:
    """Rate of ``a`` over rate of ``b`` repeat by repeat (runs timed back to back by :func:`time_pair`):
    min/median/max of the per-repeat ratios."""
    if len(a.seconds) != len(b.seconds):
        raise ValueError(f"paired timings need equal repeats, got {len(a.seconds)} and {len(b.seconds)}.")
    return _mmm([(a.work / sa) / (b.work / sb) for sa, sb in zip(a.seconds, b.seconds)])


def _ratio(a: Timing, b: Timing) -> dict[str, float]:
    """Rate of ``a`` over rate of ``b``: median of medians, and the extreme pairings as the spread."""
    ra, rb = a.rate(), b.rate()
    return {"median": ra["median"] / rb["median"], "min": ra["min"] / rb["max"], "max": ra["max"] / rb["min"]}


class UnetTimer:
    """Wall time spent inside ``unet.forward`` (hooks; CUDA-synchronised on GPU), to say what share of a loop is
    the network and what is Python and glue around it."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.seconds = 0.0
        self.calls = 0
        self._t0 = 0.0
        self._handles: list = []

    def _pre(self, module, args, kwargs=None):
        _sync()
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        _sync()
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def __enter__(self) -> "UnetTimer":
        self._handles = [self.unet.register_forward_pre_hook(self._pre), self.unet.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        import os

        info["cpu_count"] = os.cpu_count()
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# --------------------------------------------------------------------------------------------------- sampling
def bench_sampler_vs_pipeline(pipe, prompts: list[str], num_steps: int = 20, guidance_scale: float = 5.0,
                              repeats: int = 5) -> dict:
    """Our log-prob sampler (every transition stored) vs ``StableDiffusionPipeline.__call__`` at equal steps, batch
    and CFG, both decoding to image tensors. Goal: images/s ratio >= 0.95."""
    n = len(prompts)

    def ours(r):
        sample_trajectories(pipe, prompts, num_steps=num_steps, guidance_scale=guidance_scale, eta=1.0,
                            generator=torch.Generator().manual_seed(r))

    def stock(r):
        with torch.inference_mode():
            pipe(prompts, num_inference_steps=num_steps, guidance_scale=guidance_scale, eta=1.0, output_type="pt",
                 generator=torch.Generator().manual_seed(r))

    pipe.set_progress_bar_config(disable=True)
    a, b = time_pair(ours, stock, repeats, work=n, desc="sampler | pipeline")
    return {"ours": a.summary(), "diffusers": b.summary(), "ratio": paired_ratio(a, b), "batch": n,
            "steps": num_steps}


class SamplingParts:
    """Split the wall time of sampling calls into UNet forward, VAE decode and text-encoder forward (the rest is
    the scheduler step, noise draws and glue). A context manager: hooks on the UNet and the text encoder, and a
    timed wrapper around ``pipe.vae.decode`` (removed on exit)."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.decode_s = 0.0

    def __enter__(self) -> "SamplingParts":
        decode = self.pipe.vae.decode

        def timed_decode(*a, **kw):
            _sync()
            t = time.perf_counter()
            out = decode(*a, **kw)
            _sync()
            self.decode_s += time.perf_counter() - t
            return out

        self.pipe.vae.decode = timed_decode
        self.unet = UnetTimer(self.pipe.unet).__enter__()
        self.text = UnetTimer(self.pipe.text_encoder).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.unet.__exit__(*exc)
        self.text.__exit__(*exc)
        del self.pipe.vae.decode  # back to the class method

    def _once(self, fn: Callable[[int], object], r: int) -> dict:
        self.decode_s = self.unet.seconds = self.text.seconds = 0.0
        _sync()
        t = time.perf_counter()
        fn(r)
        _sync()
        return {"total_s": time.perf_counter() - t, "unet_s": self.unet.seconds, "decode_s": self.decode_s,
                "text_encoder_s": self.text.seconds}

    def run_pair(self, fa: Callable[[int], object], fb: Callable[[int], object], repeats: int, warmup: int = 1
                 ) -> tuple[list[dict], list[dict]]:
        """:meth:`run` for two callables, repeats interleaved as in :func:`time_pair`."""
        for w in range(warmup):
            fa(-1 - w)
            fb(-1 - w)
        rows: dict[str, list[dict]] = {"a": [], "b": []}
        for r in range(repeats):
            for key in ("ab" if r % 2 == 0 else "ba"):
                rows[key].append(self._once(fa if key == "a" else fb, r))
        return rows["a"], rows["b"]

    def run(self, fn: Callable[[int], object], repeats: int, warmup: int = 1) -> list[dict]:
        """Time ``fn(r)`` ``repeats`` times after ``warmup`` calls: one dict of seconds per timed run."""
        rows = []
        for r in range(-warmup, repeats):
            self.decode_s = self.unet.seconds = self.text.seconds = 0.0
            _sync()
            t = time.perf_counter()
            fn(r)
            _sync()
            total = time.perf_counter() - t
            if r >= 0:
                rows.append({"total_s": total, "unet_s": self.unet.seconds, "decode_s": self.decode_s,
                             "text_encoder_s": self.text.seconds})
        return rows


def _mmm(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def branching_bound(independent_total_s: float, unet_step_s: float, num_steps: int, split_step: int,
                    num_branches: int) -> float:
    """The best trajectories/s ratio branch sampling can reach over independent sampling, given what the
    independent run measured: computing the prefix once per prompt removes ``(1 - 1/B)`` of the prefix's UNet time
    and nothing else (the decode, the text encoder and the branches' steps are the same work in both columns).

    ``unet_step_s`` is the UNet time of one step of the independent batch. With nothing but UNet time this is
    ``T / ((T - s) / B + s)``, 2B / (B + 1) for a split at half the chain; fixed costs pull it towards 1.
    """
    saved = split_step * unet_step_s * (1 - 1 / num_branches)
    if not 0 <= saved < independent_total_s:
        raise ValueError(f"the prefix saving ({saved:.3g} s) must lie in [0, {independent_total_s:.3g}) s.")
    return independent_total_s / (independent_total_s - saved)


def bench_branching(pipe, prompts: list[str], num_branches: int = 5, num_steps: int = 20, repeats: int = 5,
                    guidance_scale: float = 5.0) -> dict:
    """Branch sampling (``len(prompts)`` prefixes, ``num_branches`` branches from half the chain) vs the same number
    of independent trajectories. Goal: trajectories/s ratio >= 1.6 (the prefix is computed once per prompt; the
    ideal with half the chain shared is 2B / (B + 1), 1.67 for B = 5).

    Three ratios: of whole calls (``ratio``: text encoding, denoising, VAE decode), of the denoising chain alone
    (``chain_ratio``: the whole minus the decode, which is the same work in both columns), and the ``bound`` that a
    perfect prefix saving would reach given the independent run's measured decode and other fixed costs.
    """
    split = num_steps // 2
    total = len(prompts) * num_branches
    flat = [p for p in prompts for _ in range(num_branches)]

    def branched(r):
        sample_branches(pipe, prompts, num_branches, split, num_steps=num_steps, guidance_scale=guidance_scale,
                        generator=torch.Generator().manual_seed(r))

    def independent(r):
        sample_trajectories(pipe, flat, num_steps=num_steps, trained_steps=split, guidance_scale=guidance_scale,
                            generator=torch.Generator().manual_seed(r))

    with SamplingParts(pipe) as parts:
        rows_a, rows_b = parts.run_pair(branched, independent, repeats)

    def timing(rows, key=None):
        return Timing([r["total_s"] - (r[key] if key else 0.0) for r in rows], total)

    a, b = timing(rows_a), timing(rows_b)
    chain_a, chain_b = timing(rows_a, "decode_s"), timing(rows_b, "decode_s")
    bounds = [branching_bound(r["total_s"], r["unet_s"] / num_steps, num_steps, split, num_branches) for r in rows_b]
    ideal = 2 * num_branches / (num_branches + 1) if num_steps % 2 == 0 else None
    return {"branched": a.summary(), "independent": b.summary(), "ratio": paired_ratio(a, b),
            "chain_ratio": paired_ratio(chain_a, chain_b), "bound": _mmm(bounds), "ideal": ideal,
            "branched_parts": rows_a, "independent_parts": rows_b,
            "prefixes": len(prompts), "branches": num_branches, "split_step": split, "steps": num_steps}


def bench_branch_loop(pipe, prompts: list[str], num_branches: int = 5, num_steps: int = 20, repeats: int = 5,
                      guidance_scale: float = 5.0) -> dict:
    """Batched branches (one UNet call per step for all) vs the reference's loop over branches."""
    split = num_steps // 2
    total = len(prompts) * num_branches

    def run(loop):
        def f(r):
            sample_branches(pipe, prompts, num_branches, split, num_steps=num_steps, guidance_scale=guidance_scale,
                            generator=torch.Generator().manual_seed(r), branch_loop=loop)
        return f

    a, b = time_pair(run(False), run(True), repeats, work=total, desc="batched | loop")
    return {"batched": a.summary(), "loop": b.summary(), "ratio": paired_ratio(a, b), "prefixes": len(prompts),
            "branches": num_branches}


def bench_unet_share_sampling(pipe, prompts: list[str], num_branches: int = 5, num_steps: int = 20,
                              repeats: int = 5) -> dict:
    """Share of branch-sampling wall time spent inside UNet forward: of the whole call (prompt encoding, prefix,
    branches, VAE decode) and of the denoising loop alone (the whole minus text encoder and VAE decode). Goal >= 90 %.

    ``bound`` is the share with every cost other than the UNet and the decode removed: UNet / (UNet + decode).
    """
    with SamplingParts(pipe) as parts:
        calls0 = parts.unet.calls
        rows = parts.run(lambda r: sample_branches(pipe, prompts, num_branches, num_steps // 2, num_steps=num_steps,
                                                   generator=torch.Generator().manual_seed(r)), repeats)
        calls = (parts.unet.calls - calls0) // (repeats + 1)
    shares = [r["unet_s"] / r["total_s"] for r in rows]
    loop_shares = [r["unet_s"] / (r["total_s"] - r["decode_s"] - r["text_encoder_s"]) for r in rows]
    bounds = [r["unet_s"] / (r["unet_s"] + r["decode_s"]) for r in rows]
    return {"share": _mmm(shares), "denoise_share": _mmm(loop_shares), "bound": _mmm(bounds), "runs": rows,
            "unet_calls_per_run": calls, "prefixes": len(prompts), "branches": num_branches}


def flops_per_image(pipe, context_length: int | None = None) -> dict[str, float]:
    """FLOPs of one image's work: one guided UNet step (2 rows) and one VAE decode, counted by
    ``torch.utils.flop_counter`` (works on ``meta`` tensors too, so the SD-1.4 architecture costs no memory).

    Their ratio sets how far the decode caps the branching ratio and the UNet share whatever the loop does.
    """
    from torch.utils.flop_counter import FlopCounterMode

    p = next(pipe.unet.parameters())
    size = pipe.unet.config.sample_size
    unet = unet_flops(pipe, 1, guidance=True, context_length=context_length or pipe.tokenizer.model_max_length)
    z = torch.zeros(1, pipe.unet.config.in_channels, size, size, device=p.device, dtype=p.dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        pipe.vae.decode(z)
    decode = float(counter.get_total_flops())
    return {"unet_step_gflop": unet / 1e9, "decode_gflop": decode / 1e9, "decode_per_unet_step": decode / unet}


def paper_flops(num_steps: int = 20, num_branches: int = 5) -> dict[str, float]:
    """:func:`flops_per_image` for the SD-1.4 architecture at 512 px, built on the ``meta`` device (no weights, no
    memory, a second on CPU), and the branching bound it implies if UNet and decoder ran at equal FLOP/s."""
    with torch.device("meta"):
        pipe = paper_arch_pipeline(device="meta")
    out = flops_per_image(pipe)
    r, s = out["decode_per_unet_step"], num_steps // 2
    out["branching_bound_equal_flop_rate"] = (num_steps + r) / ((num_steps - s) / num_branches + s + r)
    return out


# --------------------------------------------------------------------------------------------------- training
def bench_training_share(trainer, stages: int = 5) -> dict:
    """Share of a stage's *update* time (PPO epochs) spent in UNet forward + backward, and of its whole time.

    UNet forward time comes from hooks; backward time is the time inside ``accelerator.backward`` (the graph is the
    UNet plus a few element-wise ops of the DDIM step, so this is UNet backward to within those ops).
    """
    acc = trainer.accelerator
    backward = acc.backward
    spent = {"backward": 0.0}

    def timed_backward(loss, **kw):
        _sync()
        t = time.perf_counter()
        backward(loss, **kw)
        _sync()
        spent["backward"] += time.perf_counter() - t

    sample_stage = trainer.sample_stage
    timer = UnetTimer(trainer.pipe.unet)

    def timed_sample_stage(stage):
        before = timer.seconds
        out = sample_stage(stage)
        spent["sample_unet"] += timer.seconds - before
        return out

    rows = []
    acc.backward = timed_backward
    trainer.sample_stage = timed_sample_stage
    try:
        for _ in range(stages):
            spent.update(backward=0.0, sample_unet=0.0)
            timer.seconds = 0.0
            with timer:
                t = time.perf_counter()
                m = trainer.train_stage()
                total = time.perf_counter() - t
            rows.append({"stage": m["stage"], "total_s": total, "sample_s": m["sample_s"], "train_s": m["train_s"],
                         "unet_forward_s": timer.seconds, "sample_unet_s": spent["sample_unet"],
                         "backward_s": spent["backward"]})
    finally:
        acc.backward = backward
        del trainer.sample_stage
    return {"stages": rows}


def bench_stage_reload(make_trainer: Callable[[], object], stages: int = 5, workdir: str | Path | None = None) -> dict:
    """A whole B² stage (sample, reward, select, train) in one process vs the same stage paying what a three-script
    pipeline pays each stage: building the models from disk, attaching LoRA, restoring the checkpoint before, and
    writing it after. ``make_trainer()`` loads the models and returns a fresh trainer."""
    import tempfile

    from .checkpoint import load_checkpoint, save_checkpoint

    workdir = Path(workdir or tempfile.mkdtemp(prefix="b2_bench_"))
    trainer = make_trainer()
    trainer.train_stage()  # warm-up
    inproc = []
    for _ in range(stages):
        t = time.perf_counter()
        trainer.train_stage()
        inproc.append(time.perf_counter() - t)
    ckpt = save_checkpoint(trainer, workdir / "stage")
    stage = trainer.stage
    reload = []
    for _ in range(stages):
        t = time.perf_counter()
        fresh = make_trainer()
        load_checkpoint(fresh, ckpt)
        fresh.stage = stage  # the same stage as before, so both columns time the same work
        fresh.train_stage()
        save_checkpoint(fresh, workdir / "stage_next")
        reload.append(time.perf_counter() - t)
        del fresh
    a, b = Timing(inproc), Timing(reload)
    return {"in_process_s": inproc, "reloaded_s": reload, "ratio": _ratio(a, b)}


# --------------------------------------------------------------------------------------------------- paper size
#: Dense bf16/fp16 tensor-core peak (TFLOP/s) by GPU name fragment, from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
               "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "RTX 4090": 165.0}


def _peak_for(name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def paper_arch_pipeline(reduced: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """Stable Diffusion 1.4's UNet / VAE / CLIP text-encoder *architecture* from config, random weights (no download).

    ``reduced=True`` keeps the structure (4 resolution levels, cross-attention, CFG) at a width and resolution a CPU
    can run in seconds; it is for checking the script, not for numbers about SD.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .models import assemble_pipeline, clip_text_encoder

    torch.manual_seed(seed)
    if reduced:
        ch, text_dim, layers, heads, size, vae_ch = (32, 64, 128, 128), 64, 2, 2, 8, (16, 32, 32, 32)
    else:  # CompVis/stable-diffusion-v1-4 configs
        ch, text_dim, layers, heads, size, vae_ch = (320, 640, 1280, 1280), 768, 12, 12, 64, (128, 256, 512, 512)
    unet = UNet2DConditionModel(
        sample_size=size, in_channels=4, out_channels=4, block_out_channels=ch, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_dim, attention_head_dim=8 if not reduced else 4,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_ch,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, sample_size=size * 8, norm_num_groups=min(32, vae_ch[0]))
    text = clip_text_encoder(text_dim, 4 * text_dim, num_layers=layers, max_length=77, heads=heads)
    pipe = assemble_pipeline(vae, unet, text, max_length=77)
    return pipe.to(device=device, dtype=dtype)


def optimize_for_device(pipe, channels_last: bool = True, compile: bool = False):
    """GPU habits: SDPA attention (diffusers' default processor on torch 2), channels-last memory format for the
    convolutions, and optionally ``torch.compile`` of the UNet (a one-time compile cost, then faster steps)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs")
    return pipe


def unet_flops(pipe, batch: int, guidance: bool = True, context_length: int = 77) -> float:
    """FLOPs of one UNet call on ``batch`` latents (x2 with CFG), counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(pipe.unet.parameters())
    size = pipe.unet.config.sample_size
    n = batch * (2 if guidance else 1)
    x = torch.zeros(n, pipe.unet.config.in_channels, size, size, device=p.device, dtype=p.dtype)
    emb = torch.zeros(n, context_length, pipe.unet.config.cross_attention_dim, device=p.device, dtype=p.dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        pipe.unet(x, torch.tensor(500, device=p.device), encoder_hidden_states=emb)
    return float(counter.get_total_flops())


def bench_paper_arch(reduced: bool, batch: int = 8, num_steps: int = 20, repeats: int = 5,
                     dtype: str = "bf16", compile: bool = False) -> dict:
    """Images/s of our sampler on the SD-1.4 architecture (random weights) and the UNet's achieved TFLOP/s (FLOPs
    of the sampling loop's UNet calls over the time spent inside them), against the GPU's dense peak."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype] if cuda else torch.float32
    pipe = paper_arch_pipeline(reduced=reduced, device=device, dtype=torch_dtype)
    if cuda:
        optimize_for_device(pipe, compile=compile)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a cat riding a bike"] * batch
    flops_per_call = unet_flops(pipe, batch)
    unet_s, timings = [], []
    for r in range(-1, repeats):
        with UnetTimer(pipe.unet) as timer:
            _sync()
            t = time.perf_counter()
            sample_trajectories(pipe, prompts, num_steps=num_steps, generator=torch.Generator().manual_seed(r))
            _sync()
            total = time.perf_counter() - t
        if r >= 0:
            unet_s.append(timer.seconds)
            timings.append(total)
    tflops = sorted(flops_per_call * num_steps / s / 1e12 for s in unet_s)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = _peak_for(name) if cuda else None
    return {
        "device": name, "reduced": reduced, "dtype": str(torch_dtype).replace("torch.", ""), "compile": compile,
        "resolution": pipe.unet.config.sample_size * 8, "batch": batch, "steps": num_steps,
        "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
        "images_per_s": Timing(timings, batch).rate(), "unet_gflop_per_call": flops_per_call / 1e9,
        "unet_tflops": {"min": tflops[0], "median": statistics.median(tflops), "max": tflops[-1]},
        "peak_tflops": peak, "fraction_of_peak": (statistics.median(tflops) / peak) if peak else None,
    }


def save_json(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str))
    return path


def bench_update_packing(trainer, repeats: int = 5) -> dict:
    """The PPO update of one stage's kept samples with one interval step per UNet forward (the reference) vs all of
    a micro-batch's steps in one forward (``timestep_chunk=0``): same gradient, different speed."""
    traj, rewards = trainer.sample_stage(trainer.stage)
    adv, keep = trainer.advantages(traj, rewards)
    kept, kept_adv = traj.select(keep), adv[keep]
    saved = trainer.config.timestep_chunk

    def update_with(chunk):
        def f(r):
            trainer.config.timestep_chunk = chunk
            trainer.update(kept, kept_adv, trainer.stage)
        return f

    try:
        packed, single = time_pair(update_with(0), update_with(1), repeats, work=len(kept) * kept.num_steps
                                   * trainer.config.epochs_per_stage, desc="packed | one step per forward")
    finally:
        trainer.config.timestep_chunk = saved
    return {"one_step_per_forward": single.summary(), "packed": packed.summary(),
            "ratio": paired_ratio(packed, single), "kept": len(kept), "steps": kept.num_steps}


#: sizes of the suite: sampling batch; prefixes per branch-sampling call (``prefixes``: the embedded preset's
#: ``sample_batch_size``, 16; ``reference_prefixes``: the reference implementation's 8 prompts per batch); steps;
#: repeats; training stages
SIZES = {"full": dict(batch=32, prefixes=16, reference_prefixes=8, steps=20, repeats=5, stages=5),
         "smoke": dict(batch=4, prefixes=2, reference_prefixes=1, steps=4, repeats=2, stages=1)}


def run_suite(size: str = "full", repeats: int | None = None, paper_arch: bool = False, embedded: bool = True,
              dtype: str = "bf16", compile: bool = False, progress: bool = True) -> dict:
    """Every measurement of the performance issue on the embedded world (CPU), plus optionally the SD-1.4
    architecture. Returns one JSON-able dict (machine, settings, each measurement with min/median/max)."""
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}: use one of {sorted(SIZES)}.")
    s = dict(SIZES[size])
    if repeats:
        s["repeats"] = repeats
    out: dict = {"machine": machine_info(), "size": size, "settings": s}
    steps, reps = s["steps"], s["repeats"]
    if embedded:
        from .presets import load_models, trainer_config
        from .trainer import RLTrainer
        from .world.prompts import split_prompts

        prompts = split_prompts("counting")[0]
        batch = [prompts[i % len(prompts)] for i in range(s["batch"])]
        prefixes = batch[: s["prefixes"]]
        pipe, reward = load_models("embedded")
        pipe.set_progress_bar_config(disable=True)
        steps_bar = tqdm(total=9, desc="benchmarks", disable=not progress)

        def step(name, value):
            out[name] = value
            steps_bar.update(1)

        step("flops", {"embedded": flops_per_image(pipe), "sd14_512px": paper_flops(steps, 5)})
        step("sampler_vs_pipeline", bench_sampler_vs_pipeline(pipe, batch, steps, repeats=reps))
        step("branching", bench_branching(pipe, prefixes, 5, steps, repeats=reps))
        step("branching_reference_batch", bench_branching(pipe, batch[: s["reference_prefixes"]], 5, steps,
                                                          repeats=reps))
        step("branch_loop", bench_branch_loop(pipe, prefixes, 5, steps, repeats=reps))
        step("unet_share_sampling", bench_unet_share_sampling(pipe, prefixes, 5, steps, repeats=reps))

        overrides = dict(num_steps=steps, split_start=max(1, steps // 2), progress=False)
        if size == "smoke":
            overrides.update(sample_batch_size=2, train_batch_size=2)
            ips = 4
        else:
            ips = None

        def make_trainer():
            p, r = load_models("embedded")
            cfg = trainer_config("embedded", "b2", images_per_stage=ips, **overrides)
            return RLTrainer(p, r, prompts, cfg)

        trainer = make_trainer()
        step("update_packing", bench_update_packing(trainer, repeats=reps))
        step("training_share", bench_training_share(make_trainer(), stages=s["stages"]))
        step("stage_reload", bench_stage_reload(make_trainer, stages=reps))
        steps_bar.close()
    if paper_arch:
        out["paper_arch"] = bench_paper_arch(reduced=not torch.cuda.is_available(), batch=8 if size == "full" else 2,
                                             num_steps=steps, repeats=reps, dtype=dtype, compile=compile)
    return out


#: what the performance issue asks of each ratio (None: reported, no goal)
GOALS = {"sampler_vs_pipeline": 0.95, "branching": 1.6, "branching_chain": 1.6, "branching_reference_batch": 1.6,
         "branch_loop": None, "unet_share_sampling": 0.90, "unet_share_denoise": 0.90, "update_packing": None,
         "train_unet_share": None, "stage_reload": None}
_LABELS = {
    "sampler_vs_pipeline": "our log-prob sampler / diffusers pipeline (images/s)",
    "branching": "branch sampling (B=5, split at half, 16 prefixes) / independent (trajectories/s, decode included)",
    "branching_chain": "the same, denoising chain only (decode excluded: same work in both)",
    "branching_reference_batch": "branch sampling with the reference's 8 prefixes per call (decode included)",
    "branch_loop": "batched branches / loop over branches (trajectories/s)",
    "unet_share_sampling": "share of branch-sampling wall time in UNet forward (decode included)",
    "unet_share_denoise": "share of the denoising loop's wall time in UNet forward (decode excluded)",
    "update_packing": "PPO update: all interval steps per forward / one step per forward",
    "train_unet_share": "share of a stage's update time in UNet forward + backward",
    "stage_reload": "a B² stage in one process / with models reloaded each stage",
}


def sampling_parts_table(result: dict) -> "pd.DataFrame":
    """Median seconds of each part of the branched and independent sampling calls of the branching measurements
    (UNet, VAE decode, text encoder, and the rest: DDIM step, noise draws, glue), one row per call kind."""
    import pandas as pd

    rows = []
    for key in ("branching", "branching_reference_batch"):
        if key not in result or "branched_parts" not in result[key]:
            continue
        for column in ("branched", "independent"):
            runs = pd.DataFrame(result[key][f"{column}_parts"])
            runs["other_s"] = runs["total_s"] - runs[["unet_s", "decode_s", "text_encoder_s"]].sum(axis=1)
            rows.append(runs.median().rename(f"{result[key]['prefixes']} prefixes · {column}"))
    return pd.DataFrame(rows)


def summary_table(result: dict) -> "pd.DataFrame":
    """One row per measured ratio or share: min/median/max, the goal, whether the median meets it, and the
    ``bound``: the best value any sampling loop could reach given the measured decode time (NaN where none)."""
    import pandas as pd

    rows = []
    for key, label in _LABELS.items():
        bound = None
        if key.startswith("unet_share") or key == "train_unet_share":
            block = result.get("unet_share_sampling" if key != "train_unet_share" else "training_share")
            if block is None:
                continue
            if key == "train_unet_share":
                vals = [(r["unet_forward_s"] - r.get("sample_unet_s", 0.0) + r["backward_s"]) / r["train_s"]
                        for r in block["stages"]]
                stats = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
            else:
                stats = block["share" if key == "unet_share_sampling" else "denoise_share"]
                if key == "unet_share_sampling" and "bound" in block:
                    bound = block["bound"]["median"]
        elif key == "branching_chain":
            if "chain_ratio" not in result.get("branching", {}):
                continue
            stats = result["branching"]["chain_ratio"]
            bound = result["branching"].get("ideal")
        elif key in result:
            stats = result[key]["ratio"]
            if "bound" in result[key]:
                bound = result[key]["bound"]["median"]
        else:
            continue
        goal = GOALS[key]
        rows.append({"measurement": label, "key": key, "min": stats["min"], "median": stats["median"],
                     "max": stats["max"], "goal": goal, "met": None if goal is None else bool(stats["median"] >= goal),
                     "bound": float("nan") if bound is None else bound})
    return pd.DataFrame(rows)
