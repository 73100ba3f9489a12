"""The flow path's speed against stock ``StableDiffusion3Pipeline``, side by side in one process.

Why it can beat the stock pipeline at all: without T5 the stock pipeline appends 256 identical zero "T5" tokens to the
20 CLIP tokens and attends over all of them at every step, while b2lib's flow policy runs them as one token with its
attention logit raised by ``log 256`` (:class:`b2lib.policies.flow.RepeatedTokenAttnProcessor`), which gives the same
images. Our sampler also stores every transition (latents, means, log-probs) for training; the ratio says what that
bookkeeping costs against what the compacted tokens save.

Three samplers over the same prompts and the same initial noise (one generator seed per repeat, the repeats
interleaved by :func:`~b2lib.bench.timing.time_pair`):

* ``ode``: our deterministic chain (noise level 0, nothing stored: what evaluation samples), the chain the stock
  pipeline runs (its images are compared too);
* ``sde``: our sampler at the training noise level ``eta``, every transition stored (the flow-SDE, what every
  training stage samples);
* ``stock``: ``StableDiffusion3Pipeline.__call__`` with its defaults, decoding to image tensors as ours does.
"""

from __future__ import annotations

import torch

from b2lib.algorithm.sampling import sample_trajectories
from b2lib.bench.timing import paired_ratio, time_pair
from b2lib.evaluation.generate import generate

__all__ = ["bench_flow_sampler_vs_pipeline"]


def _noise_seed(seed: int) -> int:
    """The generator seed :func:`~b2lib.evaluation.generate.generate` gives its first batch under ``seed``: the stock
    call is seeded the same, so both start from the same noise."""
    return seed * 100_003


def _ours(pipe, prompts: list[str], num_steps: int, guidance_scale: float, eta: float, seed: int) -> torch.Tensor:
    if eta == 0:  # the evaluation's chain: no transitions to store
        return generate(pipe, prompts, num_steps, guidance_scale, 0.0, seed, batch_size=len(prompts), fuse_lora=False)
    traj = sample_trajectories(
        pipe,
        prompts,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        eta=eta,
        generator=torch.Generator().manual_seed(_noise_seed(seed)),
    )
    return traj.images


def _stock(pipe, prompts: list[str], num_steps: int, guidance_scale: float, seed: int) -> torch.Tensor:
    with torch.inference_mode():
        return pipe(
            prompts,
            num_inference_steps=num_steps,
            guidance_scale=guidance_scale,
            output_type="pt",
            generator=torch.Generator().manual_seed(_noise_seed(seed)),
        ).images


def bench_flow_sampler_vs_pipeline(
    pipe,
    prompts: list[str],
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 0.7,
    repeats: int = 5,
) -> dict:
    """Images per second of our flow sampler (ODE and SDE) against the stock SD3 pipeline on ``pipe``, at equal
    steps, batch, guidance, prompts and noise; ``ratio_ode`` / ``ratio_sde`` are ours over stock, repeat by repeat
    (goal >= 1.0). ``max_abs_image_difference``: between our ODE images and the stock ones for the first seed, which
    should be at float rounding (the two run the same chain)."""
    n = len(prompts)
    pipe.set_progress_bar_config(disable=True)
    ode, stock_a = time_pair(
        lambda r: _ours(pipe, prompts, num_steps, guidance_scale, 0.0, r),
        lambda r: _stock(pipe, prompts, num_steps, guidance_scale, r),
        repeats,
        work=n,
        desc="flow ODE sampler | stock SD3 pipeline",
    )
    sde, stock_b = time_pair(
        lambda r: _ours(pipe, prompts, num_steps, guidance_scale, eta, r),
        lambda r: _stock(pipe, prompts, num_steps, guidance_scale, r),
        repeats,
        work=n,
        desc="flow SDE sampler | stock SD3 pipeline",
    )
    ours_images = _ours(pipe, prompts, num_steps, guidance_scale, 0.0, 0)
    stock_images = _stock(pipe, prompts, num_steps, guidance_scale, 0)
    return {
        "ode": ode.summary(),
        "sde": sde.summary(),
        "stock": stock_a.summary(),
        "stock_beside_sde": stock_b.summary(),
        "ratio_ode": paired_ratio(ode, stock_a),
        "ratio_sde": paired_ratio(sde, stock_b),
        "max_abs_image_difference": float((ours_images - stock_images.to(ours_images)).abs().max()),
        "batch": n,
        "steps": num_steps,
        "guidance_scale": guidance_scale,
        "eta": eta,
        "threads": torch.get_num_threads(),
    }
