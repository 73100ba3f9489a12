"""Policy losses on per-step log-probabilities. The sampler and the schedule are independent of the loss."""

from __future__ import annotations

import torch

__all__ = ["ppo_clip_loss"]


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
