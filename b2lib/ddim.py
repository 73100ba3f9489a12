"""The DDIM step as a Gaussian policy: sample ``x_{t-1}`` and return its log-probability.

This is the only place where the RL view of diffusion meets the scheduler maths. With ``eta > 0`` the DDIM update
(Song et al., eq. 12) is ``x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2 I)``; DDPO treats that Gaussian as the policy and its
log-density as ``log pi(a | s)``. We reproduce the arithmetic of :meth:`diffusers.DDIMScheduler.step` term for term (so
a trajectory sampled here equals the stock pipeline's under the same noise) and add two things the scheduler lacks:
per-sample timesteps (a training batch mixes steps) and the log-probability of a *given* ``prev_sample`` (to recompute
``log pi_theta`` of stored transitions during the PPO update).

The log-probability follows DDPO's convention: the Gaussian log-density *averaged* (not summed) over the non-batch
dimensions, so its scale does not depend on the latent size.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

__all__ = [
    "ddim_log_prob",
    "ddim_posterior_mean_std",
    "ddim_step_with_logprob",
    "explore_coords",
    "explore_project",
    "gaussian_log_prob",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mean, std^2) averaged over every dimension but the first (DDPO's convention)."""
    log_density = -((x - mean) ** 2) / (2.0 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return log_density.mean(dim=tuple(range(1, x.ndim)))


def _check_grid(x: torch.Tensor, grid: int) -> tuple[int, int]:
    if grid < 0 or x.ndim != 4:
        raise ValueError(f"explore_grid={grid} needs grid >= 0 and (batch, C, H, W) latents, got {tuple(x.shape)}.")
    h, w = x.shape[-2:]
    if h % grid or w % grid:
        raise ValueError(f"explore_grid={grid} must divide the latent size {h}x{w} (use a divisor, or 0 for none).")
    return h // grid, w // grid


def explore_project(x: torch.Tensor, grid: int) -> torch.Tensor:
    """The orthogonal projection of ``x`` onto the fields that are constant on each cell of a ``grid x grid``
    lattice (per channel): average over each cell, then fill the cell with it. ``grid = 0``: ``x`` unchanged."""
    if not grid:
        return x
    kh, kw = _check_grid(x, grid)
    pooled = torch.nn.functional.avg_pool2d(x, (kh, kw))
    return pooled.repeat_interleave(kh, dim=-2).repeat_interleave(kw, dim=-1)


def explore_coords(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``x``'s coordinates in the orthonormal basis of those cell-constant fields (cell indicator / sqrt(cell size)):
    ``sqrt(cell size) * cell mean``, shape ``(batch, C, grid, grid)``. A Gaussian step whose noise is
    ``explore_project`` of white noise has, in these coordinates, the white noise's std: its log-density is taken
    here. ``grid = 0``: ``x`` itself (full-dimensional exploration)."""
    if not grid:
        return x
    kh, kw = _check_grid(x, grid)
    return torch.nn.functional.avg_pool2d(x, (kh, kw)) * math.sqrt(kh * kw)


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a ``(batch,)`` tensor so it broadcasts against a ``(batch, ...)`` sample of ``ndim`` dimensions."""
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


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
    signal-to-noise ratio of at most ``1 / (d + 1)`` (:mod:`b2lib.gradient_snr`), so exploring fewer directions is a
    lever on the SNR that more images are not, on a CPU budget. The returned mean is then the full step's
    deterministic part (both pieces); the policy's density lives on the explored coordinates (:func:`ddim_log_prob`).

    Why separate from :func:`ddim_step_with_logprob`: a KL penalty to a reference model (DPOK, GRPO) compares two
    such Gaussians in closed form, which needs the means, not a log-density at one point.

    Args: as :func:`ddim_step_with_logprob` (without the action).

    Returns:
        ``(mean, std)``: ``mean`` of shape ``(batch, ...)`` in ``sample``'s dtype, differentiable w.r.t.
        ``noise_pred``; ``std`` of shape ``(batch,)`` in float64 (it depends on the timestep only, not on the model).
    """
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
        _per_sample(v, sample.ndim).to(dtype)
        for v in (alpha_t.sqrt(), beta_t.sqrt(), alpha_prev.sqrt(), direction_coef)
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
        mean_det = sa_prev * pred_x0 + _per_sample((1 - alpha_prev).sqrt(), sample.ndim).to(dtype) * pred_eps
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
    if prev_sample is not None and prev_sample.shape != sample.shape:
        raise ValueError(f"prev_sample shape {tuple(prev_sample.shape)} != sample shape {tuple(sample.shape)}.")
    dtype = sample.dtype

    if prev_sample is None:
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(noise_pred.shape, generator=generator, device=sample.device, dtype=noise_pred.dtype)
        noise = explore_project(noise, explore_grid)
        prev_sample = (mean + _per_sample(std, sample.ndim).to(dtype) * noise).detach()

    return prev_sample.type(dtype), ddim_log_prob(prev_sample, mean, std, explore_grid)


def ddim_log_prob(
    prev_sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, explore_grid: int = 0
) -> torch.Tensor:
    """``log N(prev_sample; mean, std^2 I)`` per sample, from :func:`ddim_posterior_mean_std`'s ``(mean, std)``;
    with ``explore_grid`` the density of the explored coordinates (:func:`explore_coords`), averaged over them.

    The density in float32 at least: half-precision squares of small differences over tiny variances are noise.
    ``prev_sample`` is an action, a constant: gradients flow to ``mean`` only.
    """
    ld = torch.promote_types(mean.dtype, torch.float32)
    prev, mean = (explore_coords(x.to(ld), explore_grid) for x in (prev_sample.detach(), mean))
    return gaussian_log_prob(prev, mean, _per_sample(std, mean.ndim).to(ld))
