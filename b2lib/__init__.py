"""b2lib: B²-DiffuRL (backward progressive training + branch-based sampling) on diffusers pipelines."""

from .advantages import (HistoryNormalizer, PerPromptStatTracker, group_relative_advantages, select_in_groups,
                         weighted_advantages)
from .bertscore import BertScore
from .ddim import ddim_step_with_logprob
from .losses import gaussian_kl, policy_loss, ppo_clip_loss
from .rewards import ClipScore
from .sampling import Trajectories, sample_branches, sample_trajectories
from .schedule import ProgressiveSchedule
from .trainer import B2Trainer, DDPOTrainer, RLTrainer, TrainerConfig

__version__ = "0.1.0"

__all__ = [
    "B2Trainer",
    "BertScore",
    "ClipScore",
    "DDPOTrainer",
    "HistoryNormalizer",
    "PerPromptStatTracker",
    "ProgressiveSchedule",
    "RLTrainer",
    "TrainerConfig",
    "Trajectories",
    "ddim_step_with_logprob",
    "gaussian_kl",
    "group_relative_advantages",
    "policy_loss",
    "ppo_clip_loss",
    "sample_branches",
    "sample_trajectories",
    "select_in_groups",
    "weighted_advantages",
]
