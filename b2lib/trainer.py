"""The RL fine-tuning loop: sample -> score -> advantages/selection -> PPO-clip update, one *stage* at a time.

B²-DiffuRL and the DDPO baseline are the same :class:`RLTrainer`; they differ only in the switches the paper changes:

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
(group-relative advantages + KL); see :mod:`b2lib.losses` and :meth:`RLTrainer.advantages`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from accelerate import Accelerator
from diffusers import StableDiffusionPipeline
from tqdm.auto import tqdm

from .advantages import (
    HistoryNormalizer,
    PerPromptStatTracker,
    group_ids_of,
    group_relative_advantages,
    select_in_groups,
    weighted_advantages,
)
from .losses import ALGORITHMS, gaussian_kl, needs_reference, policy_loss
from .models import LORA_TARGETS, adapters_disabled, add_lora, ensure_ddim, lora_fused
from .precision import check_dtype, compute_dtype
from .rewards import RewardFn, check_reward_output
from .sampling import Trajectories, sample_branches, sample_trajectories, transition_policy
from .schedule import ProgressiveSchedule

__all__ = [
    "TrainerConfig",
    "RLTrainer",
    "B2Trainer",
    "DDPOTrainer",
    "flat_groups",
    "micro_batches",
    "unet_rows",
    "nominal_work",
    "equal_work_stages",
    "TRAIN_ROW_WORK",
    "update_size",
]


@dataclass
class TrainerConfig:
    """Hyper-parameters; defaults are the paper's reference values (see ``shared/paper/method.md``)."""

    # the chain
    num_steps: int = 20
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
    split_start: int = 14
    split_end: int | None = None  # None: the whole chain (num_steps)
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
    # linear and convolution of the blocks; see b2lib.models.LORA_TARGET_MODULES_ALL)
    lora_targets: Literal["attention", "all"] = "attention"
    # sample with the adapter folded into the weights (b2lib.models.lora_fused): the same policy at the base model's
    # cost per forward (~30 % less sampling time on the embedded world); False samples through the unmerged adapter,
    # as runs made before this field did (their numbers differ from fused ones by float rounding, ~1e-6)
    fuse_lora: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # the compute dtype of every model forward (b2lib.precision): "fp32", or "bf16" for the UNet (sampling, the
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
    # branch trees (b2lib.tree): None = B²'s one split (or plain sampling); else ((branch_at, branches), ...), one
    # pair per level: every live node splits into `branches` children at chain index `branch_at` (0 = x_T). Each trained
    # transition gets a step-specific advantage (its node's value, the mean reward of its leaves, against its
    # siblings'), normalised per level and prompt; `selection` then keeps B²'s best/worst among siblings (width
    # pruning). The levels must store equally many steps (`window`, e.g. 1). num_branches, split_start/end and
    # progressive are not used: the tree fixes where the chain branches.
    tree: tuple[tuple[int, int], ...] | None = None
    # backward-progressive depth: the deepest level is trained first and earlier ones open as stages go (B²'s interval
    # schedule over levels: b2lib.tree.depth_schedule); False trains every level from the first stage
    tree_progressive: bool = True
    # depth pruning: the level indices (0 = the first split) ever trained; None trains every level. The others are
    # sampled (their children need them) but never updated, and progressive depth opens the kept ones deepest first.
    # Only the kept levels must store equally many steps.
    tree_train_levels: tuple[int, ...] | None = None
    # Weight of the per-step KL (closed form, averaged over latent dims like the log-probs). 0.01 is DPOK's default
    # KL weight and mid-range of Flow-GRPO's beta (0.004-0.04, same mean-over-dims KL): a starting point, not tuned.
    kl_coef: float = 0.01

    @classmethod
    def b2(cls, **overrides) -> "TrainerConfig":
        """B²-DiffuRL: both strategies on (the defaults)."""
        return cls(**overrides)

    @classmethod
    def ddpo(cls, **overrides) -> "TrainerConfig":
        """The DDPO baseline: no branching, the whole chain every stage, DDPO's per-prompt stat tracking."""
        base = dict(progressive=False, num_branches=1, selection=False, normalization="per_prompt")
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

    @property
    def schedule(self) -> ProgressiveSchedule:
        end = self.split_end if self.split_end is not None else self.num_steps
        if not self.progressive:
            return ProgressiveSchedule(self.num_stages, end, end, self.num_steps)
        return ProgressiveSchedule(self.num_stages, self.split_start, end, self.num_steps)

    def _check_tree(self) -> None:
        from .tree import _check_levels

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
        from .tree import depth_schedule

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
        from .tree import trained_levels

        kept = self.tree_levels_kept
        return [kept[i] for i in trained_levels(self.depth_schedule, stage)]

    @property
    def images_per_stage(self) -> int:
        return self.prompts_per_stage * (self.tree_leaves if self.tree is not None else self.num_branches)

    def to_dict(self) -> dict:
        """The fields as JSON values. Fields added after run folders were first fingerprinted (:data:`ADDED_FIELDS`)
        are left out while they hold their default, so those folders keep their fingerprint (:mod:`b2lib.rundir`) and
        resume; ``TrainerConfig(**d)`` restores the default."""
        out = {k: _json_value(v) for k, v in vars(self).items()}
        for name in ADDED_FIELDS:
            if out.get(name) == getattr(TrainerConfig, name):
                out.pop(name)
        return out


#: TrainerConfig fields recorded in a run's fingerprint only when set (see :meth:`TrainerConfig.to_dict`)
ADDED_FIELDS = ("explore_grid", "tree", "tree_progressive", "tree_train_levels", "fuse_lora", "dtype")


def _json_value(value):
    return [_json_value(v) for v in value] if isinstance(value, (tuple, list)) else value


class RLTrainer:
    """Fine-tunes ``pipe.unet`` (LoRA by default) against ``reward_fn`` on ``prompts`` (sampled uniformly with
    replacement). One call of :meth:`train_stage` = sample, score, select, ``epochs_per_stage`` epochs of PPO-clip.

    Determinism: stage ``k``'s prompts, noise and shuffles come from generators seeded by ``(seed, k)``, so a run
    is reproducible on CPU and a resumed run continues with the same randomness.
    """

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        reward_fn: RewardFn,
        prompts: Sequence[str],
        config: TrainerConfig | None = None,
        accelerator: Accelerator | None = None,
        metric_fn=None,
    ) -> None:
        """``metric_fn(images, prompts) -> dict[str, float]``, optional: an independent metric computed on each
        stage's own samples (e.g. the world's judge) and logged next to the reward, to catch reward hacking."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of training prompts.")
        self.config = config if config is not None else self._default_config()
        self.pipe = ensure_ddim(pipe)
        self.reward_fn = reward_fn
        self.metric_fn = metric_fn
        self.prompts = list(prompts)
        self.accelerator = accelerator or Accelerator(mixed_precision=self.config.mixed_precision)
        check_dtype(self.config.dtype, self.accelerator.device)  # the device it got, not the config's guess
        self.schedule = self.config.schedule
        cfg = self.config

        pipe.set_progress_bar_config(disable=True)
        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        if cfg.use_lora:
            params = add_lora(
                pipe.unet, rank=cfg.lora_rank, target_modules=LORA_TARGETS[cfg.lora_targets], seed=cfg.seed
            )
            for p in params:  # fp32 master weights for the adapter when the base model runs in fp16/bf16 (as DDPO)
                p.data = p.data.float()
        else:
            pipe.unet.requires_grad_(True)
            params = list(pipe.unet.parameters())
        self.trainable = params
        optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        # The prepared model (DDP-wrapped under several processes) is used for training forwards; sampling uses the
        # plain module through the pipeline.
        self.model, self.optimizer = self.accelerator.prepare(pipe.unet, optimizer)
        # Sampling runs in eval mode and only update() switches to train mode. A UNet built from config starts in train
        # mode; without dropout the outputs are the same, but the speed benchmark tells the two phases apart by it.
        pipe.unet.eval()
        pipe.to(self.accelerator.device)
        pipe.scheduler.set_timesteps(cfg.num_steps, device=self.accelerator.device)
        if cfg.normalization == "history":
            self.normalizer = HistoryNormalizer(cfg.history)
        else:
            self.normalizer = PerPromptStatTracker(cfg.stat_buffer, cfg.stat_min_count)
        self.stage = 0
        self.images_seen = 0
        self.unet_rows_seen = 0
        self.log: list[dict] = []

    @classmethod
    def _default_config(cls) -> TrainerConfig:
        return TrainerConfig.b2()

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        """The trained parameters by name (LoRA matrices, or the whole UNet): what a checkpoint stores."""
        return {n: p for n, p in self.pipe.unet.named_parameters() if p.requires_grad}

    # --------------------------------------------------------------------------------------------------- randomness
    def _generator(self, stage: int, stream: int) -> torch.Generator:
        seed = (self.config.seed * 1_000_003 + stage * 97 + stream) * max(1, self.accelerator.num_processes)
        return torch.Generator().manual_seed(seed + self.accelerator.process_index)

    # ------------------------------------------------------------------------------------------------------ sample
    def sample_stage(
        self, stage: int, trained_steps: int | None = None, draw: int = 0
    ) -> tuple[Trajectories, torch.Tensor]:
        """Sample this stage's trajectories (branched or plain) and their rewards.

        ``trained_steps`` (default: the schedule's interval at ``stage``) and ``draw`` are for measurements outside
        training (:mod:`b2lib.gradient_snr`): draw ``d > 0`` takes prompts and noise from streams of its own, so
        repeated draws at one stage are independent; draw 0 is what training samples.
        """
        cfg = self.config
        trained_steps = self.schedule(stage) if trained_steps is None else trained_steps
        prompt_gen, noise_gen = self._generator(stage, 100 * draw), self._generator(stage, 100 * draw + 1)
        n_prompts = math.ceil(cfg.prompts_per_stage / self.accelerator.num_processes)
        if cfg.samples_per_prompt > 1:
            draws = math.ceil(n_prompts / cfg.samples_per_prompt)
            picks = torch.randint(len(self.prompts), (draws,), generator=prompt_gen)
            picks = picks.repeat_interleave(cfg.samples_per_prompt)[:n_prompts].tolist()
        else:
            picks = torch.randint(len(self.prompts), (n_prompts,), generator=prompt_gen).tolist()
        batches, rewards = [], []
        bar = tqdm(
            range(0, n_prompts, cfg.sample_batch_size),
            desc=f"stage {stage} sample",
            leave=False,
            disable=not cfg.progress or not self.accelerator.is_local_main_process,
        )
        with torch.no_grad(), self._fused(), self._compute():
            for start in bar:
                prompts = [self.prompts[i] for i in picks[start : start + cfg.sample_batch_size]]
                kwargs = self._chain_kwargs(noise_gen)
                if cfg.num_branches >= 2:
                    traj = sample_branches(self.pipe, prompts, cfg.num_branches, trained_steps, **kwargs)
                else:
                    traj = sample_trajectories(self.pipe, prompts, trained_steps=trained_steps, **kwargs)
                scores = self._score(traj.images, traj.prompts, stage)
                batches.append(traj)
                rewards.append(scores)
        return Trajectories.cat(batches), torch.cat(rewards)

    def _compute(self):
        """Model forwards in ``TrainerConfig.dtype`` (:func:`b2lib.precision.compute_dtype`): sampling, the rewards
        computed while sampling, and the update's log-prob recomputation."""
        return compute_dtype(self.config.dtype)

    def _fused(self):
        """Sampling runs with the adapter folded into the weights (``TrainerConfig.fuse_lora``); training does not."""
        return lora_fused(self.pipe.unet, self.config.fuse_lora and self.config.use_lora)

    def _chain_kwargs(self, generator: torch.Generator) -> dict:
        """The sampler settings every stage uses, plain, branched or tree."""
        cfg = self.config
        return dict(
            num_steps=cfg.num_steps,
            guidance_scale=cfg.guidance_scale,
            eta=cfg.eta,
            generator=generator,
            window=cfg.window,
            explore_grid=cfg.explore_grid,
        )

    def _score(self, images: torch.Tensor, prompts: list[str], stage: int) -> torch.Tensor:
        """``reward_fn`` on a batch, checked: one finite score per image, or an error naming the checkpoint to go on."""
        scores = check_reward_output(self.reward_fn(images, prompts), len(images), "reward_fn")
        if not torch.isfinite(scores).all():
            raise FloatingPointError(
                f"reward_fn returned NaN/inf at stage {stage}; the last good state is the previous stage's checkpoint."
            )
        return scores

    def sample_tree_stage(self, stage: int) -> dict:
        """This stage's trees (one per drawn prompt, ``sample_batch_size`` prompts per batched call) and what the update
        needs: ``leaves`` (the images, as Trajectories) and their ``rewards``, the trained levels' ``transitions`` with
        their step-specific advantages ``z`` and the selection mask ``keep``, the trained level indices, and the
        sampling's UNet rows. Prompts and noise come from the same streams as :meth:`sample_stage`."""
        from .tree import sample_tree, tree_training_batch

        cfg = self.config
        levels = cfg.tree_levels_at(stage)
        prompt_gen, noise_gen = self._generator(stage, 0), self._generator(stage, 1)
        n_prompts = math.ceil(cfg.prompts_per_stage / self.accelerator.num_processes)
        picks = torch.randint(len(self.prompts), (n_prompts,), generator=prompt_gen).tolist()
        leaves, rewards, batches, zs, keeps, rows = [], [], [], [], [], 0
        with torch.no_grad(), self._fused(), self._compute():
            for start in tqdm(
                range(0, n_prompts, cfg.sample_batch_size),
                desc=f"stage {stage} sample tree",
                leave=False,
                disable=not cfg.progress or not self.accelerator.is_local_main_process,
            ):
                prompts = [self.prompts[i] for i in picks[start : start + cfg.sample_batch_size]]
                tree = sample_tree(self.pipe, prompts, cfg.tree, **self._chain_kwargs(noise_gen))
                scores = self._score(tree.leaves.images, tree.leaves.prompts, stage)
                batch, z, keep = tree_training_batch(
                    tree, scores, levels, cfg.selection, cfg.pos_threshold, cfg.neg_threshold
                )
                leaves.append(tree.leaves)
                rewards.append(scores)
                batches.append(batch)
                zs.append(z)
                keeps.append(keep)
                rows += tree.unet_rows
        return {
            "leaves": Trajectories.cat(leaves),
            "rewards": torch.cat(rewards),
            "transitions": Trajectories.cat(batches),
            "z": torch.cat(zs),
            "keep": torch.cat(keeps),
            "levels": levels,
            "unet_rows_sample": rows * self.accelerator.num_processes,
        }

    # -------------------------------------------------------------------------------------------------- advantages
    def advantages(self, traj: Trajectories, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, clipped, weighted advantages and the mask of samples to train on.

        ``ppo`` and ``dpok``: z is the configured per-prompt normaliser's (``normalization``); DPOK's learned value
        baseline is replaced by it so that the algorithms differ only in their loss. ``grpo``: z is the reward
        standardised within its group (:func:`group_relative_advantages`), a branch group under B² (samples sharing a
        prefix) or the samples of one prompt in this stage under plain sampling; it *replaces* the normaliser (which
        then keeps no state). Under every algorithm, B²'s selection (``selection=True``) then filters on that z, and
        the clip/weights apply. Note for plain-sampling GRPO: a prompt drawn once in a stage is a group of one (z = 0),
        so GRPO needs prompts_per_stage well above the number of prompts.

        Under several processes the per-prompt statistics are computed on every process's rewards (gathered), so
        all processes normalise alike and keep identical normaliser states; selection stays local, since a branch
        group never spans processes.
        """
        cfg = self.config
        prompts, all_rewards, start = self._gather_scores(traj.prompts, rewards)
        if cfg.algorithm == "grpo" and cfg.num_branches >= 2:
            z = group_relative_advantages(rewards, traj.group_ids)
        elif cfg.algorithm == "grpo":  # plain sampling: a prompt's samples may sit on several processes
            z = group_relative_advantages(all_rewards, group_ids_of(prompts))[start : start + len(traj)]
        else:
            z = self.normalizer(prompts, all_rewards)[start : start + len(traj)]
        if cfg.selection:
            keep = select_in_groups(z, traj.group_ids, cfg.pos_threshold, cfg.neg_threshold)
        else:
            keep = torch.ones_like(z, dtype=torch.bool)
        return weighted_advantages(z, cfg.adv_clip, cfg.pos_weight, cfg.neg_weight), keep

    def _gather_scores(self, prompts: list[str], rewards: torch.Tensor) -> tuple[list[str], torch.Tensor, int]:
        """Every process's prompts and rewards, in process order, and where this process's rows start."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return list(prompts), rewards, 0
        from accelerate.utils import gather_object

        all_prompts = gather_object(list(prompts))
        all_rewards = acc.gather(rewards.to(acc.device)).cpu()
        return all_prompts, all_rewards, acc.process_index * len(prompts)

    def _pad_to_global_max(self, kept: Trajectories, adv: torch.Tensor, traj: Trajectories):
        """Pad this process's kept samples to the largest count over processes with zero-advantage rows.

        Why: DDP needs every process to run the same number of backward passes; selection keeps different numbers
        of samples per process. A zero-advantage row has zero loss and zero gradient, so padding changes nothing
        but the step count.
        """
        acc = self.accelerator
        if acc.num_processes == 1:
            return kept, adv
        n_max = int(acc.gather(torch.tensor([len(kept)], device=acc.device)).max())
        missing = n_max - len(kept)
        if missing == 0:
            return kept, adv
        source = kept if len(kept) else traj
        filler = source.select(torch.arange(missing) % len(source))
        return Trajectories.cat([kept, filler]), torch.cat([adv, torch.zeros(missing)])

    # ------------------------------------------------------------------------------------------------------ update
    def policy_terms(
        self, traj: Trajectories, rows: torch.Tensor, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``log p_theta`` of the stored transitions and, when the algorithm needs it (dpok, grpo), the per-transition
        ``KL(p_theta || p_ref)`` to the base model (the UNet with its LoRA adapter off); ``None`` otherwise.

        The reference forward runs first, under no_grad, on the plain module, so the adapter is back on (and DDP's
        wrapper untouched) before the differentiable forward. Both UNet forwards run in ``TrainerConfig.dtype``; the
        log-probs and the KL are fp32 (:mod:`b2lib.precision`).
        """
        with self._compute():
            return self._policy_terms(traj, rows, cols)

    def _policy_terms(
        self, traj: Trajectories, rows: torch.Tensor, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        args = (
            self.pipe.scheduler,
            traj,
            rows,
            cols,
            cfg.guidance_scale,
            cfg.eta,
            self.accelerator.device,
            cfg.explore_grid,
        )
        if not needs_reference(cfg.algorithm):
            return transition_policy(self.model, *args)[0], None
        with torch.no_grad(), adapters_disabled(self.pipe.unet):
            ref_mean = transition_policy(self.pipe.unet, *args)[1]
        log_prob, mean, std = transition_policy(self.model, *args)
        return log_prob, gaussian_kl(mean, ref_mean, std)

    def update(self, traj: Trajectories, adv: torch.Tensor, stage: int) -> dict[str, float]:
        """``epochs_per_stage`` epochs of the algorithm's loss (PPO-clip, + KL for dpok/grpo) over every (sample,
        interval step) of ``traj``: per epoch, the plan of :func:`micro_batches`; each micro-batch's chunks are
        back-propagated (:meth:`_backward`), each optimizer step's micro-batches accumulated, then one clipped step.
        With a KL term every training forward is paired with a no-grad reference forward (adapter off): twice the UNet
        forwards of ppo (the extra ones without backward); ``kl`` is then logged too."""
        cfg = self.config
        n, k = len(traj), traj.num_steps
        per_term = ("loss", "approx_kl", "clipfrac") + (("kl",) if needs_reference(cfg.algorithm) else ())
        if n == 0 or k == 0:
            return {key: float("nan") for key in per_term + ("grad_norm",)} | {
                "optimizer_steps": 0,
                "update_norm": 0.0,
                "rel_update": 0.0,
                "backward_s": 0.0,
            }
        gen = self._generator(stage, 2)
        k_used = trained_steps_per_sample(k, cfg.timestep_fraction)
        sums, terms, grad_norms, backward_s = dict.fromkeys(per_term, 0.0), 0, [], 0.0
        before = [p.detach().clone() for p in self.trainable]
        self.model.train()
        for epoch in range(cfg.epochs_per_stage):
            plan = micro_batches(n, k, k_used, cfg.train_batch_size, cfg.grad_accum, cfg.timestep_chunk, gen)
            bar = tqdm(
                total=sum(map(len, plan)) * k_used,
                desc=f"stage {stage} train {epoch + 1}/{cfg.epochs_per_stage}",
                leave=False,
                disable=not cfg.progress or not self.accelerator.is_local_main_process,
            )
            for step in plan:
                for m, micro in enumerate(step):
                    for c, (rows, cols) in enumerate(micro):
                        # The step's loss is the mean over its micro-batches and trained steps of each micro-batch's
                        # mean loss (DDPO's accumulation): a chunk of w steps weighs w shares, so how steps are packed
                        # into forwards changes speed, not the gradient.
                        w = cols.shape[1]
                        last = m == len(step) - 1 and c == len(micro) - 1
                        stats = self._backward(traj, adv, rows, cols, w / (len(step) * k_used), last, stage)
                        for key in per_term:
                            sums[key] += stats[key] * w
                        terms += w
                        backward_s += stats["backward_s"]
                        bar.update(w)
                grad_norms.append(self._optimizer_step())
            bar.close()
        self.model.eval()
        out = {key: sums[key] / terms for key in per_term}
        out["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        out["optimizer_steps"] = len(grad_norms)
        out["backward_s"] = backward_s
        out.update(update_size(before, self.trainable))
        return out

    def _backward(
        self,
        traj: Trajectories,
        adv: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        weight: float,
        sync: bool,
        stage: int,
    ) -> dict[str, float]:
        """Back-propagate ``weight`` x the loss of the transitions ``(rows[i], cols[i, j])``; gradients are synchronised
        across processes only when ``sync`` (the last chunk before an optimizer step). Returns the chunk's loss terms
        and ``backward_s``, the wall time of its backward (not synchronised on GPU: exact on CPU, where the benchmark
        reads it)."""
        cfg = self.config
        flat_rows, flat_cols = rows.repeat_interleave(cols.shape[1]), cols.flatten()
        no_sync = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model)
        with no_sync, self.accelerator.autocast():
            log_prob, kl = self.policy_terms(traj, flat_rows, flat_cols)
            old = traj.log_probs[flat_rows, flat_cols].to(log_prob.device)
            loss, stats = policy_loss(
                cfg.algorithm, log_prob, old, adv[flat_rows].to(log_prob.device), cfg.clip_range, kl, cfg.kl_coef
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Non-finite loss at stage {stage}; the last good state is the previous stage's checkpoint. "
                    "Lower the learning rate or check the reward."
                )
            t0 = time.perf_counter()
            self.accelerator.backward(loss * weight)
            backward_s = time.perf_counter() - t0
        return {"loss": loss.item(), **{key: value.item() for key, value in stats.items()}, "backward_s": backward_s}

    def _optimizer_step(self) -> float:
        """Clip the accumulated gradient, step, clear; returns the gradient's norm before clipping."""
        grad_norm = self.accelerator.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    # ------------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """What a resumed run needs: trained weights (by name), optimizer, normaliser, stage counters and the log. No
        RNG state: every stage's randomness is derived from ``(seed, stage)``. :mod:`b2lib.checkpoint` writes it without
        pickle (tensors to safetensors, the rest to JSON)."""
        # copies, not views: torch's Optimizer.load_state_dict keeps the tensors it is given, so a state loaded into
        # another trainer would otherwise share (and be changed by) this trainer's moment estimates
        return {
            "trainable": {name: p.detach().clone() for name, p in self.named_trainable().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "normalizer": copy.deepcopy(self.normalizer.state_dict()),
            "stage": self.stage,
            "images_seen": self.images_seen,
            "unet_rows_seen": self.unet_rows_seen,
            "log": copy.deepcopy(self.log),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into this trainer (built with the same trained parameters).

        The optimizer's hyper-parameters (lr, betas, eps, weight decay) stay this trainer's *current* configuration's:
        resuming with a lower lr after a divergence trains at that lr (the moment estimates are kept)."""
        named, weights = self.named_trainable(), state["trainable"]
        if set(weights) != set(named) or any(weights[k].shape != p.shape for k, p in named.items()):
            raise ValueError(
                "The state holds different trainable parameters than this trainer (was it written with "
                "another LoRA rank / use_lora setting?)."
            )
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(weights[name].to(param.device, param.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        cfg = self.config
        for group in self.optimizer.param_groups:
            group.update(lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        self.normalizer.load_state_dict(state["normalizer"])
        self.stage = state["stage"]
        self.images_seen = state["images_seen"]
        self.unet_rows_seen = state.get("unet_rows_seen", 0)
        self.log = list(state["log"])

    # ------------------------------------------------------------------------------------------------------- stage
    def train_stage(self) -> dict:
        """One stage: sample, score, advantages/selection, update. Returns (and logs) its metrics."""
        stage = self.stage
        if stage >= self.config.num_stages:
            raise ValueError(f"All {self.config.num_stages} stages are done; raise num_stages to train further.")
        cfg = self.config
        t0 = time.perf_counter()
        if cfg.tree is None:
            traj, rewards = self.sample_stage(stage)
            t1 = time.perf_counter()
            adv, keep = self.advantages(traj, rewards)
            batch, split_step, extra = traj, self.schedule(stage), {}
        else:  # a tree: the images are its leaves, the trained rows the nodes of its open levels
            tree = self.sample_tree_stage(stage)
            t1 = time.perf_counter()
            traj, rewards, batch, keep = tree["leaves"], tree["rewards"], tree["transitions"], tree["keep"]
            adv = weighted_advantages(tree["z"], cfg.adv_clip, cfg.pos_weight, cfg.neg_weight)
            split_step = cfg.num_steps - cfg.tree[tree["levels"][0]][0]  # steps after the shallowest trained split
            extra = {"tree_levels": len(tree["levels"])}
        kept, kept_adv = self._pad_to_global_max(batch.select(keep), adv[keep], batch)
        stats = self.update(kept, kept_adv, stage)
        t2 = time.perf_counter()
        self.images_seen += len(traj) * self.accelerator.num_processes
        cost = unet_rows(
            cfg,
            len(traj),
            len(kept),
            batch.num_steps,
            self.accelerator.num_processes,
            interval=split_step,
        )
        if cfg.tree is not None:  # the tree counts its own sampling rows (b2lib.tree.tree_unet_rows)
            cost["unet_rows_sample"] = tree["unet_rows_sample"]
        self.unet_rows_seen += cost["unet_rows_sample"] + cost["unet_rows_train"]
        metrics = {
            "stage": stage,
            "split_step": split_step,
            **extra,
            "images": len(traj),
            "images_seen": self.images_seen,
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std(unbiased=False).item(),
            "kept": int(keep.sum()),
            "kept_pos": int((keep & (adv > 0)).sum()),
            "kept_neg": int((keep & (adv <= 0)).sum()),
            "flat_groups": flat_groups(rewards, traj.group_ids) if cfg.num_branches >= 2 or cfg.tree else 0,
            **cost,
            "unet_rows_seen": self.unet_rows_seen,
            **stats,
            "sample_s": t1 - t0,
            "train_s": t2 - t1,
        }
        if self.metric_fn is not None:
            metrics.update(self.metric_fn(traj.images, traj.prompts))
        self.log.append(metrics)
        self.stage += 1
        return metrics

    def train(
        self,
        num_stages: int | None = None,
        checkpoint_dir: str | None = None,
        resume_from: str | None = None,
        on_stage: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """Run stages until ``num_stages`` more are done (default: to the end of the schedule).

        ``checkpoint_dir``: after every stage, the state is written to ``checkpoint_dir/stage_XXXX`` (safetensors +
        JSON; older ones are removed once the new one is complete). ``resume_from``: a checkpoint folder, or a run's
        ``checkpoint_dir`` (its latest stage), to continue a killed run exactly where it stopped. ``on_stage``: called
        with each stage's metrics once its checkpoint is written, so a caller can report progress where tqdm bars
        cannot be seen (:class:`b2lib.experiment.RunProgress`: a notebook run under papermill, a log file).
        """
        from .checkpoint import checkpoint_stages, latest_checkpoint, load_checkpoint, save_checkpoint

        if resume_from is not None:
            path = Path(resume_from)
            if path.is_dir() and checkpoint_stages(path):
                path = latest_checkpoint(path, subdir="")
            load_checkpoint(self, path)
        end = self.config.num_stages if num_stages is None else min(self.stage + num_stages, self.config.num_stages)
        bar = tqdm(
            range(self.stage, end),
            desc="stages",
            disable=not self.config.progress or not self.accelerator.is_local_main_process,
        )
        for _ in bar:
            try:
                m = self.train_stage()
            except FloatingPointError as err:
                raise FloatingPointError(f"{err} {self._recovery_hint(checkpoint_dir)}") from None
            bar.set_postfix(reward=f"{m['reward_mean']:.4f}", split=m["split_step"], kept=m["kept"])
            if checkpoint_dir is not None and self.accelerator.is_main_process:
                save_checkpoint(self, Path(checkpoint_dir) / f"stage_{self.stage:04d}")
                for old in checkpoint_stages(checkpoint_dir)[: -max(1, self.config.keep_checkpoints)]:
                    shutil.rmtree(old, ignore_errors=True)
            if on_stage is not None:
                on_stage(m)
        return self.log

    def _recovery_hint(self, checkpoint_dir: str | None) -> str:
        """Where the last finite state is and how to go on from it with a lower learning rate."""
        from .checkpoint import checkpoint_stages, verify_checkpoint

        good = [c for c in checkpoint_stages(checkpoint_dir) if verify_checkpoint(c) is None] if checkpoint_dir else []
        if not good:
            return "No finite checkpoint was written before it; start over with a lower lr (e.g. lr / 10)."
        return (
            f"The last finite state is {good[-1]} (stages done: {int(good[-1].name.split('_')[1])}). To go on from it "
            f"with a lower lr, copy that folder into a new run folder's <method>_seed<k>/checkpoints/ and run there "
            f"with overrides {{'lr': {self.config.lr / 10:g}}}: a resumed optimizer takes the lr of the config."
        )


def trained_steps_per_sample(interval_steps: int, fraction: float) -> int:
    """How many of a sample's ``interval_steps`` an epoch trains: ``ceil(fraction * steps)``, at least 1."""
    return max(1, math.ceil(fraction * interval_steps - 1e-9))


def micro_batches(
    n: int, steps: int, trained: int, batch_size: int, accum: int, chunk: int, generator: torch.Generator
) -> list[list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """One epoch's plan of the update: optimizer steps -> micro-batches -> chunks ``(rows, cols)``.

    Samples are shuffled and cut into micro-batches of ``batch_size``, ``accum`` micro-batches per optimizer step. Each
    sample visits its ``steps`` interval steps in its own random order (DDPO's time shuffle) and trains the first
    ``trained`` of them; a micro-batch's steps go to the UNet ``chunk`` at a time (0: all at once), so ``cols`` is
    ``(len(rows), c)``. Draws from ``generator`` in a fixed order (the permutation, then the time shuffle), so a stage's
    update is reproducible from its seed.
    """
    order = torch.randperm(n, generator=generator)
    time_order = torch.argsort(torch.rand(n, steps, generator=generator), dim=1)[:, :trained]
    chunk = trained if chunk == 0 else min(chunk, trained)
    micro = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [
        [[(rows, time_order[rows, j : j + chunk]) for j in range(0, trained, chunk)] for rows in micro[g : g + accum]]
        for g in range(0, len(micro), accum)
    ]


def flat_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> int:
    """How many branch groups have the same reward in every branch: they carry no within-group signal (under a binary
    reward, the groups whose branches all fail, or all succeed)."""
    groups = group_ids.unique()
    return int(sum(bool((rewards[group_ids == g] == rewards[group_ids == g][0]).all()) for g in groups))


def unet_rows(
    cfg: TrainerConfig,
    n_images: int,
    n_trained: int,
    trained_steps: int,
    processes: int = 1,
    interval: int | None = None,
) -> dict[str, int]:
    """One stage's UNet work, in sample-rows of a forward (a CFG step counts 2 rows), over all processes.

    ``unet_rows_sample``: the prefix once per branch group and the interval once per image (B²), the whole chain per
    image (plain sampling); ``interval`` is the number of steps after the split (default ``trained_steps``; larger
    under a ``window``, whose deterministic tail is sampled but not trained). ``unet_rows_train``: forward rows of
    the update, ``epochs x trained samples x interval
    steps`` (a backward costs about two forwards more; the same factor for every method). Why: B² trains only the kept
    samples on the interval, so at an equal image budget it does less UNet work; this is the compute view of the
    curves, next to images generated.
    """
    cfg_rows = 2 if cfg.guidance_scale > 1.0 else 1
    groups = n_images // cfg.num_branches
    interval = trained_steps if interval is None else interval  # steps after the split (> trained ones with a window)
    sample = (
        groups * (cfg.num_steps - interval) + n_images * interval if cfg.num_branches >= 2 else n_images * cfg.num_steps
    )
    train = cfg.epochs_per_stage * n_trained * trained_steps_per_sample(trained_steps, cfg.timestep_fraction)
    return {"unet_rows_sample": sample * cfg_rows * processes, "unet_rows_train": train * cfg_rows * processes}


#: forward-equivalents of one training row: its forward and its backward (about two forwards)
TRAIN_ROW_WORK = 3


def nominal_work(cfg: TrainerConfig) -> int:
    """A whole run's UNet work before it runs, in forward-equivalent sample-rows: every stage's sampling rows plus its
    training rows x :data:`TRAIN_ROW_WORK` (+1 under ``dpok``/``grpo``: the reference model's forward), counting as
    kept every sample the selection could keep (at most the best and the worst of each branch group).

    Why: an equal *compute* budget (``RunConfig.budget="compute"``) must fix each method's number of stages before
    training; counting B²'s upper bound of kept samples errs in the other methods' favour. A tree (``cfg.tree``)
    samples its nodes (:func:`b2lib.tree.tree_unet_rows`) and trains the stored steps of its open levels' nodes, at
    most the best and the worst of each sibling group under selection."""
    if cfg.tree is not None:
        return _nominal_tree_work(cfg)
    images = cfg.images_per_stage
    branched = cfg.num_branches >= 2
    n_trained = min(images, 2 * (images // cfg.num_branches)) if branched and cfg.selection else images
    per_train_row = TRAIN_ROW_WORK + (1 if cfg.algorithm in ("dpok", "grpo") else 0)
    total = 0
    for stage in range(cfg.num_stages):
        interval = cfg.schedule(stage)
        trained = min(cfg.window, interval) if cfg.window else interval
        rows = unet_rows(cfg, images, n_trained, trained, interval=interval)
        total += rows["unet_rows_sample"] + per_train_row * rows["unet_rows_train"]
    return total


def _nominal_tree_work(cfg: TrainerConfig) -> int:
    from .tree import _check_levels, tree_unet_rows

    levels = _check_levels(cfg.tree, cfg.num_steps)
    guided = cfg.guidance_scale > 1.0
    sample = cfg.prompts_per_stage * tree_unet_rows(levels, cfg.num_steps, guidance=guided)["tree"]
    ends = [lv.branch_at for lv in levels[1:]] + [cfg.num_steps]
    stored = [
        e - lv.branch_at if cfg.window is None else min(cfg.window, e - lv.branch_at) for lv, e in zip(levels, ends)
    ]
    nodes, parents = [], 1
    for lv in levels:  # per prompt: the nodes of each level, and the sibling groups they form
        kept = parents * lv.branches
        nodes.append(min(kept, 2 * parents) if cfg.selection else kept)
        parents *= lv.branches
    per_train_row = TRAIN_ROW_WORK + (1 if cfg.algorithm in ("dpok", "grpo") else 0)
    total = 0
    for stage in range(cfg.num_stages):
        rows = sum(
            nodes[k] * trained_steps_per_sample(stored[k], cfg.timestep_fraction) for k in cfg.tree_levels_at(stage)
        )
        train = cfg.epochs_per_stage * cfg.prompts_per_stage * rows * (2 if guided else 1)
        total += sample + per_train_row * train
    return total


def equal_work_stages(cfg: TrainerConfig, work: int) -> int:
    """The most stages of ``cfg`` (its other settings as they are) whose :func:`nominal_work` stays within ``work``;
    at least 1."""
    from dataclasses import replace

    stages = 1
    while nominal_work(replace(cfg, num_stages=stages + 1)) <= work:
        stages += 1
    return stages


def update_size(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> dict[str, float]:
    """How far one stage's update moved the trained weights: ``update_norm`` = ||w_after - w_before|| and
    ``rel_update`` = that over ||w_before|| (both over all trained tensors at once).

    Why log it: PPO's approx KL and clip fraction say how much the *policy* moved on the sampled data; this says how
    much the *weights* moved, so a stalled run (Adam steps too few or too small) is told apart from a moving one whose
    moves do not change the samples.
    """
    sq_delta = sum(float(((a.detach().float() - b.float()) ** 2).sum()) for a, b in zip(after, before))
    sq_norm = sum(float((b.float() ** 2).sum()) for b in before)
    return {
        "update_norm": math.sqrt(sq_delta),
        "rel_update": math.sqrt(sq_delta / sq_norm) if sq_norm > 0 else float("nan"),
    }


class B2Trainer(RLTrainer):
    """B²-DiffuRL: backward progressive training + branch-based sampling around the PPO-clip update."""

    @classmethod
    def _default_config(cls) -> TrainerConfig:
        return TrainerConfig.b2()


class DDPOTrainer(RLTrainer):
    """The DDPO baseline: the same trainer with no branching, the full interval and per-prompt stat tracking."""

    @classmethod
    def _default_config(cls) -> TrainerConfig:
        return TrainerConfig.ddpo()
