"""b2lib: B²-DiffuRL (backward progressive training + branch-based sampling) on diffusers pipelines.

The tree is the architecture, each layer importing only the layers above it in this list:

- ``utils``: file I/O (run folders, study tables), paths, the compute dtype, progress lines;
- ``policies``: the policy interface and one self-contained file per policy (DDIM for SD 1.x, the flow SDE for SD3);
- ``rewards``: the reward contract, CLIPScore, BERTScore;
- ``algorithm``: branch sampling and trees over a policy, the progressive schedule, advantages, losses;
- ``training``: the trainer's configuration beside the trainer, the update, cost, checkpoints, models and LoRA;
- ``evaluation``: same-noise evaluation images, metrics, paired comparisons and their statistics, training health;
- ``world``: the embedded world of coloured shapes (scenes, prompts, judge, its models and their pretraining);
- ``reporting``: reading finished runs, figures in one style, the front page and its claims;
- ``experiments``: a run's configuration, scales and setups, its jobs, re-evaluation;
- ``studies``: the run grids and analyses of the notebooks; ``bench``: speed measurements;
- ``train`` (the command line) and ``notebook`` (what every notebook does first).

The names below are imported on first use (PEP 562), so ``import b2lib.notebook`` does not load torch, diffusers or
huggingface_hub: a notebook can set ``HF_HUB_OFFLINE`` before huggingface_hub reads it at import. The flat module
paths of earlier versions (``b2lib.trainer``, ...) still import, through one hook (:mod:`b2lib._aliases`).
"""

from __future__ import annotations

import importlib

from b2lib import _aliases

_aliases.install()

__version__ = "0.1.0"

_EXPORTS = {
    "HistoryNormalizer": "algorithm.advantages",
    "PerPromptStatTracker": "algorithm.advantages",
    "group_relative_advantages": "algorithm.advantages",
    "select_in_groups": "algorithm.advantages",
    "weighted_advantages": "algorithm.advantages",
    "BertScore": "rewards.bertscore",
    "save_lora": "training.checkpoint",
    "ddim_step_with_logprob": "policies.ddim",
    "gaussian_kl": "algorithm.losses",
    "policy_loss": "algorithm.losses",
    "ppo_clip_loss": "algorithm.losses",
    "ClipScore": "rewards.base",
    "RewardNotFiniteError": "rewards.base",
    "Trajectories": "algorithm.sampling",
    "sample_branches": "algorithm.sampling",
    "sample_trajectories": "algorithm.sampling",
    "ProgressiveSchedule": "algorithm.schedule",
    "B2Trainer": "training.trainer",
    "DDPOTrainer": "training.trainer",
    "RLTrainer": "training.trainer",
    "TrainerConfig": "training.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"b2lib.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'b2lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
