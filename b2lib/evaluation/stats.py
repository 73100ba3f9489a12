"""Confidence intervals for paired model comparisons: a two-level (seeds x prompts) bootstrap.

Why two levels: a fine-tuned model's score varies with its training seed *and* with the evaluation prompts and noise.
Every model is evaluated on the same prompts with the same noise (:func:`b2lib.evaluation.generate.generate`), so
differences are paired image by image; the prompts are resampled jointly for both sides (paired), the training seeds of
each side independently (a seed of B² has nothing to do with the same seed of DDPO). The base model has one "seed".

Images of one prompt are not independent draws of the prompt distribution, so prompts (not images) are the
resampling unit: the interval then covers the prompt-to-prompt spread that a new prompt set would bring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "per_prompt_means", "bootstrap_difference", "bootstrap_mean", "verdict"]


@dataclass(frozen=True)
class Interval:
    """A difference (or a mean) and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    @property
    def resolved(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def per_prompt_means(scores: np.ndarray, prompt_ids: np.ndarray) -> np.ndarray:
    """``(seeds, images)`` scores -> ``(seeds, prompts)`` means over each prompt's images (prompt order: sorted ids)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    prompt_ids = np.asarray(prompt_ids)
    if scores.shape[1] != len(prompt_ids):
        raise ValueError(f"scores have {scores.shape[1]} images per seed but prompt_ids has {len(prompt_ids)}.")
    _, inverse, counts = np.unique(prompt_ids, return_inverse=True, return_counts=True)
    sums = np.zeros((scores.shape[0], len(counts)))
    for s in range(scores.shape[0]):
        np.add.at(sums[s], inverse, scores[s])
    return sums / counts


def _boot_weights(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """``(draws, n)`` resampling counts: how often each of ``n`` units is drawn in each bootstrap replicate."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(float)


def bootstrap_difference(
    a: np.ndarray, b: np.ndarray, prompt_ids: np.ndarray, draws: int = 4000, level: float = 0.95, seed: int = 0
) -> Interval:
    """``mean(a) - mean(b)`` with a percentile interval; ``a`` and ``b`` are ``(seeds, images)`` score arrays on the
    same images (same prompts, same noise), ``prompt_ids`` the prompt of each image.

    Each replicate resamples the seeds of ``a``, the seeds of ``b`` (independently) and the prompts (jointly).
    """
    pa, pb = per_prompt_means(a, prompt_ids), per_prompt_means(b, prompt_ids)
    rng = np.random.default_rng(seed)
    n_prompts = pa.shape[1]
    wp = _boot_weights(rng, n_prompts, draws) / n_prompts  # (draws, prompts)
    wa = _boot_weights(rng, pa.shape[0], draws) / pa.shape[0]  # (draws, seeds_a)
    wb = _boot_weights(rng, pb.shape[0], draws) / pb.shape[0]
    reps = np.einsum("ds,sp,dp->d", wa, pa, wp) - np.einsum("ds,sp,dp->d", wb, pb, wp)
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return Interval(float(pa.mean() - pb.mean()), float(low), float(high), level)


def bootstrap_mean(
    a: np.ndarray, prompt_ids: np.ndarray, draws: int = 4000, level: float = 0.95, seed: int = 0
) -> Interval:
    """``mean(a)`` of a ``(seeds, images)`` array with the same two-level interval."""
    zero = np.zeros((1, np.atleast_2d(a).shape[1]))
    return bootstrap_difference(a, zero, prompt_ids, draws, level, seed)


def verdict(diff: Interval, first: str, second: str) -> str:
    """README wording: "<first> higher, +0.08 [0.03, 0.13]" when the interval excludes zero, else "no difference
    resolved, +0.01 [-0.04, 0.06]"."""
    if not diff.resolved:
        return f"no difference resolved, {diff}"
    return f"{first if diff.estimate > 0 else second} higher, {diff}"
