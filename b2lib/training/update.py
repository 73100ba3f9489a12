"""The RL update over stored transitions: ``epochs_per_stage`` epochs of the algorithm's loss (PPO-clip, + a KL to
the base model for dpok/grpo), micro-batched and accumulated as DDPO does, with the policy's log-probs recomputed under
the current weights (:meth:`b2lib.policies.base.Policy.transition`).

:class:`PolicyUpdate` is the part of :class:`b2lib.training.trainer.RLTrainer` that does it; it needs the trainer's
``config``, ``policy``, ``model`` (the prepared denoiser), ``accelerator``, ``optimizer`` and ``trainable``. The plan of
an epoch (:func:`micro_batches`) and the size of a step (:func:`update_size`) are pure functions.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from b2lib.algorithm.losses import gaussian_kl, needs_reference, policy_loss
from b2lib.algorithm.sampling import Trajectories
from b2lib.training.cost import trained_steps_per_sample
from b2lib.training.models import adapters_disabled

__all__ = ["PolicyUpdate", "micro_batches", "update_size"]


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


class PolicyUpdate:
    """The update half of the trainer (see the module docstring)."""

    def policy_terms(
        self, traj: Trajectories, rows: torch.Tensor, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``log p_theta`` of the stored transitions and, when the algorithm needs it (dpok, grpo), the per-transition
        ``KL(p_theta || p_ref)`` to the base model (the denoiser with its LoRA adapter off); ``None`` otherwise.

        The reference forward runs first, under no_grad, on the plain module, so the adapter is back on (and DDP's
        wrapper untouched) before the differentiable forward. Both forwards run in ``TrainerConfig.dtype``; the
        log-probs and the KL are fp32 (:mod:`b2lib.utils.precision`).
        """
        with self._compute():
            return self._policy_terms(traj, rows, cols)

    def _policy_terms(
        self, traj: Trajectories, rows: torch.Tensor, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        args = (traj, rows, cols, cfg.guidance_scale, cfg.eta, self.accelerator.device, cfg.explore_grid)
        if not needs_reference(cfg.algorithm):
            return self.policy.transition(self.model, *args)[0], None
        with torch.no_grad(), adapters_disabled(self.policy.denoiser):
            ref_mean = self.policy.transition(self.policy.denoiser, *args)[1]
        log_prob, mean, std = self.policy.transition(self.model, *args)
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
