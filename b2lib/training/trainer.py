"""The RL fine-tuning loop: sample -> score -> advantages/selection -> update -> log, one *stage* at a time.

B²-DiffuRL, DDPO and their ablations are one :class:`RLTrainer` under different configurations (``config``). A stage's
samples (plain, branched, a tree) come from the configuration; steps and their scores from the pipeline's policy
(:mod:`b2lib.policies`); the update is ``update``'s :class:`PolicyUpdate`; a stage's work is counted by ``cost``.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from b2lib.algorithm.advantages import (
    HistoryNormalizer,
    PerPromptStatTracker,
    flat_groups,
    group_ids_of,
    group_relative_advantages,
    select_in_groups,
    weighted_advantages,
)
from b2lib.algorithm.sampling import Trajectories, sample_branches, sample_trajectories
from b2lib.algorithm.schedule import informative_history
from b2lib.algorithm.tree import sample_tree, tree_training_batch
from b2lib.policies.base import Policy, as_policy
from b2lib.rewards.base import RewardFn, RewardNotFiniteError, check_finite, check_reward_output
from b2lib.training.checkpoint import (
    checkpoint_stages,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from b2lib.training.config import ADDED_FIELDS, TrainerConfig
from b2lib.training.cost import TRAIN_ROW_WORK, equal_work_stages, nominal_work, trained_steps_per_sample, unet_rows
from b2lib.training.models import LORA_TARGETS, add_lora, ensure_ddim, lora_fused
from b2lib.training.update import PolicyUpdate, micro_batches, update_size
from b2lib.utils.precision import check_dtype, compute_dtype

__all__ = [  # the loop, and the names of config, cost and update that callers take from here
    "TrainerConfig", "ADDED_FIELDS", "RLTrainer", "B2Trainer", "DDPOTrainer", "flat_groups", "micro_batches",
    "unet_rows", "nominal_work", "equal_work_stages", "trained_steps_per_sample", "TRAIN_ROW_WORK", "update_size",
]  # fmt: skip


def policy_of(pipe: DiffusionPipeline | Policy) -> Policy:
    """The trainer's policy for ``pipe``: an SD 1.x pipeline gets a DDIM scheduler first (:func:`ensure_ddim`), an
    SD3-family one keeps its flow-matching scheduler; a :class:`Policy` is used as it is."""
    if not isinstance(pipe, Policy) and getattr(pipe, "transformer", None) is None:
        ensure_ddim(pipe)
    return as_policy(pipe)


class RLTrainer(PolicyUpdate):
    """Fine-tunes the pipeline's denoiser (``pipe.unet`` or ``pipe.transformer``; LoRA by default) against
    ``reward_fn`` on ``prompts`` (sampled uniformly with replacement). One call of :meth:`train_stage` = sample, score,
    select, ``epochs_per_stage`` epochs of the update.

    Determinism: stage ``k``'s prompts, noise and shuffles come from generators seeded by ``(seed, k)``, so a run
    is reproducible on CPU and a resumed run continues with the same randomness.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline | Policy,
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
        self.policy = policy_of(pipe)
        self.pipe = pipe = self.policy.pipe
        self.reward_fn = reward_fn
        self.metric_fn = metric_fn
        self.prompts = list(prompts)
        self.accelerator = accelerator or Accelerator(mixed_precision=self.config.mixed_precision)
        check_dtype(self.config.dtype, self.accelerator.device)  # the device it got, not the config's guess
        # the trained steps of each stage: the backward schedule, or the branch point chosen from the log's census
        self.schedule = self.config.schedule if self.config.branch_target is None else self._signal_schedule
        cfg = self.config

        denoiser = self.policy.denoiser
        pipe.set_progress_bar_config(disable=True)
        for module in pipe.components.values():  # the VAE and the text encoders stay frozen
            if isinstance(module, torch.nn.Module) and module is not denoiser:
                module.requires_grad_(False)
        if cfg.use_lora:
            params = add_lora(
                denoiser, rank=cfg.lora_rank, target_modules=LORA_TARGETS[cfg.lora_targets], seed=cfg.seed
            )
            for p in params:  # fp32 master weights for the adapter when the base model runs in fp16/bf16 (as DDPO)
                p.data = p.data.float()
        else:
            denoiser.requires_grad_(True)
            params = list(denoiser.parameters())
        self.trainable = params
        optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        # The prepared model (DDP-wrapped under several processes) is used for training forwards; sampling uses the
        # plain module through the pipeline.
        self.model, self.optimizer = self.accelerator.prepare(denoiser, optimizer)
        # Sampling runs in eval mode and only update() switches to train mode. A model built from config starts in
        # train mode; without dropout the outputs are the same, but the speed benchmark tells the two phases apart.
        denoiser.eval()
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
        """The trained parameters by name (LoRA matrices, or the whole denoiser): what a checkpoint stores."""
        return {n: p for n, p in self.policy.denoiser.named_parameters() if p.requires_grad}

    # --------------------------------------------------------------------------------------------------- randomness
    def _generator(self, stage: int, stream: int) -> torch.Generator:
        seed = (self.config.seed * 1_000_003 + stage * 97 + stream) * max(1, self.accelerator.num_processes)
        return torch.Generator().manual_seed(seed + self.accelerator.process_index)

    def _signal_schedule(self, stage: int) -> int:
        return self.config.signal_branching(stage, informative_history(self.log[:stage]))

    # ------------------------------------------------------------------------------------------------------ sample
    def sample_stage(
        self, stage: int, trained_steps: int | None = None, draw: int = 0
    ) -> tuple[Trajectories, torch.Tensor]:
        """Sample this stage's trajectories (branched or plain) and their rewards.

        ``trained_steps`` (default: the schedule's interval at ``stage``) and ``draw`` are for measurements outside
        training (:mod:`b2lib.studies.gradient_snr`): draw ``d > 0`` takes prompts and noise from streams of its own, so
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
                    traj = sample_branches(self.policy, prompts, cfg.num_branches, trained_steps, **kwargs)
                else:
                    traj = sample_trajectories(self.policy, prompts, trained_steps=trained_steps, **kwargs)
                scores = self._score(traj.images, traj.prompts, stage)
                batches.append(traj)
                rewards.append(scores)
        return Trajectories.cat(batches), torch.cat(rewards)

    def _compute(self):
        """Model forwards in ``TrainerConfig.dtype`` (:func:`b2lib.utils.precision.compute_dtype`): sampling, the
        rewards computed while sampling, and the update's log-prob recomputation."""
        return compute_dtype(self.config.dtype)

    def _fused(self):
        """Sampling runs with the adapter folded into the weights (``TrainerConfig.fuse_lora``); training does not."""
        return lora_fused(self.policy.denoiser, self.config.fuse_lora and self.config.use_lora)

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
            prefix_eta=cfg.prefix_eta,
        )

    def _score(self, images: torch.Tensor, prompts: list[str], stage: int) -> torch.Tensor:
        """``reward_fn`` on a batch, checked: one finite score per image, or an error naming the fault: the reward
        function (finite images, :func:`~b2lib.rewards.base.check_finite`), or the model (the checkpoint to go on
        from)."""
        scores = check_reward_output(self.reward_fn(images, prompts), len(images), "reward_fn")
        check_finite(scores, images, prompts, "reward_fn", stage)
        return scores

    def sample_tree_stage(self, stage: int) -> dict:
        """This stage's trees (one per drawn prompt, ``sample_batch_size`` prompts per batched call) and what the update
        needs: ``leaves`` (the images, as Trajectories) and their ``rewards``, the trained levels' ``transitions`` with
        their step-specific advantages ``z`` and the selection mask ``keep``, the trained level indices, and the
        sampling's UNet rows. Prompts and noise come from the same streams as :meth:`sample_stage`."""

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
                tree = sample_tree(self.policy, prompts, cfg.tree, **self._chain_kwargs(noise_gen))
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

    # ------------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """What a resumed run needs: trained weights (by name), optimizer, normaliser, stage counters and the log. No
        RNG state: every stage's randomness is derived from ``(seed, stage)``. :mod:`b2lib.training.checkpoint` writes
        it without pickle (tensors to safetensors, the rest to JSON)."""
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
        if cfg.tree is not None:  # the tree counts its own sampling rows (b2lib.algorithm.tree.tree_unet_rows)
            cost["unet_rows_sample"] = tree["unet_rows_sample"]
        self.unet_rows_seen += cost["unet_rows_sample"] + cost["unet_rows_train"]
        grouped = cfg.num_branches >= 2 or bool(cfg.tree) or cfg.samples_per_prompt > 1
        # the census's groups: branch groups (B², trees), a prompt's samples of this stage (GRPO-style, DDPO's
        # per-prompt draws), else every sample its own
        ids = group_ids_of(traj.prompts) if cfg.num_branches < 2 and not cfg.tree and grouped else traj.group_ids
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
            "flat_groups": flat_groups(rewards, ids) if grouped else 0,
            "flat_low_groups": flat_groups(rewards, ids, rewards.mean().item()) if grouped else 0,
            "groups": int(ids.unique().numel()),
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
        cannot be seen (:class:`b2lib.experiments.experiment.RunProgress`: a notebook run under papermill, a log file).
        """

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
            except RewardNotFiniteError:
                raise  # the reward function's fault: no learning-rate advice
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

        good = [c for c in checkpoint_stages(checkpoint_dir) if verify_checkpoint(c) is None] if checkpoint_dir else []
        if not good:
            return "No finite checkpoint was written before it; start over with a lower lr (e.g. lr / 10)."
        return (
            f"The last finite state is {good[-1]} (stages done: {int(good[-1].name.split('_')[1])}). To go on from it "
            f"with a lower lr, copy that folder into a new run folder's <method>_seed<k>/checkpoints/ and run there "
            f"with overrides {{'lr': {self.config.lr / 10:g}}}: a resumed optimizer takes the lr of the config."
        )


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
