"""From rewards to advantages: normalisation (B²'s history window, DDPO's per-prompt tracker) and in-group selection.

All functions are pure or hold only small per-prompt buffers (with ``state_dict`` for resuming).
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "GROUP_EPS",
    "HistoryNormalizer",
    "flat_groups",
    "PerPromptStatTracker",
    "group_ids_of",
    "group_relative_advantages",
    "select_in_groups",
    "weighted_advantages",
]


def _as_float_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64) if not torch.is_tensor(x) else x.detach().double().cpu())


def _check(prompts: Sequence[str], rewards: torch.Tensor) -> None:
    if rewards.ndim != 1 or rewards.shape[0] != len(prompts):
        raise ValueError(
            f"Need one reward per prompt: {len(prompts)} prompts, rewards of shape {tuple(rewards.shape)}."
        )


class HistoryNormalizer:
    """B²-DiffuRL's per-prompt z-score: ``z = (r - mean) / (std + eps)`` over this stage's rewards of the prompt pooled
    with its rewards from the last ``history`` stages (reference: 8). Call once per stage.

    Why a window: a prompt sampled a handful of times in one stage has a noisy mean; the recent past steadies it while
    still tracking the improving policy. ``std`` is the unbiased sample std (as in the reference); a prompt seen once
    in total gets z = 0 (no evidence either way).
    """

    def __init__(self, history: int = 8, eps: float = 1e-8) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0, got {history}.")
        self.history = history
        self.eps = eps
        self._past: deque[dict[str, list[float]]] = deque(maxlen=history if history > 0 else None)

    def __call__(self, prompts: Sequence[str], rewards) -> torch.Tensor:
        rewards = _as_float_tensor(rewards)
        _check(prompts, rewards)
        prompts_arr = np.asarray(prompts, dtype=object)
        z = torch.zeros_like(rewards)
        current: dict[str, list[float]] = {}
        for prompt in dict.fromkeys(prompts):
            idx = torch.from_numpy(np.flatnonzero(prompts_arr == prompt))
            cur = rewards[idx]
            current[prompt] = cur.tolist()
            pool = [v for stage in self._past for v in stage.get(prompt, [])] + current[prompt]
            if len(pool) < 2:
                continue
            pool_t = torch.tensor(pool, dtype=torch.float64)
            z[idx] = (cur - pool_t.mean()) / (pool_t.std() + self.eps)
        if self.history > 0:
            self._past.append(current)
        return z.float()

    def state_dict(self) -> dict:
        return {"history": self.history, "eps": self.eps, "past": list(self._past)}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["history"], state["eps"])
        self._past.extend(state["past"])


class PerPromptStatTracker:
    """DDPO's per-prompt reward normalisation: a FIFO of the last ``buffer_size`` rewards per prompt; until a prompt has
    ``min_count`` of them, the batch's global mean/std is used instead. Population std + 1e-6, as in DDPO.
    """

    def __init__(self, buffer_size: int = 16, min_count: int = 16) -> None:
        self.buffer_size = buffer_size
        self.min_count = min_count
        self._stats: dict[str, deque[float]] = {}

    def __call__(self, prompts: Sequence[str], rewards) -> torch.Tensor:
        rewards = _as_float_tensor(rewards)
        _check(prompts, rewards)
        prompts_arr = np.asarray(prompts, dtype=object)
        out = torch.zeros_like(rewards)
        for prompt in dict.fromkeys(prompts):
            idx = torch.from_numpy(np.flatnonzero(prompts_arr == prompt))
            buf = self._stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            buf.extend(rewards[idx].tolist())
            if len(buf) < self.min_count:
                mean, std = rewards.mean(), rewards.std(unbiased=False) + 1e-6
            else:
                vals = torch.tensor(list(buf), dtype=torch.float64)
                mean, std = vals.mean(), vals.std(unbiased=False) + 1e-6
            out[idx] = (rewards[idx] - mean) / std
        return out.float()

    def state_dict(self) -> dict:
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "stats": {k: list(v) for k, v in self._stats.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["buffer_size"], state["min_count"])
        for k, v in state["stats"].items():
            self._stats[k] = deque(v, maxlen=self.buffer_size)


def _first_index_of(
    values: torch.Tensor, group_ids: torch.Tensor, num_groups: int, target: torch.Tensor
) -> torch.Tensor:
    """Per group, the smallest sample index whose value equals the group's target (ties go to the first sample)."""
    hits = values == target[group_ids]
    idx = torch.arange(values.shape[0])
    first = torch.full((num_groups,), values.shape[0], dtype=torch.long)
    return first.scatter_reduce(0, group_ids[hits], idx[hits], reduce="amin")


def select_in_groups(
    z: torch.Tensor, group_ids: torch.Tensor, pos_threshold: float = 0.5, neg_threshold: float = -0.5
) -> torch.Tensor:
    """Boolean mask of the samples B²-DiffuRL trains on: in each group (samples sharing a prefix) the best sample if
    its z >= ``pos_threshold`` and the worst if its z < ``neg_threshold``. Everything else is dropped, so each kept
    pair differs only in what the trained interval did.
    """
    z = torch.as_tensor(z).detach().float().cpu()
    group_ids = torch.as_tensor(group_ids).long().cpu()
    if z.ndim != 1 or group_ids.shape != z.shape:
        raise ValueError(f"z {tuple(z.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D shapes.")
    if pos_threshold < neg_threshold:
        raise ValueError(f"pos_threshold ({pos_threshold}) must be >= neg_threshold ({neg_threshold}).")
    mask = torch.zeros_like(z, dtype=torch.bool)
    if z.numel() == 0:
        return mask
    _, groups = torch.unique(group_ids, return_inverse=True)
    n = int(groups.max()) + 1
    gmax = torch.full((n,), -torch.inf).scatter_reduce(0, groups, z, reduce="amax")
    gmin = torch.full((n,), torch.inf).scatter_reduce(0, groups, z, reduce="amin")
    best = _first_index_of(z, groups, n, gmax)
    worst = _first_index_of(z, groups, n, gmin)
    mask[best[gmax >= pos_threshold]] = True
    mask[worst[gmin < neg_threshold]] = True
    return mask


def weighted_advantages(
    z: torch.Tensor, adv_clip: float = 5.0, pos_weight: float = 1.0, neg_weight: float = 1.0
) -> torch.Tensor:
    """``clip(z, -adv_clip, adv_clip)`` scaled by ``pos_weight`` where z > 0 and ``neg_weight`` elsewhere."""
    z = torch.as_tensor(z).float()
    return z.clamp(-adv_clip, adv_clip) * torch.where(z > 0, pos_weight, neg_weight)


#: GRPO's std floor, in reward units (Flow-GRPO's value), shared by the branch-tree advantages (b2lib.algorithm.tree)
GROUP_EPS = 1e-4


def group_relative_advantages(rewards, group_ids, eps: float = GROUP_EPS) -> torch.Tensor:
    """GRPO's advantages: each reward standardised within its group, ``(r - mean_g) / (std_g + eps)``.

    A group is the set of samples that answer the same question: for B², a branch group (one shared prefix, so the
    z-score measures only what the trained interval did); for plain sampling, the samples of one prompt. ``std_g`` is
    the population std (as Flow-GRPO's tracker, and DDPO's), so a group's z has zero mean and unit std; ``eps`` keeps a
    constant-reward group at exactly 0 (no signal, no NaN) and a singleton group is constant. No history: the
    group is its own baseline, which is what makes GRPO critic- and tracker-free.

    ``eps`` is in reward units (1e-4 as Flow-GRPO): a group whose rewards spread by much less than ``eps`` (branches
    that barely differ) gets advantages shrunk towards 0 rather than noise blown up to unit scale.
    """
    rewards = _as_float_tensor(rewards)
    group_ids = torch.as_tensor(group_ids).long().cpu()
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D shapes."
        )
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (it keeps constant groups finite), got {eps}.")
    if rewards.numel() == 0:
        return rewards.float()
    _, groups = torch.unique(group_ids, return_inverse=True)
    n = int(groups.max()) + 1
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, groups, torch.ones_like(rewards))
    mean = torch.zeros(n, dtype=torch.float64).index_add_(0, groups, rewards) / count
    centred = rewards - mean[groups]
    var = torch.zeros(n, dtype=torch.float64).index_add_(0, groups, centred**2) / count
    return (centred / (var.sqrt()[groups] + eps)).float()


def group_ids_of(prompts: Sequence[str]) -> torch.Tensor:
    """One id per distinct prompt, in order of first appearance: groups for plain (unbranched) sampling."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(p, len(index)) for p in prompts], dtype=torch.long)


def flat_groups(rewards: torch.Tensor, group_ids: torch.Tensor, below: float | None = None) -> int:
    """How many branch groups have the same reward in every branch: they carry no within-group signal (under a binary
    reward, the groups whose branches all fail, or all succeed). ``below``: count only those whose common reward is
    below it (with the stage's mean reward: the "flat_low" groups of :func:`b2lib.studies.grids.group_census`)."""
    flat = [rewards[group_ids == g] for g in group_ids.unique()]
    flat = [r for r in flat if bool((r == r[0]).all())]
    return sum(1 for r in flat if below is None or float(r[0]) < below)
