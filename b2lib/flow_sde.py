"""The rectified-flow step as a Gaussian policy (Flow-GRPO's ODE -> SDE conversion): :mod:`b2lib.ddim` for SD3.

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
rate the injected noise adds it; with its sign flipped the variance blows up (tests/test_flow_sde.py checks this).
``a`` (``noise_level``, Flow-GRPO uses 0.7) is the exploration knob: ``a = 0`` is the ODE itself, larger ``a`` injects
more noise, proportionally to the noise-to-signal ratio ``s / (1 - s)``. At ``s = 1`` that ratio is infinite, so, as
Flow-GRPO does, the ``s`` inside ``1 - s`` (only there) is replaced by the chain's second sigma ``sigmas[1]``.

The log-probability follows :mod:`b2lib.ddim`'s (DDPO's) convention: averaged over the non-batch dimensions.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from b2lib.ddim import _per_sample, ddim_log_prob, explore_project

__all__ = ["flow_ode_step", "flow_sde_mean_std", "flow_sde_step_with_logprob"]


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
            "pipe.scheduler.config)`; for DDIM-type (epsilon) models use b2lib.ddim instead."
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
    dt = _per_sample(sigmas[index + 1] - sigmas[index], sample.ndim).to(work)
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

    Separate from :func:`flow_sde_step_with_logprob` for the same reason as :func:`b2lib.ddim.ddim_posterior_mean_std`:
    a KL penalty to a reference model compares two such Gaussians in closed form, which needs the means.

    ``explore_grid = g > 0``: coarse exploration, as in :mod:`b2lib.ddim`: noise (and the SDE's drift correction)
    only in the cell-constant directions of a ``g x g`` lattice, the deterministic Euler step in every other direction,
    i.e. ``mean = P(mean_sde) + mean_ode - P(mean_ode)`` with ``P`` = :func:`~b2lib.ddim.explore_project`; since ``P``
    is linear this is computed as ``mean_ode + P(mean_sde - mean_ode)``.

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
        _per_sample(c, sample.ndim).to(work) for c in (std_s[index] ** 2 / (2 * sigma) * dt, 1 - sigma, dt)
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
    ``log pi(a | s)``), as :func:`b2lib.ddim.ddim_step_with_logprob` is for DDIM.

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
    if prev_sample is not None and prev_sample.shape != sample.shape:
        raise ValueError(f"prev_sample shape {tuple(prev_sample.shape)} != sample shape {tuple(sample.shape)}.")
    if prev_sample is None:
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=velocity.dtype)
        noise = explore_project(noise, explore_grid)
        work = torch.promote_types(sample.dtype, torch.float32)
        prev_sample = (mean.to(work) + _per_sample(std, sample.ndim).to(work) * noise.to(work)).detach()
    prev_sample = prev_sample.detach().to(sample.dtype)
    return prev_sample, ddim_log_prob(prev_sample, mean, std, explore_grid)
