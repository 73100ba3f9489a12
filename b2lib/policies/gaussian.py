"""The Gaussian step both policies share: a stochastic denoising step is ``N(mean(x_t), std_t^2 I)``, whatever model
and scheduler give its mean and std (:mod:`b2lib.policies.ddim` for DDIM, :mod:`b2lib.policies.flow` for the flow
SDE). Here: drawing it (the noise, optionally projected for coarse exploration), its log-probability, and the
exploration lattice. One implementation, so the two policies' densities cannot drift apart.

The log-probability follows DDPO's convention: the Gaussian log-density *averaged* (not summed) over the non-batch
dimensions, so its scale does not depend on the latent size.
"""

from __future__ import annotations

import math

import torch
from diffusers.utils.torch_utils import randn_tensor

__all__ = [
    "gaussian_log_prob",
    "explore_project",
    "explore_coords",
    "per_sample",
    "step_log_prob",
    "gaussian_step",
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


def per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a ``(batch,)`` tensor so it broadcasts against a ``(batch, ...)`` sample of ``ndim`` dimensions."""
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


def step_log_prob(
    prev_sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, explore_grid: int = 0
) -> torch.Tensor:
    """``log N(prev_sample; mean, std^2 I)`` per sample, from a policy's ``(mean, std)``;
    with ``explore_grid`` the density of the explored coordinates (:func:`explore_coords`), averaged over them.

    The density in float32 at least: half-precision squares of small differences over tiny variances are noise.
    ``prev_sample`` is an action, a constant: gradients flow to ``mean`` only.
    """
    ld = torch.promote_types(mean.dtype, torch.float32)
    prev, mean = (explore_coords(x.to(ld), explore_grid) for x in (prev_sample.detach(), mean))
    return gaussian_log_prob(prev, mean, per_sample(std, mean.ndim).to(ld))


def gaussian_step(
    mean: torch.Tensor,
    std: torch.Tensor,
    sample: torch.Tensor,
    prev_sample: torch.Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None,
    explore_grid: int,
    noise_dtype: torch.dtype,
    work_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``x_{t-1} ~ N(mean, std^2 I)`` (or take the given ``prev_sample``, an action) and its log-probability.

    The white noise is drawn in ``noise_dtype`` with ``generator`` (diffusers' ``randn_tensor``) and projected on the
    explored directions (:func:`explore_project`; the same draw either way, so the generator advances alike). The sum
    ``mean + std * noise`` runs in ``work_dtype`` when given (the flow SDE: every term cast to it first), else in the
    operands' own dtypes with ``std`` cast to ``sample``'s (DDIM, as diffusers' scheduler does). Returns
    ``(prev_sample, log_prob)``: ``prev_sample`` detached, in ``sample``'s dtype; ``log_prob`` of shape ``(batch,)``
    (:func:`step_log_prob`: of the sample as drawn for DDIM, as returned for the flow SDE; the same in fp32),
    differentiable w.r.t. ``mean``."""
    if prev_sample is not None and prev_sample.shape != sample.shape:
        raise ValueError(f"prev_sample shape {tuple(prev_sample.shape)} != sample shape {tuple(sample.shape)}.")
    if prev_sample is None:
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=noise_dtype)
        noise = explore_project(noise, explore_grid)
        if work_dtype is None:
            prev_sample = mean + per_sample(std, sample.ndim).to(sample.dtype) * noise
        else:
            prev_sample = mean.to(work_dtype) + per_sample(std, sample.ndim).to(work_dtype) * noise.to(work_dtype)
    prev_sample = prev_sample.detach()
    if work_dtype is not None:  # the flow SDE's order: the density of the sample as returned
        prev_sample = prev_sample.to(sample.dtype)
        return prev_sample, step_log_prob(prev_sample, mean, std, explore_grid)
    return prev_sample.to(sample.dtype), step_log_prob(prev_sample, mean, std, explore_grid)
