"""How much of a stage's policy gradient is signal: the gradient signal-to-noise ratio of a method, measured.

Why measure it: on the embedded world every training run so far lost about as much reward to drift as it gained
(notebook 09's sign control), and every learning rate of the tuning sweep that moved the policy more lost more. A
simple model says why. With Adam (steps of about ``lr`` per weight whatever the gradient's size), K steps move the
weights by ~``lr * K`` along the mean gradient and by ~``lr * sqrt(K)`` in random directions: the first raises the
reward linearly in ``lr``, the second lowers it quadratically (the base model sits at an optimum of its own
likelihood). The best learning rate then gains in proportion to ``N * snr_per_image`` (``N`` images generated), so at
a fixed image budget only a better gradient *estimator* helps, and the estimator is exactly what B² changes:
branch-based sampling gives each sample a baseline that shares its prefix, and the progressive interval trains fewer,
later steps. This module measures the estimators, not the training runs.

What is measured. ``draws`` independent stages are sampled at the *base* model (the weights training starts from);
for each, the gradient of the trainer's own loss at ratio 1 (PPO-clip's gradient there: the mean over trained
transitions of ``-A * grad log p``) is taken separately per denoising step ``t`` and for the kept and the unkept
samples of B²'s selection. Sub-intervals and selection on/off are then read from one set of draws. From the Gram
matrix ``M[r, r'] = <G_r, G_r'>`` of the draws' gradients:

* ``signal = mean over r != r' of M[r, r']``: unbiased for ``||E G||^2``, the squared norm of the true gradient;
* ``noise = mean_r M[r, r] - signal``: unbiased for ``tr Cov(G)``, the noise of one stage's estimate;
* ``snr = signal / noise`` for a stage of ``images`` images; ``snr_per_image = snr / images`` and
  ``images_for_snr1 = images / snr`` (how many images a stage would need for its gradient's signal to equal its noise,
  if the noise falls as 1 / images). The Euclidean norm of the trained weights (the LoRA matrices) is the metric.

Intervals: delete-one jackknife over draws (the estimators are U-statistics of the draws, which are i.i.d.).

What to expect. A score-function (REINFORCE) estimate's SNR has a scale set by the dimension of the action. For a
Gaussian step ``x = mu + sigma * eps`` in ``d`` dimensions and a reward linear in ``x`` (the easiest case), the
estimate ``(w . eps) eps`` of the gradient ``w`` has per-sample SNR exactly ``1 / (d + 1)`` even with the ideal
baseline (the mean reward; any other adds noise; ``tests/studies/test_gradient_snr.py`` checks it), and no reward of one
direction does better in the space of the step's mean (Cauchy-Schwarz). A DDIM step of the embedded world acts in
``d = 4 x 16 x 16 = 1024`` latent dimensions (Stable Diffusion's: 16,384), so the scale is ~1e-3 per image and step;
the adapter's geometry moves it by a modest factor (notebook 10's positive control, a global colour shift, measures
1.5e-3). A gradient whose signal equals its noise then needs on the order of a thousand images, whatever B² does
about *which* steps are credited.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from b2lib.experiments.presets import load_models, load_prompts, trainer_config
from b2lib.rewards.base import Redness
from b2lib.training.trainer import RLTrainer
from b2lib.utils.tables import write_table
from b2lib.world.evaluation import judge_reward

__all__ = [
    "SNR_ARMS",
    "GradientDraws",
    "snr_from_gram",
    "jackknife_snr",
    "measure_gradients",
    "snr_rows",
    "snr_difference",
    "snr_comparisons",
    "snr_study",
]


def snr_from_gram(gram: np.ndarray) -> dict[str, float]:
    """``signal``, ``noise``, ``snr`` and mean pairwise ``cosine`` of the draws whose Gram matrix is ``gram``
    (``(R, R)``, ``R >= 2``): see the module docstring. ``snr`` is NaN when ``noise <= 0`` (too few draws)."""
    gram = np.asarray(gram, dtype=float)
    r = gram.shape[0]
    if gram.ndim != 2 or gram.shape != (r, r) or r < 2:
        raise ValueError(f"gram must be a square (R, R) matrix with R >= 2 draws, got shape {gram.shape}.")
    diag = np.diag(gram)
    off = ~np.eye(r, dtype=bool)
    signal = float(gram[off].mean())
    noise = float(diag.mean() - signal)
    norms = np.sqrt(np.maximum(diag, 1e-300))
    cosine = float((gram / np.outer(norms, norms))[off].mean())
    return {"signal": signal, "noise": noise, "snr": signal / noise if noise > 0 else float("nan"), "cosine": cosine}


def jackknife_snr(gram: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """:func:`snr_from_gram` plus delete-one jackknife intervals (normal approximation at ``level``) for ``snr``,
    ``signal`` and ``cosine``: keys ``<name>_low`` / ``<name>_high``. Needs ``R >= 3`` draws."""
    gram = np.asarray(gram, dtype=float)
    r = gram.shape[0]
    if r < 3:
        raise ValueError(f"a jackknife interval needs at least 3 draws, got {r}.")
    full = snr_from_gram(gram)
    z = float(_normal_quantile(0.5 + level / 2))
    out = dict(full)
    for key in ("snr", "signal", "cosine"):
        leave = []
        for i in range(r):
            keep = np.arange(r) != i
            leave.append(snr_from_gram(gram[np.ix_(keep, keep)])[key])
        leave = np.asarray(leave)
        se = math.sqrt((r - 1) / r * float(((leave - leave.mean()) ** 2).sum()))
        out[f"{key}_low"], out[f"{key}_high"] = full[key] - z * se, full[key] + z * se
        out[f"{key}_se"] = se
    return out


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF (``statistics.NormalDist``; no scipy needed)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


@dataclass
class GradientDraws:
    """Per-draw, per-step gradient sums of one estimator and their Gram tensor.

    ``gram[r, t, s, r2, t2, s2] = <S[r, t, s], S[r2, t2, s2]>`` where ``S[r, t, s]`` is the sum over draw ``r``'s
    samples of part ``s`` (0: kept by the selection, 1: not kept) of ``-A * grad log p`` at interval step ``t``.
    ``first_step`` is the chain index of interval step 0 (where the branches split); the measured steps are
    ``first_step .. first_step + trained_steps - 1`` of a ``num_steps`` chain (fewer than the rest of the chain under
    a ``window``).
    """

    gram: np.ndarray  # (R, T, 2, R, T, 2) float64
    counts: np.ndarray  # (R, 2): samples kept / not kept per draw
    images: int  # images generated per draw (one stage)
    first_step: int
    num_steps: int
    reward_mean: float
    seconds: float
    meta: dict = field(default_factory=dict)

    @property
    def draws(self) -> int:
        return self.gram.shape[0]

    @property
    def trained_steps(self) -> int:
        return self.gram.shape[1]

    def stage_gram(self, steps: Sequence[int] | None = None, selection: bool = True) -> np.ndarray:
        """``(R, R)`` Gram of each draw's stage gradient as the trainer forms it: the mean of ``-A grad log p`` over
        trained samples (kept ones if ``selection``, else all) and the chain ``steps`` given (default: the whole
        interval; steps outside it are an error)."""
        end = self.first_step + self.trained_steps
        chain = list(range(self.first_step, end)) if steps is None else list(steps)
        if not chain or any(not self.first_step <= s < end for s in chain):
            raise ValueError(f"steps {chain} must lie in the measured interval [{self.first_step}, {end}).")
        cols = [s - self.first_step for s in chain]
        parts = [0] if selection else [0, 1]
        g = self.gram[:, cols][:, :, parts][:, :, :, :, cols][:, :, :, :, :, parts]
        summed = g.sum(axis=(1, 2, 4, 5))
        n = self.counts[:, parts].sum(axis=1) * len(cols)
        w = np.where(n > 0, 1.0 / np.maximum(n, 1), 0.0)
        return summed * np.outer(w, w)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # the Gram matrix is symmetric: its upper triangle in float32 (a quarter of the bytes; the estimators average
        # many entries, so float32's 1e-7 relative error is far below their intervals)
        n = int(np.prod(self.gram.shape[:3]))
        upper = self.gram.reshape(n, n)[np.triu_indices(n)].astype(np.float32)
        np.savez_compressed(
            path,
            gram_upper=upper,
            gram_shape=np.array(self.gram.shape),
            counts=self.counts,
            images=self.images,
            first_step=self.first_step,
            num_steps=self.num_steps,
            reward_mean=self.reward_mean,
            seconds=self.seconds,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GradientDraws":
        z = np.load(path)
        if "gram" in z:  # full matrix (files written before the triangle format)
            gram = z["gram"].astype(np.float64)
        else:
            shape = tuple(int(x) for x in z["gram_shape"])
            n = int(np.prod(shape[:3]))
            flat = np.zeros((n, n))
            flat[np.triu_indices(n)] = z["gram_upper"]
            gram = (flat + np.triu(flat, 1).T).reshape(shape)
        return cls(
            gram,
            z["counts"],
            int(z["images"]),
            int(z["first_step"]),
            int(z["num_steps"]),
            float(z["reward_mean"]),
            float(z["seconds"]),
        )


def _flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().float() for p in params]
    )


def measure_gradients(
    trainer,
    draws: int,
    trained_steps: int | None = None,
    stage: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
) -> GradientDraws:
    """Sample ``draws`` independent stages with ``trainer`` at its current weights and collect their per-step,
    per-part gradient sums (:class:`GradientDraws`). The trainer is left as it was: weights, optimizer and the
    advantage normaliser's state (each draw normalises as a first stage would) are untouched.

    ``trained_steps``: the interval (B²: where branches split); default the schedule's interval at ``stage``.
    ``batch_size``: samples per forward (default the trainer's ``train_batch_size``).
    """
    if draws < 3:
        raise ValueError(f"draws must be >= 3 (the jackknife needs 3), got {draws}.")
    cfg = trainer.config
    params = list(trainer.trainable)
    batch = batch_size or cfg.train_batch_size
    t0 = time.perf_counter()
    vectors: list[torch.Tensor] = []
    counts = np.zeros((draws, 2), dtype=np.int64)
    images, steps, first, rewards_seen = 0, None, 0, []
    model = trainer.model
    was_training = model.training
    model.train()  # as the trainer's update (the embedded UNet has no dropout, so this is also sampling's mode)
    for r in tqdm(range(draws), desc="gradient draws", disable=not progress):
        traj, rewards = trainer.sample_stage(stage, trained_steps=trained_steps, draw=r + 1)
        state = trainer.normalizer.state_dict()  # advantages() updates the normaliser: measure, then restore
        adv, keep = trainer.advantages(traj, rewards)
        trainer.normalizer.load_state_dict(state)
        rewards_seen.append(float(rewards.mean()))
        images, steps = len(traj), traj.num_steps
        first = cfg.num_steps - (trainer.schedule(stage) if trained_steps is None else trained_steps)
        rows_by_part = [keep.nonzero().flatten(), (~keep).nonzero().flatten()]
        counts[r] = [len(rows_by_part[0]), len(rows_by_part[1])]
        for t in range(steps):
            for rows in rows_by_part:
                for p in params:
                    p.grad = None
                for chunk in rows.split(batch) if len(rows) else ():
                    cols = torch.full_like(chunk, t)
                    log_prob = trainer.policy_terms(traj, chunk, cols)[0]
                    loss = -(adv[chunk].to(log_prob.device) * log_prob).sum()
                    loss.backward()
                vectors.append(_flat_grad(params))
    for p in params:
        p.grad = None
    model.train(was_training)
    v = torch.stack(vectors).double()
    gram = (v @ v.T).numpy().reshape(draws, steps, 2, draws, steps, 2)
    return GradientDraws(
        gram, counts, images, first, cfg.num_steps, float(np.mean(rewards_seen)), time.perf_counter() - t0
    )


def snr_rows(
    draws: GradientDraws,
    label: str,
    intervals: dict[str, Sequence[int] | None] | None = None,
    selections: Sequence[bool] = (True, False),
) -> list[dict]:
    """One row per (named step subset, selection on/off) of a measurement: ``snr`` with its interval, per image, the
    images a stage would need for ``snr = 1``, the cosine between draws, and the samples trained per draw.

    ``intervals``: name -> chain steps (``None``: the whole measured interval). Selection off is skipped where the
    estimator kept every sample (nothing differs)."""
    intervals = intervals or {"interval": None}
    out = []
    for name, steps in intervals.items():
        for sel in selections:
            if not sel and draws.counts[:, 1].sum() == 0:
                continue
            s = jackknife_snr(draws.stage_gram(steps, selection=sel))
            n_steps = draws.trained_steps if steps is None else len(list(steps))
            trained = draws.counts[:, 0] if sel else draws.counts.sum(axis=1)
            per_image = s["snr"] / draws.images
            out.append(
                {
                    "estimator": label,
                    "steps": name,
                    "n_steps": n_steps,
                    "selection": sel,
                    "draws": draws.draws,
                    "images": draws.images,
                    "trained_samples": float(trained.mean()),
                    **{
                        k: s[k]
                        for k in (
                            "snr",
                            "snr_low",
                            "snr_high",
                            "snr_se",
                            "signal",
                            "noise",
                            "cosine",
                            "cosine_low",
                            "cosine_high",
                        )
                    },
                    "snr_per_image": per_image,
                    "images_for_snr1": 1.0 / per_image if per_image > 0 else float("inf"),
                    "reward_mean": draws.reward_mean,
                    "seconds": draws.seconds,
                }
            )
    return out


def snr_difference(a: dict, b: dict, level: float = 0.95) -> dict[str, float]:
    """``a - b`` of two rows of :func:`snr_rows` in SNR *per image* (the equal-image view), with a normal interval from
    their jackknife standard errors. Only for independent measurements (different draws), e.g. two estimators."""
    z = _normal_quantile(0.5 + level / 2)
    d = a["snr_per_image"] - b["snr_per_image"]
    se = math.hypot(a["snr_se"] / a["images"], b["snr_se"] / b["images"])
    return {"difference": d, "low": d - z * se, "high": d + z * se}


def snr_comparisons(table, pairs, steps: str = "interval"):
    """``a - b`` in SNR per image (:func:`snr_difference`) for each ``(a, b)`` pair of estimators of a
    :func:`snr_study` table: ``a`` with selection on and off, ``b`` with selection on (its training setting). Pairs
    with an estimator missing from the table are skipped. Returns a DataFrame with ``resolved`` (interval excludes
    0)."""
    import pandas as pd

    def row(estimator, selection=True):
        hit = table[(table["estimator"] == estimator) & (table["steps"] == steps) & (table["selection"] == selection)]
        return hit.iloc[0].to_dict() if len(hit) else None

    out = []
    for a, b in pairs:
        rb = row(b)
        for sel in (True, False):
            ra = row(a, sel)
            if ra is None or rb is None:
                continue
            d = snr_difference(ra, rb)
            out.append({"a": a, "b": b, "a_selection": sel, **d, "resolved": d["low"] > 0 or d["high"] < 0})
    return pd.DataFrame(out)


#: The estimators measured by default (notebook 10), each a method of :func:`b2lib.experiments.presets.trainer_config`
# at one  stage of its schedule, with the reward it is trained on ("clip": the preset's CLIPScore; "judge": the world's
#: binary all-correct judge, the truly sparse reward; "redness": :class:`b2lib.rewards.base.Redness`, the positive
#: control). ``stage``: "first" or "last" of the method's schedule; B²'s first stage trains the late half of the
#: chain, its last stage the whole chain (branched at x_T, like the "branch" ablation at every stage).
SNR_ARMS: dict[str, dict] = {
    "ddpo": dict(method="ddpo", stage="first", reward="clip"),
    "b2_first": dict(method="b2", stage="first", reward="clip"),
    "b2_last": dict(method="b2", stage="last", reward="clip"),
    "ddpo_judge": dict(method="ddpo", stage="first", reward="judge"),
    "b2_first_judge": dict(method="b2", stage="first", reward="judge"),
    # the positive control: a dense reward that RL learns in a few stages (b2lib.rewards.base.Redness). Under DDPO's
    # batch baseline most of its variance is the prompt's colour word, which no step's noise explains; branched at x_T
    # with one stochastic step and 4x the images, every reward difference within a group comes from the trained step,
    # and the ceiling (module docstring) is ~0.09 per stage: there the measurement should find a signal.
    "ddpo_redness": dict(method="ddpo", stage="first", reward="redness"),
    "b2_last_window1_n128_redness": dict(
        method="b2", stage="last", reward="redness", overrides={"window": 1}, images_per_stage=128
    ),
    "b2_last_window1_n128": dict(
        method="b2", stage="last", reward="clip", overrides={"window": 1}, images_per_stage=128
    ),
    # B² with a deterministic tail (sample_branches' window): the branches differ only by the trained steps' noise
    "b2_first_window1": dict(method="b2", stage="first", reward="clip", overrides={"window": 1}),
    "b2_last_window1": dict(method="b2", stage="last", reward="clip", overrides={"window": 1}),
    "b2_first_window2": dict(method="b2", stage="first", reward="clip", overrides={"window": 2}),
    # coarse exploration (TrainerConfig.explore_grid): the trained step's noise only on a g x g lattice per latent
    # channel, 4 g^2 explored dimensions instead of the latent's 1024; the ceiling 1 / (d + 1) per image rises with it
    "b2_last_window1_grid2": dict(method="b2", stage="last", reward="clip", overrides={"window": 1, "explore_grid": 2}),
    "b2_last_window1_grid4": dict(method="b2", stage="last", reward="clip", overrides={"window": 1, "explore_grid": 4}),
    "b2_first_window1_grid2": dict(
        method="b2", stage="first", reward="clip", overrides={"window": 1, "explore_grid": 2}
    ),
    # group-relative advantages (algorithm "grpo": z within the branch group, whose members share the prefix): the
    # prefix's share of the reward leaves the advantage, so with one stochastic step every reward difference the
    # update sees comes from the trained step's exploration (the KL term has zero gradient at the base model)
    "b2_last_window1_grpo": dict(
        method="b2", stage="last", reward="clip", overrides={"window": 1, "algorithm": "grpo"}
    ),
    "b2_last_window1_grid2_grpo": dict(
        method="b2", stage="last", reward="clip", overrides={"window": 1, "explore_grid": 2, "algorithm": "grpo"}
    ),
    "b2_first_window1_grid2_grpo": dict(
        method="b2", stage="first", reward="clip", overrides={"window": 1, "explore_grid": 2, "algorithm": "grpo"}
    ),
    # which of the two matters: group-relative advantages alone, coarse exploration alone
    "b2_first_window1_grpo": dict(
        method="b2", stage="first", reward="clip", overrides={"window": 1, "algorithm": "grpo"}
    ),
}


_REWARDS = ("clip", "judge", "redness")


def _step_subsets(end: int, first_step: int) -> dict[str, list[int] | None]:
    """The whole measured interval ``[first_step, end)``, and where it is long enough, its early and late halves
    (chain step indices)."""
    subsets: dict[str, list[int] | None] = {"interval": None}
    length = end - first_step
    if length >= 4:
        mid = first_step + length // 2
        subsets["early half"] = list(range(first_step, mid))
        subsets["late half"] = list(range(mid, end))
    return subsets


def snr_study(
    out: str | Path,
    template: str = "counting",
    arms: dict[str, dict] | None = None,
    draws: int = 32,
    seed: int = 0,
    preset: str = "embedded",
    images_per_stage: int | None = None,
    overrides: dict | None = None,
    device: str | None = None,
    progress: bool = True,
    write: bool = True,
):
    """Measure every arm (see :data:`SNR_ARMS`) at the base model on the train prompts of ``template`` and return the
    table of :func:`snr_rows` (also written to ``out/snr.csv``). Each arm's draws are saved as
    ``out/draws_<arm>.npz`` as soon as they are done, and an arm whose file exists is read instead of measured
    again, so a killed study loses at most the arm it was in. ``images_per_stage`` (default: the arm's own, else the
    preset's) and ``overrides`` (under each arm's own) are passed to :func:`~b2lib.experiments.presets.trainer_config`:
    the preset's tuned recipe of each method by default. ``write=False``: leave ``snr.csv`` alone (workers measuring
    arms side by side each write only their draws)."""
    import pandas as pd

    arms = dict(SNR_ARMS if arms is None else arms)
    for name, arm in arms.items():
        unknown = set(arm) - {"method", "stage", "reward", "overrides", "images_per_stage"}
        if unknown or arm.get("stage", "first") not in ("first", "last") or arm.get("reward", "clip") not in _REWARDS:
            raise ValueError(
                f"arm {name!r}: {arm} must have method, stage ('first'/'last'), reward {_REWARDS} "
                f"and optional overrides / images_per_stage; unknown keys {sorted(unknown)}."
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(preset, template, "train")
    rows = []
    for name, arm in arms.items():
        path = out / f"draws_{name}.npz"
        if path.exists():
            measured = GradientDraws.load(path)
        else:
            pipe, clip = load_models(preset, device=device)  # fresh base weights for every arm
            reward = clip
            if arm.get("reward", "clip") == "judge":
                reward = judge_reward
            elif arm.get("reward", "clip") == "redness":
                reward = Redness()
            ips = images_per_stage if images_per_stage is not None else arm.get("images_per_stage")
            cfg = trainer_config(
                preset,
                arm["method"],
                images_per_stage=ips,
                seed=seed,
                progress=False,
                **{**(overrides or {}), **arm.get("overrides", {})},
            )
            stage = 0 if arm.get("stage", "first") == "first" else cfg.num_stages - 1
            trainer = RLTrainer(pipe, reward, prompts, cfg)
            measured = measure_gradients(trainer, draws, stage=stage, progress=progress)
            measured.save(path)
        subsets = _step_subsets(measured.first_step + measured.trained_steps, measured.first_step)
        for row in snr_rows(measured, name, subsets):
            rows.append(
                {
                    **row,
                    "method": arm["method"],
                    "stage": arm.get("stage", "first"),
                    "reward": arm.get("reward", "clip"),
                    "first_step": measured.first_step,
                }
            )
    table = pd.DataFrame(rows)
    if write:
        write_table(table, out, "snr")
    return table
