"""Sampling trajectories with per-step log-probabilities, plain (DDPO) or branched where the trained interval
begins (B²-DiffuRL).

One loop, :func:`denoise`, serves both: it runs a slice ``[start, end)`` of the DDIM chain with one UNet call per step
on the concatenated ``[uncond, cond]`` batch (classifier-free guidance) and optionally records the transitions.
:func:`sample_branches` runs the prefix once per prompt, repeats the latent ``B`` times, and runs the trained interval
for all ``N * B`` branches in the same batched call, so branching costs no Python loop over branches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .ddim import ddim_log_prob, ddim_posterior_mean_std, ddim_step_with_logprob, explore_coords
from .precision import model_autocast

__all__ = [
    "Trajectories",
    "ddim_step_with_logprob",
    "encode_prompts",
    "predict_noise",
    "denoise",
    "denoise_levels",
    "decode_latents",
    "initial_noise",
    "sample_trajectories",
    "sample_branches",
    "transition_policy",
]


@dataclass
class Trajectories:
    """A batch of sampled trajectories, restricted to the transitions of the trained interval.

    Shapes: ``N`` samples, ``K`` stored steps, latent shape ``(C, h, w)``.
    """

    latents: torch.Tensor  # (N, K, C, h, w): x_t before each stored step
    next_latents: torch.Tensor  # (N, K, C, h, w): x_{t-1} after it (the action)
    timesteps: torch.Tensor  # (N, K) long
    log_probs: torch.Tensor  # (N, K): log p_old(x_{t-1} | x_t) at sampling time
    prompt_embeds: torch.Tensor  # (N, L, D)
    negative_prompt_embeds: torch.Tensor | None  # (N, L, D), None without CFG
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    group_ids: torch.Tensor  # (N,) long: equal ids share one prefix (a branch group)
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_steps(self) -> int:
        """Number of stored (trainable) transitions per sample."""
        return self.timesteps.shape[1]

    def select(self, index: torch.Tensor) -> "Trajectories":
        """Rows picked by a boolean mask or an index tensor (e.g. the samples kept by selection)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(f"mask shape {tuple(index.shape)} != ({len(self)},)")
            index = index.nonzero().flatten()
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "prompts":
                out[f.name] = [value[i] for i in index.tolist()]
            elif value is not None:
                out[f.name] = value[index.to(value.device)]
            else:
                out[f.name] = None
        return Trajectories(**out)

    @staticmethod
    def cat(parts: Sequence["Trajectories"], offset_groups: bool = True) -> "Trajectories":
        """Concatenate batches; group ids are shifted so groups of different batches stay distinct."""
        if not parts:
            raise ValueError("Trajectories.cat needs at least one batch.")
        group_ids, shift = [], 0
        for part in parts:
            group_ids.append(part.group_ids + shift)
            if offset_groups and len(part):
                shift += int(part.group_ids.max()) + 1
        out = {}
        for f in fields(Trajectories):
            values = [getattr(p, f.name) for p in parts]
            if f.name == "prompts":
                out[f.name] = [x for v in values for x in v]
            elif f.name == "group_ids":
                out[f.name] = torch.cat(group_ids)
            elif values[0] is None:
                out[f.name] = None
            else:
                out[f.name] = torch.cat(values)
        return Trajectories(**out)


def _check_pipeline(pipe: StableDiffusionPipeline) -> DDIMScheduler:
    if not isinstance(pipe.scheduler, DDIMScheduler):
        raise ValueError(
            f"The pipeline's scheduler is {type(pipe.scheduler).__name__}; B²-DiffuRL needs DDIM's Gaussian step. "
            "Use `b2lib.models.ensure_ddim(pipe)` or "
            "`pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."
        )
    return pipe.scheduler


@torch.no_grad()
def encode_prompts(
    pipe: StableDiffusionPipeline, prompts: Sequence[str], guidance_scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings for the prompts and, with CFG (``guidance_scale > 1``), for the empty prompt."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings (wrap a single prompt in a list).")
    cond, uncond = pipe.encode_prompt(list(prompts), pipe.device, 1, guidance_scale > 1.0)
    return cond, uncond


def predict_noise(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor | int,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """Guided noise prediction with ONE UNet call on the ``[uncond, cond]`` batch (same as diffusers' pipeline).

    Used both when sampling and when training, so the policy whose log-prob is optimised is the sampled one. Under
    :func:`b2lib.precision.compute_dtype` ``("bf16")`` the UNet runs in bf16 autocast and its output is cast back to the
    latents' dtype before guidance, so what follows (guidance, the DDIM step, the log-prob) is computed in fp32.
    """
    if prompt_embeds.shape[0] != latents.shape[0]:
        raise ValueError(
            f"{prompt_embeds.shape[0]} prompt embeddings for {latents.shape[0]} latents: give one embedding per sample "
            "(repeat_interleave the prompt embeddings over branches)."
        )
    timesteps = torch.as_tensor(timesteps, device=latents.device)
    if negative_prompt_embeds is None or guidance_scale <= 1.0:
        with model_autocast(latents.device):
            out = unet(latents, timesteps, encoder_hidden_states=prompt_embeds).sample
        return out.to(latents.dtype)  # a no-op in fp32
    if negative_prompt_embeds.shape != prompt_embeds.shape:
        raise ValueError(
            f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} "
            f"!= prompt_embeds {tuple(prompt_embeds.shape)}."
        )
    if timesteps.ndim == 1:
        timesteps = timesteps.repeat(2)
    model_input, embeds = torch.cat([latents, latents]), torch.cat([negative_prompt_embeds, prompt_embeds])
    with model_autocast(latents.device):
        out = unet(model_input, timesteps, encoder_hidden_states=embeds).sample
    uncond, cond = out.to(latents.dtype).chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def initial_noise(
    pipe: StableDiffusionPipeline, batch: int, generator: torch.Generator | None, dtype: torch.dtype
) -> torch.Tensor:
    """``x_T`` drawn exactly as ``StableDiffusionPipeline.prepare_latents`` draws it (same generator, same values)."""
    size = pipe.unet.config.sample_size
    shape = (batch, pipe.unet.config.in_channels, size, size)
    return randn_tensor(shape, generator=generator, device=pipe.device, dtype=dtype) * pipe.scheduler.init_noise_sigma


def denoise(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    start: int,
    end: int,
    guidance_scale: float,
    eta: float,
    generator: torch.Generator | None = None,
    record: bool = True,
    progress: bool = False,
    explore_grid: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Run steps ``[start, end)`` of the scheduler's chain; return the final latents and, if ``record``, the
    transitions. ``explore_grid``: the stochastic steps' noise only on a coarse lattice (see
    :func:`b2lib.ddim.ddim_posterior_mean_std`; 0 = DDIM's full noise).

    The scheduler must already hold the chain (``set_timesteps``). Recorded tensors are stacked on dim 1.
    """
    scheduler = _check_pipeline(pipe)
    timesteps = scheduler.timesteps
    if not 0 <= start <= end <= len(timesteps):
        raise ValueError(f"step range [{start}, {end}) is outside the chain of {len(timesteps)} steps.")
    states, nexts, ts, logps = [], [], [], []
    if eta == 0 and record:
        raise ValueError(
            "Recorded (trainable) steps need eta > 0: eta=0 steps are deterministic and have no "
            "log-probability. Run them with record=False."
        )
    for i in tqdm(range(start, end), desc="denoise", leave=False, disable=not progress):
        t = timesteps[i]
        model_input = scheduler.scale_model_input(latents, t)
        noise_pred = predict_noise(pipe.unet, model_input, t, prompt_embeds, negative_prompt_embeds, guidance_scale)
        if eta == 0:  # deterministic DDIM (the stock scheduler step): no noise drawn, nothing recorded
            latents = scheduler.step(noise_pred, t, latents, eta=0.0).prev_sample
            continue
        prev, log_prob = ddim_step_with_logprob(
            scheduler, noise_pred, t, latents, eta, generator=generator, explore_grid=explore_grid
        )
        if record:
            states.append(latents)
            nexts.append(prev)
            ts.append(t.expand(latents.shape[0]))
            logps.append(log_prob)
        latents = prev
    if not record:
        return latents, None
    empty = latents.new_zeros((latents.shape[0], 0, *latents.shape[1:]))
    stack = (lambda xs: torch.stack(xs, dim=1)) if states else (lambda xs: empty)
    return latents, {
        "latents": stack(states),
        "next_latents": stack(nexts),
        "timesteps": torch.stack(ts, dim=1).long() if ts else torch.zeros(latents.shape[0], 0, dtype=torch.long),
        "log_probs": torch.stack(logps, dim=1) if logps else latents.new_zeros(latents.shape[0], 0),
    }


#: Latents per VAE decode call. The decoder's activations are the largest tensors of sampling (full resolution,
#: wide channels): past a few dozen images they fall out of the CPU caches and the decode slows down per image (the
#: embedded world on this project's 2-core CPU: 4.4 ms/image in chunks of 4-16, 10 ms/image in one batch of 80).
#: Chunks also bound the decode's peak memory on a GPU, like diffusers' ``vae.enable_slicing()`` but less finely.
DECODE_BATCH = 16


def decode_latents(
    pipe: StableDiffusionPipeline, latents: torch.Tensor, batch_size: int | None = DECODE_BATCH
) -> torch.Tensor:
    """VAE-decode to float images in ``[0, 1]``, kept in memory for the reward (no PNG round trip).

    ``batch_size`` latents are decoded per call (``None``: all at once); each image's pixels do not depend on it. Under
    bf16 compute (:mod:`b2lib.precision`) the decoder runs in autocast and its output is cast back to the latents'
    dtype before the arithmetic below.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}.")
    scaled = latents / pipe.vae.config.scaling_factor
    step = batch_size or max(1, len(scaled))
    with model_autocast(latents.device):
        chunks = [pipe.vae.decode(chunk, return_dict=False)[0] for chunk in scaled.split(step)]
    images = torch.cat([chunk.to(latents.dtype) for chunk in chunks])  # a no-op in fp32
    return (images / 2 + 0.5).clamp(0, 1).float()


def denoise_levels(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    levels: Sequence[tuple[int, int]],
    num_steps: int,
    guidance_scale: float,
    eta: float,
    generator: torch.Generator | None = None,
    window: int | None = None,
    explore_grid: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[dict[str, torch.Tensor]]]:
    """From the state at the first branch point to ``x_0``: at each ``(branch_at, branches)`` every live row splits into
    ``branches`` rows (prompt-major), and the segment up to the next branch point (or the chain's end) runs for all rows
    in one batched UNet call per step. Only the first ``window`` steps of a segment are stochastic and recorded
    (``None``: all of them); the rest run with eta = 0. Returns the final latents, the embeddings repeated like the
    rows, and each segment's recorded transitions. ``explore_grid``: the recorded steps explore only a coarse lattice
    (:func:`b2lib.ddim.ddim_posterior_mean_std`). One level is B²'s branch sampling, one level of 1 plain sampling,
    several a tree (:func:`b2lib.tree.sample_tree`)."""
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 (stochastic steps after a split) or None (all of them), got {window}.")
    cond, uncond, segments = prompt_embeds, negative_prompt_embeds, []
    for k, (branch_at, branches) in enumerate(levels):
        latents = latents.repeat_interleave(branches, dim=0)
        cond = cond.repeat_interleave(branches, dim=0)
        uncond = uncond.repeat_interleave(branches, dim=0) if uncond is not None else None
        end = levels[k + 1][0] if k + 1 < len(levels) else num_steps
        stop = end if window is None else min(end, branch_at + window)
        latents, rec = denoise(
            pipe, latents, cond, uncond, branch_at, stop, guidance_scale, eta, generator, explore_grid=explore_grid
        )
        if stop < end:
            latents, _ = denoise(pipe, latents, cond, uncond, stop, end, guidance_scale, 0.0, record=False)
        segments.append(rec)
    return latents, cond, uncond, segments


def _prepare(pipe: StableDiffusionPipeline, num_steps: int, trained_steps: int) -> None:
    _check_pipeline(pipe)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if not 1 <= trained_steps <= num_steps:
        raise ValueError(
            f"The trained interval ({trained_steps} steps) must lie within the chain of {num_steps} steps: "
            f"use 1 <= trained_steps <= num_steps."
        )
    if pipe.scheduler.num_inference_steps != num_steps:
        pipe.scheduler.set_timesteps(num_steps, device=pipe.device)


def _sample(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    num_branches: int,
    trained_steps: int,
    num_steps: int,
    guidance_scale: float,
    eta: float,
    generator: torch.Generator | None,
    prompt_embeds: tuple[torch.Tensor, torch.Tensor | None] | None,
    branch_loop: bool = False,
    window: int | None = None,
    explore_grid: int = 0,
) -> Trajectories:
    _prepare(pipe, num_steps, trained_steps)
    if prompt_embeds is None:
        cond, uncond = encode_prompts(pipe, prompts, guidance_scale)
    else:
        cond, uncond = prompt_embeds
        if cond.shape[0] != len(prompts) or (uncond is not None and uncond.shape[0] != len(prompts)):
            raise ValueError(
                f"{len(prompts)} prompts but prompt embeddings for {cond.shape[0]}: pass one embedding row per prompt."
            )
    n = len(prompts)
    branch_at = num_steps - trained_steps  # the chain index where the prefix ends and the trained interval begins
    with torch.inference_mode():
        latents = initial_noise(pipe, n, generator, cond.dtype)
        latents, _ = denoise(pipe, latents, cond, uncond, 0, branch_at, guidance_scale, eta, generator, record=False)
        if branch_loop and num_branches > 1:
            if window is not None or explore_grid:
                raise ValueError(
                    "branch_loop (the benchmark's reference loop) supports neither window nor explore_grid."
                )
            # The reference implementation's way, kept for benchmarks: one chain (and UNet call per step) per branch.
            parts = [
                denoise(pipe, latents, cond, uncond, branch_at, num_steps, guidance_scale, eta, generator)
                for _ in range(num_branches)
            ]
            # branch-major -> prompt-major (sample i * B + b is branch b of prompt i)
            latents = torch.stack([p[0] for p in parts], dim=1).flatten(0, 1)
            rec = {key: torch.stack([p[1][key] for p in parts], dim=1).flatten(0, 1) for key in parts[0][1]}
            cond = cond.repeat_interleave(num_branches, dim=0)
            uncond = uncond.repeat_interleave(num_branches, dim=0) if uncond is not None else None
        else:
            # Branch: every prompt's shared x_{T-s} continues as B independent stochastic chains, in one batch.
            latents, cond, uncond, (rec,) = denoise_levels(
                pipe,
                latents,
                cond,
                uncond,
                [(branch_at, num_branches)],
                num_steps,
                guidance_scale,
                eta,
                generator,
                window,
                explore_grid,
            )
        images = decode_latents(pipe, latents)
    # Leave inference mode: stored tensors become ordinary tensors, usable as inputs of the training forward pass.
    return Trajectories(
        latents=rec["latents"].clone(),
        next_latents=rec["next_latents"].clone(),
        timesteps=rec["timesteps"].clone(),
        log_probs=rec["log_probs"].clone(),
        prompt_embeds=cond.clone(),
        negative_prompt_embeds=uncond.clone() if uncond is not None else None,
        images=images.clone(),
        group_ids=torch.arange(n).repeat_interleave(num_branches),
        prompts=[p for p in prompts for _ in range(num_branches)],
    )


def sample_trajectories(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    trained_steps: int | None = None,
    prompt_embeds: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    window: int | None = None,
    explore_grid: int = 0,
) -> Trajectories:
    """One independent trajectory per prompt (DDPO's sampler), storing the last ``trained_steps`` transitions (all by
    default).

    Under the same ``generator`` the images equal ``pipe(prompts, num_inference_steps=num_steps, eta=eta,
    guidance_scale=guidance_scale, generator=generator, output_type="pt").images``. ``window`` and ``explore_grid``:
    see :func:`sample_branches`.
    """
    return _sample(
        pipe,
        prompts,
        1,
        num_steps if trained_steps is None else trained_steps,
        num_steps,
        guidance_scale,
        eta,
        generator,
        prompt_embeds,
        window=window,
        explore_grid=explore_grid,
    )


def sample_branches(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    num_branches: int,
    trained_steps: int,
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    prompt_embeds: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    branch_loop: bool = False,
    window: int | None = None,
    explore_grid: int = 0,
) -> Trajectories:
    """Branch-based sampling: a shared prefix per prompt down to chain index ``num_steps - trained_steps`` (the branch
    point), then ``num_branches`` continuations, batched. Returns ``len(prompts) * num_branches`` samples, prompt-major
    (sample ``i * B + b`` is branch ``b`` of prompt ``i``; ``group_ids == i``), storing only the last
    ``trained_steps`` transitions: the trained interval.

    ``branch_loop=True`` runs the branches one after another (the reference code's loop, one UNet call per branch
    and step): same distribution, slower; it exists so the benchmark can measure what batching saves.

    ``window``: only the first ``window`` steps after the split are stochastic (and stored); the rest of the chain
    runs deterministically (DDIM with eta = 0). Why: the branches of a group then differ *only* by the noise of those
    steps, so the reward differences within a group are credited to the steps being trained, not to the noise of
    every later step: B²'s credit-assignment idea taken to its limit. Whether that raises the gradient's
    signal-to-noise ratio is measured by :mod:`b2lib.gradient_snr` (notebook 10: on the embedded world's counting
    template it did not, measurably). ``None``: every step after the split is stochastic, the paper's B².

    ``explore_grid = g``: the trained (recorded) steps draw their noise only in the cell-constant directions of a
    ``g x g`` lattice per latent channel and are deterministic elsewhere (*coarse exploration*,
    :func:`b2lib.ddim.ddim_posterior_mean_std`); the shared prefix is sampled as usual. 0: DDIM's full noise.
    """
    if num_branches < 2:
        raise ValueError(
            f"num_branches={num_branches}: branch-based sampling compares samples within a branch group, so it needs "
            "at least 2 branches (the paper uses 5). For plain sampling use `sample_trajectories`."
        )
    return _sample(
        pipe,
        prompts,
        num_branches,
        trained_steps,
        num_steps,
        guidance_scale,
        eta,
        generator,
        prompt_embeds,
        branch_loop,
        window,
        explore_grid,
    )


def transition_policy(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    traj: Trajectories,
    rows: torch.Tensor,
    cols: torch.Tensor,
    guidance_scale: float,
    eta: float,
    device: torch.device | str | None = None,
    explore_grid: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The policy Gaussian at stored transitions (sample ``rows[i]``, interval step ``cols[i]``) under ``unet``:
    ``(log_prob, mean, std)``, with CFG exactly as in sampling.

    ``log_prob`` (``(n,)``) is ``log p_theta(x_{t-1} | x_t, c)`` of the stored action, the quantity the PPO ratio
    compares with ``traj.log_probs``; ``mean`` (``(n, C, h, w)``) and ``std`` (``(n,)``) are what a KL to a reference
    model needs. One UNet forward for all three; differentiable w.r.t. the UNet's parameters. With ``explore_grid``
    (coarse exploration) ``mean`` is in the explored coordinates (:func:`b2lib.ddim.explore_coords`), the only ones
    with a density, so a KL between two such policies is the KL of their explored parts.
    """
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(f"rows {tuple(rows.shape)} and cols {tuple(cols.shape)} must be equal 1-D shapes.")
    device = device if device is not None else traj.latents.device
    latents = traj.latents[rows, cols].to(device)
    nexts = traj.next_latents[rows, cols].to(device)
    t = traj.timesteps[rows, cols].to(device)
    cond = traj.prompt_embeds[rows].to(device)
    uncond = traj.negative_prompt_embeds[rows].to(device) if traj.negative_prompt_embeds is not None else None
    model_input = scheduler.scale_model_input(latents, t)
    noise_pred = predict_noise(unet, model_input, t, cond, uncond, guidance_scale)
    mean, std = ddim_posterior_mean_std(scheduler, noise_pred, t, latents, eta, explore_grid)
    return ddim_log_prob(nexts, mean, std, explore_grid), explore_coords(mean, explore_grid), std
