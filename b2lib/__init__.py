"""b2lib: B²-DiffuRL (backward progressive training + branch-based sampling) on diffusers pipelines.

The names below are imported on first use (PEP 562), so ``import b2lib.notebook`` (or ``b2lib.paths``) does not load
torch, diffusers or huggingface_hub: a notebook can set ``HF_HUB_OFFLINE`` before huggingface_hub reads it at import.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "HistoryNormalizer": "advantages",
    "PerPromptStatTracker": "advantages",
    "group_relative_advantages": "advantages",
    "select_in_groups": "advantages",
    "weighted_advantages": "advantages",
    "BertScore": "bertscore",
    "save_lora": "checkpoint",
    "ddim_step_with_logprob": "ddim",
    "gaussian_kl": "losses",
    "policy_loss": "losses",
    "ppo_clip_loss": "losses",
    "ClipScore": "rewards",
    "RewardNotFiniteError": "rewards",
    "Trajectories": "sampling",
    "sample_branches": "sampling",
    "sample_trajectories": "sampling",
    "ProgressiveSchedule": "schedule",
    "B2Trainer": "trainer",
    "DDPOTrainer": "trainer",
    "RLTrainer": "trainer",
    "TrainerConfig": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'b2lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
