"""The one configuration of an RL fine-tuning run: :class:`TrainerConfig` (the paper's reference values as defaults).

B²-DiffuRL and the DDPO baseline are the same loop; they differ only in the switches the paper changes:

============================  ==========================  ===========================
switch                        B²-DiffuRL                  DDPO baseline
============================  ==========================  ===========================
``progressive``               interval grows 14 -> 20     whole chain every stage
``num_branches``              5 (branch-based sampling)   1 (independent samples)
``selection``                 best/worst per branch       every sample
``normalization``             per-prompt, 8-stage window  DDPO per-prompt tracker
============================  ==========================  ===========================

so the ablations of the paper (each strategy alone) are configs, not code. The RL update the strategies wrap is a
switch too, ``algorithm``: ``"ppo"`` (DDPO's PPO-clip, the paper's), ``"dpok"`` (+ KL to the base model) or ``"grpo"``
(group-relative advantages + KL); see :mod:`b2lib.algorithm.losses`. The sampler is not a switch here: it is the
pipeline's policy (:func:`b2lib.policies.base.as_policy`: DDIM for SD 1.x, the flow SDE for SD3-family models), and
``eta`` is its noise level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from b2lib.algorithm.losses import ALGORITHMS, needs_reference
from b2lib.algorithm.schedule import ProgressiveSchedule, SignalChosenBranchPoint
from b2lib.algorithm.tree import _check_levels, depth_schedule, trained_levels
from b2lib.training.models import LORA_TARGETS
from b2lib.training.recipes import recipe_switches
from b2lib.utils.precision import check_dtype

__all__ = ["TrainerConfig", "ADDED_FIELDS", "recipe_switches"]


@dataclass
class TrainerConfig:
    """Hyper-parameters; defaults are the paper's reference values (see ``shared/paper/method.md``)."""

    # the chain
    num_steps: int = 20
    # the policy's noise level: DDIM's eta (SD 1.x; 1.0 the paper's), or the flow SDE's a (SD3 family; Flow-GRPO uses
    # 0.7). 0 would make every step deterministic, with no log-prob to train.
    eta: float = 1.0
    guidance_scale: float = 5.0
    # a stage: prompts_per_stage prefixes (x num_branches images), sampled sample_batch_size prompts at a time
    num_stages: int = 100
    prompts_per_stage: int = 256
    sample_batch_size: int = 8
    # B² strategies
    progressive: bool = True
    # stochastic (and trained) steps after the split; the rest of the chain runs with eta = 0 (deterministic), so the
    # reward differences within a branch group come from the trained steps alone. None: the whole interval, the paper.
    window: int | None = None
    # coarse exploration: 0 = DDIM's noise in every latent dimension (the paper); g > 0 = the trained steps draw noise
    # only in the cell-constant directions of a g x g lattice per latent channel (C g^2 of them) and are deterministic
    # elsewhere. Why: a score-function gradient's per-sample SNR is at most 1 / (explored dims + 1).
    explore_grid: int = 0
    # the noise level of the steps before the trained interval (the shared prefix): None = eta (B² and DDPO as
    # published sample it stochastically); 0 = the deterministic chain (DDIM eta 0, the flow ODE), as TempFlow-GRPO
    # and MixGRPO run every step outside their SDE window
    prefix_eta: float | None = None
    split_start: int = 14
    split_end: int | None = None  # None: the whole chain (num_steps)
    # the branch point chosen by the signal (b2lib.algorithm.schedule.SignalChosenBranchPoint): None keeps the backward
    # schedule; a share in (0, 1] moves the branch point one step earlier whenever the informative share of the branch
    # groups (those whose branches do not all get one reward) over the last `branch_window` stages at the current depth
    # falls below it. Why: under a binary reward late siblings pass or fail together and their groups carry nothing.
    branch_target: float | None = None
    branch_window: int = 2
    num_branches: int = 5
    selection: bool = True
    pos_threshold: float = 0.5
    neg_threshold: float = -0.5
    normalization: Literal["history", "per_prompt"] = "history"
    history: int = 8
    stat_buffer: int = 16  # DDPO tracker
    stat_min_count: int = 16
    # the update
    adv_clip: float = 5.0
    pos_weight: float = 1.0
    neg_weight: float = 1.0
    clip_range: float = 0.1
    epochs_per_stage: int = 2
    train_batch_size: int = 2
    grad_accum: int = 64  # micro-batches (x all interval steps) per optimizer step
    # share of each sample's interval steps trained per epoch (DDPO's timestep_fraction): a random subset, drawn per
    # sample and epoch. Why: the update costs ~3x its sampling per step trained, so training a fraction lets a stage
    # sample more images (a less noisy gradient) at the same compute.
    timestep_fraction: float = 1.0
    # interval steps of a micro-batch per UNet forward in training: 1 = one step at a time (the reference; least
    # memory), 0 = all of them in one batched forward (fastest where memory allows). Same gradient either way.
    timestep_chunk: int = 1
    max_grad_norm: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    use_lora: bool = True
    lora_rank: int = 4
    # which UNet modules the adapter wraps: "attention" (q/k/v/out, DDPO's and the paper's choice) or "all" (every
    # linear and convolution of the blocks; see b2lib.training.models.LORA_TARGET_MODULES_ALL), or "mmdit" (an
    # SD3-family transformer's attention projections and feed-forwards, both streams: LORA_TARGET_MODULES_MMDIT)
    lora_targets: Literal["attention", "all", "mmdit"] = "attention"
    # sample with the adapter folded into the weights (b2lib.training.models.lora_fused): the same policy at the base
    # model's cost per forward (~30 % less sampling time on the embedded world); False samples through the unmerged
    # adapter, as runs made before this field did (their numbers differ from fused ones by float rounding, ~1e-6)
    fuse_lora: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # the compute dtype of every model forward (b2lib.utils.precision): "fp32", or "bf16" for the UNet (sampling, the
    # update's log-prob recomputation, the reference model), the VAE decode and the reward models under autocast, with
    # fp32 weights, DDIM step, log-probs and loss. Needs a CPU with AVX512-BF16/AMX or a GPU with bf16 (checked here).
    # Apart from mixed_precision, accelerate's knob for the update alone (the paper scale's fp16 weights on a GPU).
    dtype: Literal["fp32", "bf16"] = "fp32"
    # checkpoints kept in a run's checkpoint_dir (newest first): with 2, a checkpoint broken by a crash or written
    # after a divergence still leaves the one before it to resume from
    keep_checkpoints: int = 2
    seed: int = 0
    progress: bool = True
    # the RL update B² wraps: "ppo" (DDPO's PPO-clip, the paper's), "dpok" (PPO-clip + kl_coef * KL to the base model),
    # "grpo" (group-relative advantages, PPO-clip + kl_coef * KL). dpok/grpo need use_lora (the reference is the base
    # UNet with the adapter off) and cost one extra no-grad UNet forward per training forward.
    algorithm: Literal["ppo", "dpok", "grpo"] = "ppo"
    # plain sampling only (num_branches == 1): each drawn prompt is sampled this many times independently, so a
    # group-relative update (grpo) has groups without branching; 1 = DDPO's one sample per draw
    samples_per_prompt: int = 1
    # branch trees (b2lib.algorithm.tree): None = B²'s one split (or plain sampling); else ((branch_at, branches), ...),
    # one pair per level: every live node splits into `branches` children at chain index `branch_at` (0 = x_T). Each
    # trained transition gets a step-specific advantage (its node's value, the mean reward of its leaves, against its
    # siblings'), normalised per level and prompt; `selection` then keeps B²'s best/worst among siblings (width
    # pruning). The levels must store equally many steps (`window`, e.g. 1). num_branches, split_start/end and
    # progressive are not used: the tree fixes where the chain branches.
    tree: tuple[tuple[int, int], ...] | None = None
    # backward-progressive depth: the deepest level is trained first and earlier ones open as stages go (B²'s interval
    # schedule over levels: b2lib.algorithm.tree.depth_schedule); False trains every level from the first stage
    tree_progressive: bool = True
    # depth pruning: the level indices (0 = the first split) ever trained; None trains every level. The others are
    # sampled (their children need them) but never updated, and progressive depth opens the kept ones deepest first.
    # Only the kept levels must store equally many steps.
    tree_train_levels: tuple[int, ...] | None = None
    # Weight of the per-step KL (closed form, averaged over latent dims like the log-probs). 0.01 is DPOK's default
    # KL weight and mid-range of Flow-GRPO's beta (0.004-0.04, same mean-over-dims KL): a starting point, not tuned.
    kl_coef: float = 0.01

    @classmethod
    def b2(cls, recipe: str = "paper", **overrides) -> "TrainerConfig":
        """B²-DiffuRL: both strategies on (the defaults). ``recipe``: the estimator switches of
        :data:`b2lib.experiments.presets.RECIPES` (``"paper"``: none; ``"coarse"``: coarse exploration, one trained step
        at the branch point, group-relative advantages with a KL), laid under ``overrides``."""
        return cls(**{**recipe_switches(recipe, "b2"), **overrides})

    @classmethod
    def ddpo(cls, recipe: str = "paper", **overrides) -> "TrainerConfig":
        """The DDPO baseline: no branching, the whole chain every stage, DDPO's per-prompt stat tracking. ``recipe``
        as in :meth:`b2` (``"coarse"``: coarse exploration alone, DDPO having no branch group to compare within)."""
        base = dict(progressive=False, num_branches=1, selection=False, normalization="per_prompt")
        base.update(recipe_switches(recipe, "ddpo"))
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        if self.num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {self.num_branches}.")
        if self.tree is not None:
            self.tree = tuple((int(at), int(b)) for at, b in self.tree)
            if self.tree_train_levels is not None:
                self.tree_train_levels = tuple(sorted({int(k) for k in self.tree_train_levels}))
            self._check_tree()
        elif self.tree_train_levels is not None:
            raise ValueError("tree_train_levels prunes a tree's levels: set tree=[[branch_at, branches], ...] too.")
        if self.selection and self.num_branches < 2 and self.tree is None:
            raise ValueError("selection compares samples within a branch group: it needs num_branches >= 2.")
        if self.normalization not in ("history", "per_prompt"):
            raise ValueError(f"normalization must be 'history' or 'per_prompt', got {self.normalization!r}.")
        if self.prompts_per_stage < 1 or self.sample_batch_size < 1 or self.train_batch_size < 1:
            raise ValueError("prompts_per_stage, sample_batch_size and train_batch_size must be >= 1.")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}.")
        if needs_reference(self.algorithm) and not self.use_lora:
            raise ValueError(
                f"algorithm={self.algorithm!r} regularises towards the base model, which is the UNet with its LoRA "
                "adapter disabled: set use_lora=True (a full fine-tune keeps no reference copy)."
            )
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"lora_targets must be one of {sorted(LORA_TARGETS)}, got {self.lora_targets!r}.")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 or None (every step after the split stochastic), got {self.window}.")
        if self.prefix_eta is not None and self.prefix_eta < 0:
            raise ValueError(f"prefix_eta must be >= 0 or None (the prefix at eta), got {self.prefix_eta}.")
        if self.explore_grid < 0:
            raise ValueError(f"explore_grid must be >= 0 (0 = full-dimensional noise), got {self.explore_grid}.")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}.")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}.")
        if self.samples_per_prompt < 1 or (self.samples_per_prompt > 1 and self.num_branches > 1):
            raise ValueError(
                f"samples_per_prompt={self.samples_per_prompt} with num_branches={self.num_branches}: repeated "
                "independent samples are for plain sampling (num_branches=1); branching already groups samples."
            )
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}.")
        self._check_dtype()
        if self.timestep_chunk < 0:
            raise ValueError(
                f"timestep_chunk must be >= 0 (0 = all interval steps per forward), got {self.timestep_chunk}."
            )
        self.schedule  # validates the interval against the chain
        self._check_branch_target()

    @property
    def signal_branching(self) -> SignalChosenBranchPoint | None:
        """The signal-chosen branch point over :attr:`schedule` (None: the schedule alone)."""
        if self.branch_target is None:
            return None
        return SignalChosenBranchPoint(self.schedule, self.branch_target, self.branch_window)

    def _check_branch_target(self) -> None:
        if self.branch_target is None:
            return
        if self.num_branches < 2 or self.tree is not None or not self.progressive:
            raise ValueError(
                f"branch_target={self.branch_target} moves B²'s branch point: it needs num_branches >= 2, "
                f"progressive=True and no tree (got num_branches={self.num_branches}, progressive={self.progressive}, "
                f"tree={self.tree}); set branch_target=None otherwise."
            )
        self.signal_branching  # validates the target and the window

    @property
    def schedule(self) -> ProgressiveSchedule:
        end = self.split_end if self.split_end is not None else self.num_steps
        if not self.progressive:
            return ProgressiveSchedule(self.num_stages, end, end, self.num_steps)
        return ProgressiveSchedule(self.num_stages, self.split_start, end, self.num_steps)

    def _check_tree(self) -> None:

        levels = _check_levels(self.tree, self.num_steps)
        if self.tree_train_levels is not None and (
            not self.tree_train_levels or not all(0 <= k < len(levels) for k in self.tree_train_levels)
        ):
            raise ValueError(
                f"tree_train_levels={list(self.tree_train_levels)} must name at least one of the tree's level indices "
                f"0..{len(levels) - 1} (0 = the first split), or be None to train every level."
            )
        ends = [lv.branch_at for lv in levels[1:]] + [self.num_steps]
        stored = [
            e - lv.branch_at if self.window is None else min(self.window, e - lv.branch_at)
            for lv, e in zip(levels, ends)
        ]
        kept = self.tree_levels_kept
        if len({stored[k] for k in kept}) > 1:
            raise ValueError(
                f"tree={self.tree} with window={self.window} stores {[stored[k] for k in kept]} steps per node at its "
                "trained levels; they are stacked into one batch, so they must store the same number: set window to "
                f"at most {min(ends[k] - levels[k].branch_at for k in kept)} (e.g. window=1)."
            )
        if self.samples_per_prompt > 1:
            raise ValueError("samples_per_prompt is for plain sampling; a tree already groups a prompt's samples.")

    def _check_dtype(self) -> None:
        if self.dtype == "bf16" and self.mixed_precision == "fp16":
            raise ValueError(
                "dtype='bf16' with mixed_precision='fp16': fp16 weights and autocast already run in half precision; "
                "use one of them (dtype='bf16' with mixed_precision='no', or dtype='fp32' with 'fp16')."
            )
        check_dtype(self.dtype)

    @property
    def tree_leaves(self) -> int:
        """Leaves per prompt of the tree (1 without one)."""
        return math.prod(b for _, b in self.tree) if self.tree is not None else 1

    @property
    def depth_schedule(self) -> ProgressiveSchedule:
        """Per stage, how many of the tree's levels are trained, the deepest first (``tree_progressive``), or all."""

        if self.tree is None:
            raise ValueError("depth_schedule needs a tree (TrainerConfig.tree).")
        depth = len(self.tree_levels_kept)
        return depth_schedule(self.num_stages, depth, start=1 if self.tree_progressive else depth)

    @property
    def tree_levels_kept(self) -> tuple[int, ...]:
        """The tree's level indices that may be trained: ``tree_train_levels`` (depth pruning), or every level."""
        if self.tree is None:
            return ()
        return self.tree_train_levels if self.tree_train_levels is not None else tuple(range(len(self.tree)))

    def tree_levels_at(self, stage: int) -> list[int]:
        """The levels trained at ``stage``: the deepest ``depth_schedule(stage)`` of the kept levels."""

        kept = self.tree_levels_kept
        return [kept[i] for i in trained_levels(self.depth_schedule, stage)]

    @property
    def images_per_stage(self) -> int:
        return self.prompts_per_stage * (self.tree_leaves if self.tree is not None else self.num_branches)

    def to_dict(self) -> dict:
        """The fields as JSON values. Fields added after run folders were first fingerprinted (:data:`ADDED_FIELDS`)
        are left out while they hold their default, so those folders keep their fingerprint (:mod:`b2lib.utils.rundir`)
        and resume; ``TrainerConfig(**d)`` restores the default."""
        out = {k: _json_value(v) for k, v in vars(self).items()}
        for name in ADDED_FIELDS:
            if out.get(name) == getattr(TrainerConfig, name):
                out.pop(name)
        return out


#: TrainerConfig fields recorded in a run's fingerprint only when set (see :meth:`TrainerConfig.to_dict`)
ADDED_FIELDS = (
    "explore_grid",
    "tree",
    "tree_progressive",
    "tree_train_levels",
    "fuse_lora",
    "dtype",
    "prefix_eta",
    "branch_target",
    "branch_window",
)


def _json_value(value):
    return [_json_value(v) for v in value] if isinstance(value, (tuple, list)) else value
