"""Metrics beyond the reward: within-prompt diversity.

The paper reports image diversity but its exact formula is not available to us, so we define ours and say so:
**semantic diversity** = mean pairwise ``1 - cos`` of CLIP image embeddings among the images of one prompt, averaged
over prompts; **pixel diversity** = the same with root-mean-square pixel distance. Both are 0 for identical images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["pairwise_diversity", "pixel_diversity"]


def _groups(keys: Sequence[str]) -> list[torch.Tensor]:
    keys_arr = np.asarray(list(keys), dtype=object)
    return [torch.from_numpy(np.flatnonzero(keys_arr == k)) for k in dict.fromkeys(keys)]


def _mean_offdiag(d: torch.Tensor) -> float:
    n = d.shape[0]
    return float(d.sum() / (n * (n - 1)))


def pairwise_diversity(features: torch.Tensor, prompts: Sequence[str]) -> float:
    """Mean over prompts of the mean pairwise cosine distance of ``features`` (N, D) within the prompt."""
    if features.ndim != 2 or features.shape[0] != len(prompts):
        raise ValueError(f"features must be (N, D) with N = {len(prompts)} prompts; got {tuple(features.shape)}.")
    f = F.normalize(features.float(), dim=-1)
    vals = [_mean_offdiag(1 - f[idx] @ f[idx].T) for idx in _groups(prompts) if len(idx) > 1]
    if not vals:
        raise ValueError("Diversity needs at least two images of one prompt.")
    return float(np.mean(vals))


def pixel_diversity(images: torch.Tensor, prompts: Sequence[str]) -> float:
    """Mean over prompts of the mean pairwise RMS pixel distance (images in [0, 1]) within the prompt."""
    if images.shape[0] != len(prompts):
        raise ValueError(f"{images.shape[0]} images for {len(prompts)} prompts.")
    flat = images.flatten(1).float()
    vals = []
    for idx in _groups(prompts):
        if len(idx) > 1:
            x = flat[idx]
            vals.append(_mean_offdiag(torch.cdist(x, x) / x.shape[1] ** 0.5))
    if not vals:
        raise ValueError("Diversity needs at least two images of one prompt.")
    return float(np.mean(vals))
