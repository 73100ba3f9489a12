"""Sampling trajectories with per-step log-probabilities, plain (DDPO) or branched where the trained interval
begins (B²-DiffuRL), for any :class:`~b2lib.policies.base.Policy` (DDIM on SD 1.x, the flow SDE on SD3-family models).

One loop, :func:`denoise`, serves both: it runs a slice ``[start, end)`` of the chain with one model call per step on
the concatenated ``[uncond, cond]`` batch (classifier-free guidance) and optionally records the transitions.
:func:`sample_branches` runs the prefix once per prompt, repeats the latent ``B`` times, and runs the trained interval
for all ``N * B`` branches in the same batched call, so branching costs no Python loop over branches. Every function
takes a pipeline (its policy view: :func:`b2lib.policies.base.as_policy`) or a policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Sequence

import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from tqdm.auto import tqdm

from b2lib.policies.base import Cond, Policy, as_policy
from b2lib.policies.ddim import DECODE_BATCH, DDIMPolicy, ddim_step_with_logprob, decode_latents, predict_noise

__all__ = [
    "Trajectories",
    "ddim_step_with_logprob",
    "encode_prompts",
    "predict_noise",
    "denoise",
    "denoise_levels",
    "decode_latents",
    "DECODE_BATCH",
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
    # SD3-family models are also conditioned on pooled text embeddings: (N, P), None for SD 1.x
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_steps(self) -> int:
        """Number of stored (trainable) transitions per sample."""
        return self.timesteps.shape[1]

    def cond(self, rows: torch.Tensor | None = None) -> Cond:
        """The conditioning of ``rows`` (all rows by default), as the policy's model call takes it."""
        cond = Cond(
            self.prompt_embeds,
            self.negative_prompt_embeds,
            self.pooled_prompt_embeds,
            self.negative_pooled_prompt_embeds,
        )
        return cond if rows is None else cond.map(lambda x: x[rows])

    @staticmethod
    def build(
        rec: dict[str, torch.Tensor], cond: Cond, images: torch.Tensor, group_ids: torch.Tensor, prompts: list[str]
    ) -> "Trajectories":
        """From :func:`denoise`'s record, the rows' conditioning and their images; cloned, so tensors made under
        ``torch.inference_mode`` become ordinary ones, usable as inputs of the training forward pass."""
        cond = cond.map(torch.Tensor.clone)
        return Trajectories(
            latents=rec["latents"].clone(),
            next_latents=rec["next_latents"].clone(),
            timesteps=rec["timesteps"].clone(),
            log_probs=rec["log_probs"].clone(),
            prompt_embeds=cond.embeds,
            negative_prompt_embeds=cond.negative,
            images=images.clone(),
            group_ids=group_ids,
            prompts=prompts,
            pooled_prompt_embeds=cond.pooled,
            negative_pooled_prompt_embeds=cond.negative_pooled,
        )

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
            elif any(v is None for v in values):
                if not all(v is None for v in values):
                    raise ValueError(f"Trajectories.cat: some batches have {f.name}, some do not.")
                out[f.name] = None
            else:
                out[f.name] = torch.cat(values)
        return Trajectories(**out)


def _check_pipeline(pipe: DiffusionPipeline | Policy) -> Policy:
    """The policy view of ``pipe`` (:func:`b2lib.policies.base.as_policy`): DDIM for SD 1.x pipelines (an error naming
    the fix if their scheduler is not DDIM), the flow-SDE policy for SD3-family ones, a :class:`Policy` as it is."""
    return as_policy(pipe)


def _as_cond(prompt_embeds, negative_prompt_embeds: torch.Tensor | None) -> Cond:
    """A :class:`Cond` from the chain functions' arguments: a Cond as it is, or a (cond, uncond) tensor pair."""
    if isinstance(prompt_embeds, Cond):
        return prompt_embeds
    return Cond(prompt_embeds, negative_prompt_embeds)


@torch.no_grad()
def encode_prompts(
    pipe: DiffusionPipeline | Policy, prompts: Sequence[str], guidance_scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings for the prompts and, with CFG (``guidance_scale > 1``), for the empty prompt (an SD 1.x
    pipeline's pair; :meth:`b2lib.policies.base.Policy.encode` gives any policy's full :class:`Cond`)."""
    cond = _encode(_check_pipeline(pipe), prompts, guidance_scale)
    return cond.embeds, cond.negative


def _encode(policy: Policy, prompts: Sequence[str], guidance_scale: float) -> Cond:
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings (wrap a single prompt in a list).")
    with torch.no_grad():
        return policy.encode(list(prompts), guidance_scale)


def initial_noise(
    pipe: DiffusionPipeline | Policy, batch: int, generator: torch.Generator | None, dtype: torch.dtype
) -> torch.Tensor:
    """``x_T`` drawn exactly as the stock pipeline's ``prepare_latents`` draws it (same generator, same values)."""
    return _check_pipeline(pipe).initial_noise(batch, generator, dtype)


def denoise(
    pipe: DiffusionPipeline | Policy,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor | Cond,
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
    transitions. ``eta``: the policy's noise level (DDIM's eta, the flow-SDE's a); 0 runs the stock deterministic
    step. ``explore_grid``: the stochastic steps' noise only on a coarse lattice (see
    :func:`b2lib.policies.ddim.ddim_posterior_mean_std`; 0 = full noise). ``prompt_embeds``: a tensor (with
    ``negative_prompt_embeds``) or a :class:`~b2lib.policies.base.Cond`.

    The scheduler must already hold the chain (``set_timesteps``). Recorded tensors are stacked on dim 1.
    """
    policy = _check_pipeline(pipe)
    cond = _as_cond(prompt_embeds, negative_prompt_embeds)
    keys = policy.step_keys()
    if not 0 <= start <= end <= len(keys):
        raise ValueError(f"step range [{start}, {end}) is outside the chain of {len(keys)} steps.")
    states, nexts, ts, logps = [], [], [], []
    if eta == 0 and record:
        raise ValueError(
            "Recorded (trainable) steps need eta > 0: eta=0 steps are deterministic and have no "
            "log-probability. Run them with record=False."
        )
    for i in tqdm(range(start, end), desc="denoise", leave=False, disable=not progress):
        t = keys[i]
        pred = policy.predict(policy.denoiser, latents, t, cond, guidance_scale)
        if eta == 0:  # the stock deterministic step: no noise drawn, nothing recorded
            latents = policy.deterministic_step(pred, t, latents)
            continue
        prev, log_prob = policy.step(pred, t, latents, eta, generator, explore_grid)
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


def denoise_levels(
    pipe: DiffusionPipeline | Policy,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor | Cond,
    negative_prompt_embeds: torch.Tensor | None,
    levels: Sequence[tuple[int, int]],
    num_steps: int,
    guidance_scale: float,
    eta: float,
    generator: torch.Generator | None = None,
    window: int | None = None,
    explore_grid: int = 0,
) -> tuple[torch.Tensor, Cond, list[dict[str, torch.Tensor]]]:
    """From the state at the first branch point to ``x_0``: at each ``(branch_at, branches)`` every live row splits into
    ``branches`` rows (prompt-major), and the segment up to the next branch point (or the chain's end) runs for all rows
    in one batched model call per step. Only the first ``window`` steps of a segment are stochastic and recorded
    (``None``: all of them); the rest run deterministically. Returns the final latents, the conditioning repeated like
    the rows (a :class:`~b2lib.policies.base.Cond`), and each segment's recorded transitions. ``explore_grid``: the
    recorded steps explore only a coarse lattice (:func:`b2lib.policies.ddim.ddim_posterior_mean_std`). One level is
    B²'s branch sampling, one level of 1 plain sampling, several a tree (:func:`b2lib.algorithm.tree.sample_tree`)."""
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 (stochastic steps after a split) or None (all of them), got {window}.")
    policy = _check_pipeline(pipe)
    cond, segments = _as_cond(prompt_embeds, negative_prompt_embeds), []
    for k, (branch_at, branches) in enumerate(levels):
        latents = latents.repeat_interleave(branches, dim=0)
        cond = cond.repeat_interleave(branches)
        end = levels[k + 1][0] if k + 1 < len(levels) else num_steps
        stop = end if window is None else min(end, branch_at + window)
        latents, rec = denoise(
            policy, latents, cond, None, branch_at, stop, guidance_scale, eta, generator, explore_grid=explore_grid
        )
        if stop < end:
            latents, _ = denoise(policy, latents, cond, None, stop, end, guidance_scale, 0.0, record=False)
        segments.append(rec)
    return latents, cond, segments


def _prepare(pipe: DiffusionPipeline | Policy, num_steps: int, trained_steps: int) -> Policy:
    policy = _check_pipeline(pipe)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if not 1 <= trained_steps <= num_steps:
        raise ValueError(
            f"The trained interval ({trained_steps} steps) must lie within the chain of {num_steps} steps: "
            f"use 1 <= trained_steps <= num_steps."
        )
    policy.prepare(num_steps)
    return policy


def _conditioning(
    policy: Policy,
    prompts: Sequence[str],
    guidance_scale: float,
    prompt_embeds: tuple[torch.Tensor, torch.Tensor | None] | Cond | None = None,
) -> Cond:
    """The prompts' conditioning: encoded here, or ``prompt_embeds`` (a Cond or a (cond, uncond) pair) checked to hold
    one row per prompt, so a caller's precomputed embeddings cannot silently pair with the wrong prompts."""
    if prompt_embeds is None:
        return _encode(policy, prompts, guidance_scale)
    cond = prompt_embeds if isinstance(prompt_embeds, Cond) else Cond(*prompt_embeds)
    if len(cond) != len(prompts) or (cond.negative is not None and cond.negative.shape[0] != len(prompts)):
        raise ValueError(
            f"{len(prompts)} prompts but prompt embeddings for {len(cond)}: pass one embedding row per prompt."
        )
    return cond


def _branch_loop(
    policy: Policy,
    latents: torch.Tensor,
    cond: Cond,
    branch_at: int,
    num_branches: int,
    num_steps: int,
    guidance_scale: float,
    eta: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, Cond, list[dict[str, torch.Tensor]]]:
    """The reference implementation's way, kept for benchmarks: one chain (and model call per step) per branch. Returns
    what a one-level :func:`denoise_levels` returns, prompt-major (row ``i * B + b``: branch ``b`` of prompt ``i``)."""
    parts = [
        denoise(policy, latents, cond, None, branch_at, num_steps, guidance_scale, eta, generator)
        for _ in range(num_branches)
    ]
    latents = torch.stack([p[0] for p in parts], dim=1).flatten(0, 1)  # branch-major -> prompt-major
    rec = {key: torch.stack([p[1][key] for p in parts], dim=1).flatten(0, 1) for key in parts[0][1]}
    return latents, cond.repeat_interleave(num_branches), [rec]


def _sample_levels(
    pipe: DiffusionPipeline | Policy,
    prompts: Sequence[str],
    levels: Sequence[tuple[int, int]],
    num_steps: int,
    guidance_scale: float,
    eta: float,
    generator: torch.Generator | None,
    prompt_embeds: tuple[torch.Tensor, torch.Tensor | None] | Cond | None = None,
    window: int | None = None,
    explore_grid: int = 0,
    prefix_eta: float | None = None,
    branch_loop: bool = False,
) -> tuple[Trajectories, list[dict[str, torch.Tensor]]]:
    """The one sampler under :func:`sample_trajectories`, :func:`sample_branches` and
    :func:`b2lib.algorithm.tree.sample_tree`, so the three draw the same noise in the same order and a one-level tree
    is B²'s branch sampling exactly: ``x_T``, the shared prefix down to the first branch point (noise level
    ``prefix_eta``, ``None``: ``eta``), the ``(branch_at, branches)`` levels (:func:`denoise_levels`), then the
    decoded leaves. Everything after the first branch point is the trained interval (:func:`_prepare` checks it).

    Returns the leaves as :class:`Trajectories` (prompt-major, storing the last level's segment; ``group_ids``: the
    leaves' parents) and every level's recorded segment, still inference-mode tensors (clone them to train on them).
    ``branch_loop``: one level run branch after branch (:func:`_branch_loop`) instead of batched.
    """
    policy = _prepare(pipe, num_steps, num_steps - levels[0][0])
    cond = _conditioning(policy, prompts, guidance_scale, prompt_embeds)
    if branch_loop and (window is not None or explore_grid or len(levels) > 1):
        raise ValueError("branch_loop (the benchmark's reference loop) takes one level, no window or explore_grid.")
    n, branch_at = len(prompts), levels[0][0]
    with torch.inference_mode():
        latents = policy.initial_noise(n, generator, cond.embeds.dtype)
        prefix = eta if prefix_eta is None else prefix_eta  # 0: the deterministic prefix (TempFlow, MixGRPO)
        latents, _ = denoise(policy, latents, cond, None, 0, branch_at, guidance_scale, prefix, generator, record=False)
        if branch_loop and levels[0][1] > 1:
            latents, cond, segments = _branch_loop(
                policy, latents, cond, branch_at, levels[0][1], num_steps, guidance_scale, eta, generator
            )
        else:
            # every live row continues as `branches` independent stochastic chains, all rows in one batch
            latents, cond, segments = denoise_levels(
                policy, latents, cond, None, levels, num_steps, guidance_scale, eta, generator, window, explore_grid
            )
        images = policy.decode(latents)
    per_prompt, last = math.prod(b for _, b in levels), levels[-1][1]
    # Leave inference mode: stored tensors become ordinary tensors, usable as inputs of the training forward pass.
    group_ids = torch.arange(n * per_prompt // last).repeat_interleave(last)  # a leaf's parent
    leaves = Trajectories.build(segments[-1], cond, images, group_ids, [p for p in prompts for _ in range(per_prompt)])
    return leaves, segments


def sample_trajectories(
    pipe: DiffusionPipeline | Policy,
    prompts: Sequence[str],
    num_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    trained_steps: int | None = None,
    prompt_embeds: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    window: int | None = None,
    explore_grid: int = 0,
    prefix_eta: float | None = None,
) -> Trajectories:
    """One independent trajectory per prompt (DDPO's sampler), storing the last ``trained_steps`` transitions (all by
    default).

    Under the same ``generator`` the images equal ``pipe(prompts, num_inference_steps=num_steps, eta=eta,
    guidance_scale=guidance_scale, generator=generator, output_type="pt").images``. ``window``, ``explore_grid`` and
    ``prefix_eta``: see :func:`sample_branches`.
    """
    levels = [(0 if trained_steps is None else num_steps - trained_steps, 1)]
    return _sample_levels(
        pipe,
        prompts,
        levels,
        num_steps,
        guidance_scale,
        eta,
        generator,
        prompt_embeds,
        window,
        explore_grid,
        prefix_eta,
    )[0]


def sample_branches(
    pipe: DiffusionPipeline | Policy,
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
    prefix_eta: float | None = None,
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
    signal-to-noise ratio is measured by :mod:`b2lib.studies.gradient_snr` (notebook 10: on the embedded world's
    counting template it did not, measurably). ``None``: every step after the split is stochastic, the paper's B².

    ``explore_grid = g``: the trained (recorded) steps draw their noise only in the cell-constant directions of a
    ``g x g`` lattice per latent channel and are deterministic elsewhere (*coarse exploration*,
    :func:`b2lib.policies.ddim.ddim_posterior_mean_std`); the shared prefix is sampled as usual. 0: DDIM's full noise.

    ``prefix_eta``: the noise level of the shared prefix (``None``: ``eta``, as B² and DDPO sample it; 0: the
    deterministic chain, as TempFlow-GRPO and MixGRPO run everything outside their SDE window).
    """
    if num_branches < 2:
        raise ValueError(
            f"num_branches={num_branches}: branch-based sampling compares samples within a branch group, so it needs "
            "at least 2 branches (the paper uses 5). For plain sampling use `sample_trajectories`."
        )
    levels = [(num_steps - trained_steps, num_branches)]  # the branch point: the prefix ends, the interval begins
    return _sample_levels(
        pipe,
        prompts,
        levels,
        num_steps,
        guidance_scale,
        eta,
        generator,
        prompt_embeds,
        window,
        explore_grid,
        prefix_eta,
        branch_loop,
    )[0]


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
    """The DDIM policy Gaussian at stored transitions (sample ``rows[i]``, interval step ``cols[i]``) under ``unet``:
    ``(log_prob, mean, std)``, with CFG exactly as in sampling; :meth:`b2lib.policies.base.Policy.transition` for any
    policy.

    ``log_prob`` (``(n,)``) is ``log p_theta(x_{t-1} | x_t, c)`` of the stored action, the quantity the PPO ratio
    compares with ``traj.log_probs``; ``mean`` (``(n, C, h, w)``) and ``std`` (``(n,)``) are what a KL to a reference
    model needs. One UNet forward for all three; differentiable w.r.t. the UNet's parameters. With ``explore_grid``
    (coarse exploration) ``mean`` is in the explored coordinates (:func:`b2lib.policies.gaussian.explore_coords`), the
    only ones with a density, so a KL between two such policies is the KL of their explored parts.
    """
    policy = DDIMPolicy(SimpleNamespace(unet=unet, scheduler=scheduler, device=traj.latents.device))
    return policy.transition(unet, traj, rows, cols, guidance_scale, eta, device, explore_grid)
