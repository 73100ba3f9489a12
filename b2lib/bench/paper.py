"""The Stable Diffusion 1.4 architecture built from config (random weights, no download): FLOP counts, and the
sampler's images/s and the UNet's TFLOP/s against the GPU's peak."""

from __future__ import annotations

import statistics
import time

import torch

from b2lib.algorithm.sampling import sample_trajectories
from b2lib.bench.timing import Timing, UnetTimer, sync
from b2lib.training.models import assemble_pipeline, clip_text_encoder

__all__ = [
    "PEAK_TFLOPS",
    "peak_for",
    "paper_arch_pipeline",
    "optimize_for_device",
    "unet_flops",
    "flops_per_image",
    "paper_flops",
    "bench_paper_arch",
]


#: Dense bf16/fp16 tensor-core peak (TFLOP/s) by GPU name fragment, from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "RTX 4090": 165.0,
}


def peak_for(name: str) -> float | None:
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

    torch.manual_seed(seed)
    if reduced:
        ch, text_dim, layers, heads, size, vae_ch = (32, 64, 128, 128), 64, 2, 2, 8, (16, 32, 32, 32)
    else:  # CompVis/stable-diffusion-v1-4 configs
        ch, text_dim, layers, heads, size, vae_ch = (320, 640, 1280, 1280), 768, 12, 12, 64, (128, 256, 512, 512)
    unet = UNet2DConditionModel(
        sample_size=size,
        in_channels=4,
        out_channels=4,
        block_out_channels=ch,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_dim,
        attention_head_dim=8 if not reduced else 4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=vae_ch,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        sample_size=size * 8,
        norm_num_groups=min(32, vae_ch[0]),
    )
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


def bench_paper_arch(
    reduced: bool, batch: int = 8, num_steps: int = 20, repeats: int = 5, dtype: str = "bf16", compile: bool = False
) -> dict:
    """Images/s of our sampler on the SD-1.4 architecture (random weights) and the UNet's achieved TFLOP/s (FLOPs
    of the sampling loop's UNet calls over the time spent inside them), against the GPU's dense peak."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch_dtype = (
        {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype] if cuda else torch.float32
    )
    pipe = paper_arch_pipeline(reduced=reduced, device=device, dtype=torch_dtype)
    if cuda:
        optimize_for_device(pipe, compile=compile)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a cat riding a bike"] * batch
    flops_per_call = unet_flops(pipe, batch)
    unet_s, timings = [], []
    for r in range(-1, repeats):
        with UnetTimer(pipe.unet) as timer:
            sync()
            t = time.perf_counter()
            sample_trajectories(pipe, prompts, num_steps=num_steps, generator=torch.Generator().manual_seed(r))
            sync()
            total = time.perf_counter() - t
        if r >= 0:
            unet_s.append(timer.seconds)
            timings.append(total)
    tflops = sorted(flops_per_call * num_steps / s / 1e12 for s in unet_s)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_for(name) if cuda else None
    return {
        "device": name,
        "reduced": reduced,
        "dtype": str(torch_dtype).replace("torch.", ""),
        "compile": compile,
        "resolution": pipe.unet.config.sample_size * 8,
        "batch": batch,
        "steps": num_steps,
        "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
        "images_per_s": Timing(timings, batch).rate(),
        "unet_gflop_per_call": flops_per_call / 1e9,
        "unet_tflops": {"min": tflops[0], "median": statistics.median(tflops), "max": tflops[-1]},
        "peak_tflops": peak,
        "fraction_of_peak": (statistics.median(tflops) / peak) if peak else None,
    }


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
