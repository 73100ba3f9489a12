"""Policy losses on per-step log-probabilities. The sampler and the schedule are independent of the loss.

Three algorithms share the PPO-clip surrogate and differ in what they add to it (and, in the trainer, in how rewards
become advantages):

* ``"ppo"``: DDPO's PPO-clip alone.
* ``"dpok"``: DPOK (Fan et al., 2023): the clipped policy gradient plus ``kl_coef * KL(p_theta || p_ref)`` per step.
* ``"grpo"``: GRPO (DeepSeekMath; Flow-GRPO/DanceGRPO for diffusion): PPO-clip on group-relative advantages plus the
  same ``kl_coef * KL`` term.

The KL is per denoising step between the two Gaussians ``N(mu_theta, sigma_t^2 I)`` and ``N(mu_ref, sigma_t^2 I)``
(same DDIM std), in closed form and averaged over latent dimensions like the log-probabilities, so that ``kl_coef``
weighs two terms of the same scale whatever the latent size.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["ALGORITHMS", "gaussian_kl", "kl_regularised_loss", "needs_reference", "policy_loss", "ppo_clip_loss"]

Algorithm = Literal["ppo", "dpok", "grpo"]
#: The RL updates the trainer can wrap B² around.
ALGORITHMS: tuple[str, ...] = ("ppo", "dpok", "grpo")


def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DDPO's PPO-clip objective for one timestep column: ``mean(max(-A r, -A clip(r, 1-eps, 1+eps)))``.

    Returns the loss and detached diagnostics: ``approx_kl`` (0.5 E[(log r)^2], as DDPO logs it) and ``clipfrac``.
    """
    if not (log_prob.shape == old_log_prob.shape == advantages.shape):
        raise ValueError(
            f"log_prob {tuple(log_prob.shape)}, old_log_prob {tuple(old_log_prob.shape)} and advantages "
            f"{tuple(advantages.shape)} must have the same (batch,) shape."
        )
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "approx_kl": 0.5 * (log_ratio**2).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean(),
        }
    return loss, stats


def needs_reference(algorithm: str) -> bool:
    """Whether ``algorithm``'s loss has a KL term to the reference (pretrained) model."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {algorithm!r}: use one of {ALGORITHMS}.")
    return algorithm != "ppo"


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, std^2 I) || N(ref_mean, std^2 I))`` per sample: ``||mean - ref_mean||^2 / (2 std^2)`` averaged
    (not summed) over the non-batch dimensions, the convention of :func:`b2lib.policies.gaussian.gaussian_log_prob`.

    Why closed form: both DDIM policies share the step's std (it depends on the timestep and eta, not the weights),
    so the KL is exact and cheap; no sampling estimate (GRPO's k3) is needed.

    Args:
        mean: ``(batch, ...)``, the trained policy's mean (gradients flow through it).
        ref_mean: same shape, the reference's mean (detached).
        std: ``(batch,)`` or broadcastable to ``mean``.

    Returns:
        ``(batch,)`` in float32 at least.
    """
    if mean.shape != ref_mean.shape or mean.ndim < 2:
        raise ValueError(
            f"mean {tuple(mean.shape)} and ref_mean {tuple(ref_mean.shape)} must be equal (batch, ...) shapes."
        )
    ld = torch.promote_types(mean.dtype, torch.float32)
    std = torch.as_tensor(std, device=mean.device)
    if std.ndim == 1 and std.shape[0] == mean.shape[0]:
        std = std.reshape(-1, *([1] * (mean.ndim - 1)))
    per_dim = (mean.to(ld) - ref_mean.detach().to(ld)) ** 2 / (2.0 * std.to(ld) ** 2)
    return per_dim.mean(dim=tuple(range(1, mean.ndim)))


def kl_regularised_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    kl: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip surrogate + ``kl_coef * mean(kl)``: the loss of DPOK and GRPO.

    DPOK's implementation clips the importance ratio as PPO does, and GRPO's objective is PPO-clip with a KL penalty,
    so the two share this loss; they differ in their advantages (see
    :class:`b2lib.training.trainer.RLTrainer.advantages`).
    Returns the loss and detached diagnostics: ppo_clip_loss's plus ``kl`` (mean per-step KL to the reference) and
    ``policy_loss`` (the surrogate alone).
    """
    if kl.shape != log_prob.shape:
        raise ValueError(f"kl {tuple(kl.shape)} must have log_prob's (batch,) shape {tuple(log_prob.shape)}.")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}.")
    surrogate, stats = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range)
    kl_mean = kl.mean()
    stats["kl"] = kl_mean.detach()
    stats["policy_loss"] = surrogate.detach()
    return surrogate + kl_coef * kl_mean, stats


def policy_loss(
    algorithm: Algorithm,
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of ``algorithm`` (one of :data:`ALGORITHMS`) on a batch of transitions; ``kl`` (per transition, from
    :func:`gaussian_kl`) is required exactly when :func:`needs_reference` says so."""
    if not needs_reference(algorithm):
        return ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range)
    if kl is None:
        raise ValueError(f"algorithm={algorithm!r} adds a KL to the reference model: pass kl (see gaussian_kl).")
    return kl_regularised_loss(log_prob, old_log_prob, advantages, clip_range, kl, kl_coef)
