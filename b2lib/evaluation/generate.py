"""Generating evaluation images reproducibly (same seed -> same noise for every model, for same-seed grids)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from diffusers import StableDiffusionPipeline
from tqdm.auto import tqdm

from b2lib.algorithm.sampling import _encode, _prepare, denoise, sample_trajectories
from b2lib.evaluation.metrics import pairwise_diversity, pixel_diversity
from b2lib.policies.base import as_policy
from b2lib.training.models import lora_fused
from b2lib.utils.precision import compute_dtype

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["generate", "evaluate_images", "evaluate_prompts", "subset", "sampling_throughput"]


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    fuse_lora: bool = True,
    dtype: str | None = None,
) -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [0, 1] for ``prompts``, with the policy's own sampler (DDIM or the flow SDE at noise
    level ``eta``, CFG); ``eta = 0``: the deterministic chain, the stock pipeline's (the flow world is evaluated so, as
    the flow-GRPO family evaluates).

    Batch ``b`` uses a generator seeded ``(seed, b)``, so two models given the same prompts and seed start from the
    same noise: differences in the images are the models' doing. A LoRA adapter is folded into the weights while
    generating (``fuse_lora``, :func:`b2lib.training.models.lora_fused`): the base model's speed, the same images up to
    float rounding. ``dtype``: the UNet and VAE forwards' compute dtype (:mod:`b2lib.utils.precision`; ``"bf16"``:
    autocast, the DDIM steps in fp32; ``None``: the enclosing :func:`~b2lib.utils.precision.compute_dtype`'s, fp32
    outside any).
    """
    out = []
    starts = range(0, len(prompts), batch_size)
    policy = as_policy(pipe)
    with lora_fused(policy.denoiser, fuse_lora), compute_dtype(dtype):
        for b, start in enumerate(tqdm(starts, desc="generate", leave=False, disable=not progress)):
            gen = torch.Generator().manual_seed(seed * 100_003 + b)
            batch = list(prompts[start : start + batch_size])
            if eta == 0:
                out.append(_deterministic(policy, batch, num_steps, guidance_scale, gen))
                continue
            traj = sample_trajectories(
                policy,
                batch,
                num_steps=num_steps,
                guidance_scale=guidance_scale,
                eta=eta,
                generator=gen,
                trained_steps=1,
            )
            out.append(traj.images)
    return torch.cat(out)


def _deterministic(policy, prompts: list[str], num_steps: int, guidance_scale: float, gen: torch.Generator):
    """The noise-free chain from ``x_T`` drawn by ``gen``: the stock pipeline's sampler."""
    _prepare(policy, num_steps, num_steps)
    cond = _encode(policy, prompts, guidance_scale)
    latents = policy.initial_noise(len(prompts), gen, cond.embeds.dtype)
    latents, _ = denoise(policy, latents, cond, None, 0, num_steps, guidance_scale, 0.0, record=False)
    return policy.decode(latents)


def evaluate_images(
    images: torch.Tensor,
    prompts: Sequence[str],
    reward_fn=None,
    judge_fn=None,
    embed_fn=None,
    text_metric=None,
) -> tuple["pd.DataFrame", dict]:
    """Score generated images: a per-image table (prompt, reward, judge attributes) and a summary
    (reward mean/std, judge alignment and per-attribute rates, semantic and pixel diversity).

    ``reward_fn(images, prompts) -> (N,)``; ``judge_fn(images, prompts) -> list`` of objects/dicts with boolean fields
    (e.g. ``b2lib.world.judge_batch``); ``embed_fn(images) -> (N, D)`` for semantic diversity; without it, a reward
    with ``score_and_embed`` (a
    :class:`~b2lib.rewards.base.ClipScore`) supplies both from one image pass; ``text_metric(images, prompts) -> (N,)``
    a caption-based score such as :class:`~b2lib.rewards.bertscore.BertScore` (logged as ``bertscore``). Each is
    optional.
    """
    import dataclasses

    import pandas as pd

    table = pd.DataFrame({"prompt": list(prompts)})
    summary: dict = {"n_images": len(prompts), "n_prompts": table["prompt"].nunique()}
    features = None
    if reward_fn is not None:
        if embed_fn is None and hasattr(reward_fn, "score_and_embed"):  # a ClipScore: one image pass for both
            scores, features = reward_fn.score_and_embed(images, list(prompts))
        else:
            scores = reward_fn(images, list(prompts))
        table["reward"] = scores.cpu().numpy()
        summary["reward_mean"] = float(table["reward"].mean())
        summary["reward_std"] = float(table["reward"].std(ddof=0))
    if text_metric is not None:
        table["bertscore"] = text_metric(images, list(prompts)).cpu().numpy()
        summary["bertscore_mean"] = float(table["bertscore"].mean())
        summary["bertscore_std"] = float(table["bertscore"].std(ddof=0))
    if judge_fn is not None:
        rows = []
        for r in judge_fn(images, list(prompts)):
            d = dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
            rows.append({k: v for k, v in d.items() if isinstance(v, bool) or (v is None and k.endswith("_ok"))})
        judged = pd.DataFrame(rows)
        table = pd.concat([table, judged.add_prefix("judge_")], axis=1)
        for col in judged.columns:
            vals = judged[col].dropna()
            if len(vals):
                summary[f"judge_{col}"] = float(vals.astype(float).mean())
    if table["prompt"].duplicated().any():
        summary["pixel_diversity"] = pixel_diversity(images, prompts)
        if features is None and embed_fn is not None:
            features = embed_fn(images)
        if features is not None:
            summary["clip_diversity"] = pairwise_diversity(features, prompts)
    return table, summary


def sampling_throughput(
    pipe: StableDiffusionPipeline,
    n_images: int = 32,
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    repeats: int = 3,
    eta: float = 1.0,
) -> dict:
    """Images/s of ``n_images`` sampled in one batch with ``num_steps`` CFG steps (decode included) at noise level
    ``eta`` (0: the deterministic chain): min/median/max over ``repeats`` timed runs after one warm-up."""
    import time

    import numpy as np

    prompts = ["one red circle"] * n_images
    generate(pipe, prompts[:2], num_steps=2, eta=eta, batch_size=n_images)
    rates = []
    for r in range(repeats):
        t = time.perf_counter()
        kwargs = dict(num_steps=num_steps, guidance_scale=guidance_scale, eta=eta, seed=r, batch_size=n_images)
        generate(pipe, prompts, **kwargs)
        rates.append(n_images / (time.perf_counter() - t))
    return {
        "images_per_s_min": float(np.min(rates)),
        "images_per_s_median": float(np.median(rates)),
        "images_per_s_max": float(np.max(rates)),
        "batch": n_images,
        "steps": num_steps,
        "threads": torch.get_num_threads(),
    }


def subset(prompts: Sequence[str], k: int) -> list[str]:
    """A fixed, evenly spaced subset of ``k`` prompts (all of them when ``k`` is 0 or large enough)."""
    import numpy as np

    prompts = list(prompts)
    if not k or len(prompts) <= k:
        return prompts
    return [prompts[i] for i in np.linspace(0, len(prompts) - 1, k).round().astype(int)]


def evaluate_prompts(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    reward=None,
    judge_fn=None,
    n_per_prompt: int = 4,
    seed: int = 0,
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    batch_size: int = 64,
    text_metric=None,
    dtype: str | None = None,
):
    """Generate ``n_per_prompt`` images per prompt (prompt-major, same seeds for every model) and score them with
    :func:`evaluate_images`; ``reward`` is a :class:`~b2lib.rewards.base.ClipScore` (also used for semantic diversity),
    ``text_metric`` an optional caption-based score (BERTScore). ``dtype``: the compute dtype of the generation and of
    the reward and text models' forwards (:mod:`b2lib.utils.precision`; the scores are fp32; ``None``: inherit). Returns
    ``(table, summary, images)``."""
    batch = [p for p in prompts for _ in range(n_per_prompt)]
    with compute_dtype(dtype):
        images = generate(
            pipe, batch, num_steps=num_steps, guidance_scale=guidance_scale, eta=eta, seed=seed, batch_size=batch_size
        )
        table, summary = evaluate_images(images, batch, reward, judge_fn, text_metric=text_metric)
    return table, summary, images
