"""The flow-SDE policy, self-contained: SD3-family rectified-flow models (a transformer predicting velocity) sampled
with the flow-GRPO family's ODE→SDE step; its step math and its class in one file.

The step is a Gaussian policy, Flow-GRPO's ODE -> SDE conversion: what :mod:`b2lib.policies.ddim` is for SD 1.x.

A flow-matching model (SD3 family, :class:`diffusers.FlowMatchEulerDiscreteScheduler`) predicts the velocity
``v(x, s) ~ E[noise - x0 | x_s = x]`` along ``x_s = (1 - s) x0 + s noise`` (``s`` is ``sigma``, going from 1 to 0), and
samples with the deterministic Euler step ``x' = x + (s' - s) v``: an ODE step, with no density, so no policy gradient.

Why the SDE below keeps the ODE's marginals: the ODE ``dx = v ds`` transports ``p_s``. For any ``e(s) >= 0`` the
reverse-time SDE ``dx = [v - e^2/2 grad log p_s] ds + e dw`` (``ds < 0``) has the same Fokker-Planck equation: the
extra diffusion ``+e^2/2 Lap p`` is cancelled exactly by the extra drift ``-div(p e^2/2 grad log p)``. The score comes
from the velocity: ``x = (1 - s) E[x0|x] + s E[noise|x]`` and ``v = E[noise|x] - E[x0|x]`` give
``E[noise|x] = x + (1 - s) v``, so ``grad log p_s(x) = -E[noise|x] / s = -(x + (1 - s) v) / s``. Hence, Euler-Maruyama
from ``s`` to ``s'`` (``dt = s' - s < 0``)::

    x' ~ N(mean, std^2 I),  mean = x + [v + e^2/(2 s) (x + (1 - s) v)] dt,  std = e sqrt(-dt),

with Flow-GRPO's schedule ``e = a sqrt(s / (1 - s))``. The correction term (``dt < 0``) removes predicted noise at the
rate the injected noise adds it; with its sign flipped the variance blows up (tests/policies/test_flow_sde.py checks
this). ``a`` (``noise_level``, Flow-GRPO uses 0.7) is the exploration knob: ``a = 0`` is the ODE itself, larger ``a``
injects more noise, proportionally to the noise-to-signal ratio ``s / (1 - s)``. At ``s = 1`` that ratio is infinite,
so, as Flow-GRPO does, the ``s`` inside ``1 - s`` (only there) is replaced by the chain's second sigma ``sigmas[1]``.

The log-probability follows DDPO's convention (:mod:`b2lib.policies.gaussian`): averaged over the non-batch dimensions.

The chain is the stock ``FlowMatchEulerDiscreteScheduler``'s after ``set_timesteps``; a stored transition's step key
is its index into ``scheduler.sigmas`` (the model is conditioned on ``scheduler.timesteps[index]``, i.e.
``sigma * num_train_timesteps``, as ``StableDiffusion3Pipeline`` does). The conditioning is the stock pipeline's
``encode_prompt`` output, per-token and pooled embeddings, so what is trained is what a stock pipeline samples: with
``noise_level = 0`` (or only deterministic steps) the chain is ``StableDiffusion3Pipeline.__call__``'s, same generator,
same images.

Drawing a step and its density are the shared Gaussian's (:mod:`b2lib.policies.gaussian`), VAE decoding
:mod:`b2lib.policies.vae`'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from b2lib.policies.base import Cond, Policy, register_policy
from b2lib.policies.gaussian import explore_project, gaussian_step, per_sample
from b2lib.utils.precision import model_autocast

__all__ = [
    "FlowSDEPolicy",
    "flow_ode_step",
    "flow_sde_mean_std",
    "flow_sde_step_with_logprob",
    "predict_velocity",
    "RepeatedTokenAttnProcessor",
    "compact_zero_tokens",
    "STOCK_T5_TOKENS",
]

#: Zero "T5" tokens a T5-less ``StableDiffusion3Pipeline`` appends to the CLIP tokens at its default
#: ``max_sequence_length``.
STOCK_T5_TOKENS = 256


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0..2, 5"``: step lists in error messages stay short for long chains."""
    parts, start = [], None
    for i, k in enumerate(indices):
        start = k if start is None else start
        if i + 1 == len(indices) or indices[i + 1] != k + 1:
            parts.append(f"{start}" if start == k else f"{start}..{k}")
            start = None
    return ", ".join(parts) or "none"


def _chain_sigmas(
    scheduler: FlowMatchEulerDiscreteScheduler,
    velocity: torch.Tensor,
    step_index: int | torch.Tensor,
    sample: torch.Tensor,
    caller: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the arguments; return the chain's sigmas (float64, on ``sample``'s device) and the ``(batch,)``
    long step indices."""
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError(
            f"{caller} needs a diffusers FlowMatchEulerDiscreteScheduler (SD3 family), got {type(scheduler).__name__}."
            " Swap a flow pipeline's in with `pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config("
            "pipe.scheduler.config)`; for DDIM-type (epsilon) models use b2lib.policies.ddim instead."
        )
    if getattr(scheduler, "num_inference_steps", None) is None:  # unset before set_timesteps (AttributeError)
        raise ValueError("The scheduler has no inference steps yet: call `scheduler.set_timesteps(num_steps)` first.")
    if velocity.shape != sample.shape:
        raise ValueError(f"velocity shape {tuple(velocity.shape)} != sample shape {tuple(sample.shape)}.")
    if sample.ndim < 2:
        raise ValueError(f"sample must be batched, shape (batch, ...); got {tuple(sample.shape)}.")

    batch, device = sample.shape[0], sample.device
    index = torch.as_tensor(step_index, device=device)
    if index.is_floating_point():
        raise ValueError(
            "step_index must be integer indices into scheduler.sigmas, not timesteps (floats): use the loop counter "
            "of `enumerate(scheduler.timesteps)`, or `scheduler.index_for_timestep(t)`."
        )
    if index.ndim == 0:
        index = index.expand(batch)
    elif index.shape != (batch,):
        raise ValueError(
            f"step_index must be a scalar or one per sample, shape ({batch},); got {tuple(index.shape)}. "
            "Pass `step_indices[:, j]` for column j of a batch of trajectories."
        )
    index = index.long()
    sigmas = scheduler.sigmas.to(device=device, dtype=torch.float64)
    n = sigmas.numel() - 1
    out = (index < 0) | (index >= n)
    if bool(out.any()):
        bad = sorted(set(index[out].tolist()))
        raise ValueError(
            f"step_index {bad} out of range: this chain has {n} steps, indices 0..{n - 1} (step i goes from "
            "sigmas[i] to sigmas[i + 1])."
        )
    return sigmas, index


def flow_ode_step(
    scheduler: FlowMatchEulerDiscreteScheduler,
    velocity: torch.Tensor,
    step_index: int | torch.Tensor,
    sample: torch.Tensor,
) -> torch.Tensor:
    """The deterministic Euler step ``x + (sigmas[i + 1] - sigmas[i]) v``: the ``noise_level -> 0`` limit of the SDE
    step, and what :meth:`FlowMatchEulerDiscreteScheduler.step` does (without ``stochastic_sampling``).

    Unlike the stock ``step`` it keeps no internal step counter, so it can be called on any step, out of order or
    with one ``step_index`` per sample (a ``(batch,)`` long tensor). Computed in float32 at least, like the stock
    step (a bf16 sum would round away a good part of each small increment), and returned in ``sample``'s dtype.
    """
    sigmas, index = _chain_sigmas(scheduler, velocity, step_index, sample, "flow_ode_step")
    work = torch.promote_types(sample.dtype, torch.float32)
    dt = per_sample(sigmas[index + 1] - sigmas[index], sample.ndim).to(work)
    return (sample.to(work) + dt * velocity.to(work)).to(sample.dtype)


def flow_sde_mean_std(
    scheduler: FlowMatchEulerDiscreteScheduler,
    velocity: torch.Tensor,
    step_index: int | torch.Tensor,
    sample: torch.Tensor,
    noise_level: float,
    explore_grid: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow-SDE policy ``N(mean, std^2 I)`` of one step ``sigmas[i] -> sigmas[i + 1]`` (module docstring).

    Separate from :func:`flow_sde_step_with_logprob` for the same reason as
    :func:`b2lib.policies.ddim.ddim_posterior_mean_std`: a KL penalty to a reference model compares two such Gaussians
    in closed form, which needs the means.

    ``explore_grid = g > 0``: coarse exploration, as in :mod:`b2lib.policies.ddim`: noise (and the SDE's drift
    correction) only in the cell-constant directions of a ``g x g`` lattice, the deterministic Euler step in every other
    direction, i.e. ``mean = P(mean_sde) + mean_ode - P(mean_ode)`` with ``P`` =
    :func:`~b2lib.policies.gaussian.explore_project`; since ``P`` is linear this is computed as ``mean_ode + P(mean_sde
    - mean_ode)``.

    Args:
        scheduler: a :class:`~diffusers.FlowMatchEulerDiscreteScheduler` after ``set_timesteps``.
        velocity: model output for ``sample`` (after guidance), shape ``(batch, ...)``.
        step_index: index ``i`` into ``scheduler.sigmas``: an int / 0-d tensor (sampling) or a ``(batch,)`` long
            tensor (training, stored transitions of different steps in one batch).
        sample: ``x`` at ``sigmas[i]``, shape ``(batch, ...)``.
        noise_level: ``a > 0``; with ``a = 0`` the step is the ODE's (:func:`flow_ode_step`) and has no density.
        explore_grid: 0 (full-dimensional noise) or ``g`` (see above).

    Returns:
        ``(mean, std)``: ``mean`` of ``sample``'s shape and dtype, differentiable w.r.t. ``velocity``; ``std`` of
        shape ``(batch,)`` in float64 (it depends on the step only).
    """
    sigmas, index = _chain_sigmas(scheduler, velocity, step_index, sample, "flow_sde_mean_std")
    if not noise_level > 0:
        raise ValueError(
            f"noise_level={noise_level}: a log-probability needs a stochastic step (noise_level > 0; Flow-GRPO uses "
            "0.7). For deterministic steps use flow_ode_step."
        )
    # Every step's std, in float64 (cheap: one value per step): an error can then say which steps have a density.
    s, s_next = sigmas[:-1], sigmas[1:]
    s_den = torch.where(s >= 1, sigmas[1], s)  # s = 1: 1 - s = 0; Flow-GRPO's stand-in, in the denominator only
    std_s = noise_level * (s / (1 - s_den)).sqrt()  # the SDE's diffusion coefficient e(s)
    chain_std = std_s * (s - s_next).sqrt()
    ok = torch.isfinite(chain_std) & (chain_std > 0)
    if not bool(ok[index].all()):
        bad = sorted(set(index[~ok[index]].tolist()))
        raise ValueError(
            f"The flow-SDE step at step_index {bad} has std {[float(chain_std[i]) for i in bad]}, so no "
            f"log-probability (a step needs 0 < sigma <= 1 and sigma_next < sigma). Steps of this chain with a "
            f"density: {_ranges(ok.nonzero().flatten().tolist())}; take the others with flow_ode_step."
        )

    work = torch.promote_types(sample.dtype, torch.float32)
    x, v = sample.to(work), velocity.to(work)
    sigma, dt = s[index], (s_next - s)[index]
    # Coefficients formed in float64, then cast to float32 at least (the stock step upcasts too): late steps are tiny.
    corr_c, one_minus_s, dt_w = (
        per_sample(c, sample.ndim).to(work) for c in (std_s[index] ** 2 / (2 * sigma) * dt, 1 - sigma, dt)
    )
    mean_ode = x + dt_w * v
    correction = corr_c * (x + one_minus_s * v)  # e^2/(2s) * E[noise | x] * dt: removes what the noise adds
    mean = mean_ode + explore_project(correction, explore_grid)
    return mean.to(sample.dtype), chain_std[index]


def flow_sde_step_with_logprob(
    scheduler: FlowMatchEulerDiscreteScheduler,
    velocity: torch.Tensor,
    step_index: int | torch.Tensor,
    sample: torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    explore_grid: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One stochastic flow-SDE step ``sigmas[i] -> sigmas[i + 1]`` and its log-probability (the policy's
    ``log pi(a | s)``), as :func:`b2lib.policies.ddim.ddim_step_with_logprob` is for DDIM.

    Args:
        scheduler, velocity, step_index, sample, noise_level, explore_grid: as :func:`flow_sde_mean_std`.
        prev_sample: if given, the next sample whose log-probability is wanted (no noise is drawn, e.g. to recompute
            ``log pi_theta`` of a stored transition); otherwise it is sampled with ``generator``.
        generator: torch generator(s) for the step noise (diffusers' ``randn_tensor`` semantics). The same white
            noise is drawn with or without ``explore_grid`` (the generator advances alike) and then projected.

    Returns:
        ``(prev_sample, log_prob)``: ``prev_sample`` detached (an action, a constant) in ``sample``'s dtype;
        ``log_prob`` of shape ``(batch,)``, the Gaussian log-density averaged over the non-batch dimensions (over the
        explored coordinates with ``explore_grid``), differentiable w.r.t. ``velocity``.
    """
    mean, std = flow_sde_mean_std(scheduler, velocity, step_index, sample, noise_level, explore_grid)
    work = torch.promote_types(sample.dtype, torch.float32)
    return gaussian_step(mean, std, sample, prev_sample, generator, explore_grid, velocity.dtype, work)


class RepeatedTokenAttnProcessor:
    """SD3's joint attention, able to run its last context token as ``last_token_repeats`` identical copies of it.

    Why: without T5, ``StableDiffusion3Pipeline`` appends ``max_sequence_length`` (256 by default) all-zero "T5"
    tokens to the prompt's CLIP tokens. They are identical, so they stay identical through every block, and in the
    softmax ``r`` copies of one key weigh exactly as one copy whose logit is raised by ``log r``. Running one such
    token with that bias computes what the stock pipeline computes with 256 (to float rounding) at a fraction of the
    cost: on the flow world the 256 tokens would be 3/4 of every forward's tokens. The world is pretrained, sampled and
    trained this way, so a stock ``StableDiffusion3Pipeline`` with its defaults generates the images it learned
    (tests/policies/test_flow.py).

    ``last_token_repeats`` arrives through the transformer's ``joint_attention_kwargs``; without it (a stock pipeline
    call on the same object) this is the stock processor's computation. Runtime state only: nothing is saved.
    """

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, last_token_repeats: int = 1
    ):
        batch, n_image = hidden_states.shape[0], hidden_states.shape[1]
        heads = attn.heads

        def split(x: torch.Tensor, norm) -> torch.Tensor:
            x = x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)
            return norm(x) if norm is not None else x

        query = split(attn.to_q(hidden_states), attn.norm_q)
        key = split(attn.to_k(hidden_states), attn.norm_k)
        value = split(attn.to_v(hidden_states), None)
        bias = None
        if encoder_hidden_states is not None:
            query = torch.cat([query, split(attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)], dim=2)
            key = torch.cat([key, split(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)], dim=2)
            value = torch.cat([value, split(attn.add_v_proj(encoder_hidden_states), None)], dim=2)
            if last_token_repeats != 1:
                bias = torch.zeros(1, key.shape[2], dtype=query.dtype, device=query.device)
                bias[:, -1] = math.log(last_token_repeats)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, query.shape[1] * query.shape[-1]).to(query.dtype)
        image, context = out[:, :n_image], out[:, n_image:]
        image = attn.to_out[1](attn.to_out[0](image))
        if encoder_hidden_states is None:
            return image
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return image, context


def compact_zero_tokens(transformer: torch.nn.Module) -> None:
    """Give ``transformer`` the :class:`RepeatedTokenAttnProcessor` (idempotent). It computes as the stock processor
    unless a call passes ``joint_attention_kwargs={"last_token_repeats": r}``."""
    if not all(isinstance(p, RepeatedTokenAttnProcessor) for p in transformer.attn_processors.values()):
        transformer.set_attn_processor(RepeatedTokenAttnProcessor())


def predict_velocity(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Cond,
    guidance_scale: float,
    last_token_repeats: int = 1,
) -> torch.Tensor:
    """Guided velocity with ONE transformer call on the ``[uncond, cond]`` batch, as ``StableDiffusion3Pipeline`` does
    it; shared by sampling and the update's log-prob recomputation. In the latents' dtype (bf16 autocast inside)."""
    if cond.pooled is None:
        raise ValueError(
            "An SD3-family transformer needs pooled text embeddings (Cond.pooled): encode with the policy."
        )
    cond.check(latents.shape[0])
    timesteps = torch.as_tensor(timesteps, device=latents.device)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(latents.shape[0])
    guided = cond.negative is not None and guidance_scale > 1.0
    if guided:
        latents_in, timesteps = torch.cat([latents, latents]), timesteps.repeat(2)
        embeds, pooled = torch.cat([cond.negative, cond.embeds]), torch.cat([cond.negative_pooled, cond.pooled])
    else:
        latents_in, embeds, pooled = latents, cond.embeds, cond.pooled
    with model_autocast(latents.device):
        out = transformer(
            hidden_states=latents_in,
            timestep=timesteps,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            joint_attention_kwargs={"last_token_repeats": last_token_repeats} if last_token_repeats != 1 else None,
            return_dict=False,
        )[0]
    out = out.to(latents.dtype)
    if not guided:
        return out
    uncond, cond_out = out.chunk(2)
    return uncond + guidance_scale * (cond_out - uncond)


@register_policy(lambda pipe: getattr(pipe, "transformer", None) is not None)  # SD3 family
class FlowSDEPolicy(Policy):
    """``pipe.transformer`` under the flow SDE: step keys are chain indices; ``noise_level`` is the SDE's ``a``."""

    denoiser_name = "transformer"

    def __init__(self, pipe) -> None:
        if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"The pipeline's scheduler is {type(pipe.scheduler).__name__}; the flow-SDE policy needs a "
                "FlowMatchEulerDiscreteScheduler: `pipe.scheduler = "
                "FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)`."
            )
        if pipe.scheduler.config.get("use_dynamic_shifting", False):
            raise ValueError(
                "The scheduler uses dynamic shifting (its shift depends on the image size, set per call by the "
                "pipeline); the policy runs set_timesteps itself: use a static `shift` in the scheduler config."
            )
        super().__init__(pipe)
        # Without T5 the stock pipeline's 256 zero tokens are run as one token standing for all of them
        self.compact_t5 = getattr(pipe, "text_encoder_3", None) is None
        if self.compact_t5:
            compact_zero_tokens(pipe.transformer)

    def step_keys(self) -> torch.Tensor:
        return torch.arange(len(self.scheduler.timesteps), device=self.scheduler.timesteps.device)

    def encode(self, prompts: list[str], guidance_scale: float) -> Cond:
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guidance_scale > 1.0,
            **({"max_sequence_length": 1} if self.compact_t5 else {}),
        )
        return Cond(embeds, negative, pooled, negative_pooled)

    def initial_noise(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
        config = self.pipe.transformer.config
        shape = (n, config.in_channels, config.sample_size, config.sample_size)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)

    def _timesteps(self, key: torch.Tensor) -> torch.Tensor:
        timesteps = self.scheduler.timesteps
        return timesteps[torch.as_tensor(key, device=timesteps.device).long()]

    def predict(
        self, model: torch.nn.Module, latents: torch.Tensor, key: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        timesteps = self._timesteps(key).to(latents.device)
        repeats = STOCK_T5_TOKENS if self.compact_t5 else 1
        return predict_velocity(model, latents, timesteps, cond, guidance_scale, repeats)

    def mean_std(
        self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor, noise_level: float, explore_grid: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_sde_mean_std(self.scheduler, pred, _index(key), latents, noise_level, explore_grid)

    def step(
        self,
        pred: torch.Tensor,
        key: torch.Tensor,
        latents: torch.Tensor,
        noise_level: float,
        generator: torch.Generator | None,
        explore_grid: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_sde_step_with_logprob(
            self.scheduler, pred, _index(key), latents, noise_level, generator=generator, explore_grid=explore_grid
        )

    def deterministic_step(self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return flow_ode_step(self.scheduler, pred, _index(key), latents)


def _index(key: torch.Tensor) -> torch.Tensor | int:
    key = torch.as_tensor(key)
    return int(key) if key.ndim == 0 else key.long()
