"""The DDIM policy, self-contained: Stable Diffusion 1.x (a UNet predicting noise) with DDIM's Gaussian step, the
paper's policy; its step math and its class in one file.

This is where the RL view of diffusion meets the scheduler maths. With ``eta > 0`` the DDIM update (Song et al.,
eq. 12) is ``x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2 I)``; DDPO treats that Gaussian as the policy and its log-density
as ``log pi(a | s)``. We reproduce the arithmetic of :meth:`diffusers.DDIMScheduler.step` term for term (so a
trajectory sampled here equals the stock pipeline's under the same noise) and add two things the scheduler lacks:
per-sample timesteps (a training batch mixes steps) and the log-probability of a *given* ``prev_sample`` (to recompute
``log pi_theta`` of stored transitions during the PPO update). Drawing the step and its density are the shared
Gaussian's (:mod:`b2lib.policies.gaussian`); VAE decoding is :mod:`b2lib.policies.vae`'s.

:class:`DDIMPolicy` delegates to that math and to the two model calls below, which sampling and the update's log-prob
recomputation share, so the policy whose log-prob is optimised is exactly the one that sampled.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from b2lib.policies.base import Cond, Policy, register_policy
from b2lib.policies.gaussian import (  # explore_coords, gaussian_log_prob: importable here as before the split
    explore_coords,
    explore_project,
    gaussian_log_prob,
    gaussian_step,
    per_sample,
    step_log_prob,
)
from b2lib.policies.vae import DECODE_BATCH, decode_latents
from b2lib.utils.precision import model_autocast

__all__ = [
    "DDIMPolicy",
    "predict_noise",
    "decode_latents",
    "DECODE_BATCH",
    "ddim_posterior_mean_std",
    "ddim_step_with_logprob",
    "ddim_log_prob",
    "explore_coords",
    "explore_project",
    "gaussian_log_prob",
]


def _check_step_inputs(scheduler, noise_pred: torch.Tensor, sample: torch.Tensor, eta: float) -> None:
    """What a DDIM step with a log-probability needs, each missing piece named with its fix."""
    if not isinstance(scheduler, DDIMScheduler):
        raise ValueError(
            f"ddim_step_with_logprob needs a diffusers DDIMScheduler, got {type(scheduler).__name__}. "
            "Swap it in with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."
        )
    if scheduler.num_inference_steps is None:
        raise ValueError("The scheduler has no inference steps yet: call `scheduler.set_timesteps(num_steps)` first.")
    if not eta > 0:
        raise ValueError(
            f"eta={eta}: a log-probability needs a stochastic step (eta > 0; the paper uses eta = 1.0). "
            "For deterministic sampling without log-probs use the stock pipeline."
        )
    if noise_pred.shape != sample.shape:
        raise ValueError(f"noise_pred shape {tuple(noise_pred.shape)} != sample shape {tuple(sample.shape)}.")
    if sample.ndim < 2:
        raise ValueError(f"sample must be batched, shape (batch, ...); got {tuple(sample.shape)}.")


def ddim_posterior_mean_std(
    scheduler: DDIMScheduler,
    noise_pred: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float,
    explore_grid: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DDIM policy ``N(mu_theta(x_t, t), sigma_t^2 I)`` itself: its mean and its std.

    ``explore_grid = g > 0``: *coarse exploration*. The step is stochastic only in the ``C g^2`` directions of the
    cell-constant fields (:func:`explore_project`), with DDIM's ``eta`` posterior there, and deterministic DDIM
    (eta = 0) in every other direction. Why: a score-function gradient from ``d`` explored dimensions has a per-sample
    signal-to-noise ratio of at most ``1 / (d + 1)`` (:mod:`b2lib.studies.gradient_snr`), so exploring fewer directions
    is a lever on the SNR that more images are not, on a CPU budget. The returned mean is then the full step's
    deterministic part (both pieces); the policy's density lives on the explored coordinates (:func:`ddim_log_prob`).

    Why separate from :func:`ddim_step_with_logprob`: a KL penalty to a reference model (DPOK, GRPO) compares two
    such Gaussians in closed form, which needs the means, not a log-density at one point.

    Args: as :func:`ddim_step_with_logprob` (without the action).

    Returns:
        ``(mean, std)``: ``mean`` of shape ``(batch, ...)`` in ``sample``'s dtype, differentiable w.r.t.
        ``noise_pred``; ``std`` of shape ``(batch,)`` in float64 (it depends on the timestep only, not on the model).
    """
    _check_step_inputs(scheduler, noise_pred, sample, eta)
    batch = sample.shape[0]
    device = sample.device
    timestep = torch.as_tensor(timestep, device=device)
    if timestep.ndim == 0:
        timestep = timestep.expand(batch)
    elif timestep.shape != (batch,):
        raise ValueError(
            f"timestep must be a scalar or one per sample, shape ({batch},); got {tuple(timestep.shape)}. "
            "Pass `timesteps[:, j]` for column j of a batch of trajectories."
        )
    timestep = timestep.long()

    cfg = scheduler.config
    step = cfg.num_train_timesteps // scheduler.num_inference_steps
    prev_timestep = timestep - step

    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, device=device, dtype=torch.float64)
    alpha_t = alphas_cumprod.gather(0, timestep.clamp(0, cfg.num_train_timesteps - 1))
    alpha_prev = torch.where(
        prev_timestep >= 0, alphas_cumprod.gather(0, prev_timestep.clamp(min=0)), final_alpha.expand(batch)
    )
    beta_t = 1 - alpha_t
    beta_prev = 1 - alpha_prev
    # Coefficients in float64 (cheap: (batch,) vectors), then cast: late steps have tiny sigma.
    # sigma_t^2 of DDIM eq. 16 (the same formula as DDIMScheduler._get_variance, vectorised over the batch).
    variance = (beta_prev / beta_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.sqrt()
    if bool((std <= 0).any()):
        raise ValueError(
            "A DDIM step has zero variance (typically the last step with `set_alpha_to_one=True`), so it has no "
            "log-probability. Configure the scheduler with `set_alpha_to_one=False` (Stable Diffusion's setting)."
        )

    # Every coefficient is formed in float64 and only then cast: in fp16/bf16, 1 - alpha_prev - sigma^2 can round
    # below zero (NaN after sqrt) and late-step sigmas lose their digits.
    dtype = sample.dtype
    direction_coef = (1 - alpha_prev - std**2).clamp(min=0).sqrt()
    sa_t, sb_t, sa_prev, dir_c = (
        per_sample(v, sample.ndim).to(dtype) for v in (alpha_t.sqrt(), beta_t.sqrt(), alpha_prev.sqrt(), direction_coef)
    )

    if cfg.prediction_type == "epsilon":
        pred_x0 = (sample - sb_t * noise_pred) / sa_t
        pred_eps = noise_pred
    elif cfg.prediction_type == "sample":
        pred_x0 = noise_pred
        pred_eps = (sample - sa_t * pred_x0) / sb_t
    elif cfg.prediction_type == "v_prediction":
        pred_x0 = sa_t * sample - sb_t * noise_pred
        pred_eps = sa_t * noise_pred + sb_t * sample
    else:  # pragma: no cover - diffusers validates this on construction
        raise ValueError(f"Unsupported prediction_type {cfg.prediction_type!r}.")

    if cfg.thresholding:
        pred_x0 = scheduler._threshold_sample(pred_x0)
    elif cfg.clip_sample:
        pred_x0 = pred_x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)

    mean = sa_prev * pred_x0 + dir_c * pred_eps
    if explore_grid:
        # the unexplored directions follow deterministic DDIM: direction coefficient sqrt(1 - alpha_prev)
        mean_det = sa_prev * pred_x0 + per_sample((1 - alpha_prev).sqrt(), sample.ndim).to(dtype) * pred_eps
        mean = explore_project(mean, explore_grid) + mean_det - explore_project(mean_det, explore_grid)
    return mean, std


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    noise_pred: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    explore_grid: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One stochastic DDIM step ``x_t -> x_{t-1}`` and ``log p(x_{t-1} | x_t)`` under the DDIM posterior.

    Args:
        scheduler: a :class:`~diffusers.DDIMScheduler` on which ``set_timesteps`` has been called (the step size is
            ``num_train_timesteps // num_inference_steps``, exactly as in ``DDIMScheduler.step``).
        noise_pred: model output for ``sample`` (after classifier-free guidance), shape ``(batch, ...)``.
        timestep: the current timestep ``t``: an int / 0-d tensor (sampling, same ``t`` for the batch) or a
            ``(batch,)`` tensor (training, one ``t`` per sample).
        sample: ``x_t``, shape ``(batch, ...)``.
        eta: DDIM stochasticity; must be > 0, since with ``eta = 0`` the step is deterministic and has no density.
        prev_sample: if given, the ``x_{t-1}`` whose log-probability is wanted (no noise is drawn); otherwise
            ``x_{t-1}`` is sampled with ``generator``.
        generator: torch generator(s) for the step noise (same semantics as diffusers' ``randn_tensor``).
        explore_grid: 0 (DDIM's full-dimensional noise) or ``g``: noise only in the cell-constant directions of a
            ``g x g`` lattice, deterministic elsewhere (see :func:`ddim_posterior_mean_std`). The same white noise is
            drawn either way (so the generator advances alike) and projected.

    Returns:
        ``(prev_sample, log_prob)`` with ``log_prob`` of shape ``(batch,)`` (mean over non-batch dimensions). The
        log-probability is differentiable w.r.t. ``noise_pred``; ``prev_sample`` is treated as a constant (an action).
    """
    mean, std = ddim_posterior_mean_std(scheduler, noise_pred, timestep, sample, eta, explore_grid)
    return gaussian_step(mean, std, sample, prev_sample, generator, explore_grid, noise_pred.dtype)


#: the log-density of a DDIM step's ``(mean, std)``: the shared Gaussian's (kept under its earlier name)
ddim_log_prob = step_log_prob


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
    :func:`b2lib.utils.precision.compute_dtype` ``("bf16")`` the UNet runs in bf16 autocast and its output is cast back
    to the latents' dtype before guidance, so what follows (guidance, the DDIM step, the log-prob) is computed in fp32.
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


@register_policy()  # the fallback: SD 1.x, and any pipeline no other policy accepts
class DDIMPolicy(Policy):
    """``pipe.unet`` under DDIM: the step keys are the scheduler's timesteps; ``noise_level`` is ``eta``."""

    denoiser_name = "unet"

    def __init__(self, pipe: StableDiffusionPipeline) -> None:
        if not isinstance(pipe.scheduler, DDIMScheduler):
            raise ValueError(
                f"The pipeline's scheduler is {type(pipe.scheduler).__name__}; B²-DiffuRL needs DDIM's Gaussian step. "
                "Use `b2lib.training.models.ensure_ddim(pipe)` or "
                "`pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."
            )
        super().__init__(pipe)

    def step_keys(self) -> torch.Tensor:
        return self.scheduler.timesteps

    def encode(self, prompts: list[str], guidance_scale: float) -> Cond:
        cond, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, guidance_scale > 1.0)
        return Cond(cond, uncond)

    def initial_noise(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
        config = self.pipe.unet.config
        shape = (n, config.in_channels, config.sample_size, config.sample_size)
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        return noise * self.scheduler.init_noise_sigma

    def predict(
        self, model: torch.nn.Module, latents: torch.Tensor, key: torch.Tensor, cond: Cond, guidance_scale: float
    ) -> torch.Tensor:
        model_input = self.scheduler.scale_model_input(latents, key)
        return predict_noise(model, model_input, key, cond.embeds, cond.negative, guidance_scale)

    def mean_std(
        self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor, noise_level: float, explore_grid: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim_posterior_mean_std(self.scheduler, pred, key, latents, noise_level, explore_grid)

    def step(
        self,
        pred: torch.Tensor,
        key: torch.Tensor,
        latents: torch.Tensor,
        noise_level: float,
        generator: torch.Generator | None,
        explore_grid: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim_step_with_logprob(
            self.scheduler, pred, key, latents, noise_level, generator=generator, explore_grid=explore_grid
        )

    def deterministic_step(self, pred: torch.Tensor, key: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(pred, key, latents, eta=0.0).prev_sample
