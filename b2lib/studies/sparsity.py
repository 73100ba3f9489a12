"""How many of B²'s branch groups carry a signal under a sparse reward: closed forms, and the census read back.

Why: under a binary reward a branch group (``B`` continuations of one shared prefix) carries a within-group comparison
only if its branches disagree. A group whose branches all fail, or all succeed, is *flat*: B²'s group-relative
advantage is zero across it, so it trains nothing however large the stage. The share of informative groups is set by
two numbers: the base rate ``p`` at which a branch succeeds, and how much siblings agree, the intra-group correlation
``rho`` (siblings share their prefix, so they succeed together more often than independent samples would). This module
predicts the share from ``(p, rho, B)`` under the exchangeable (beta-binomial) model, estimates ``p`` and ``rho`` from a
census of groups (:func:`b2lib.studies.grids.group_census`), and sets prediction against measurement.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from b2lib.experiments.presets import load_models, trainer_config
from b2lib.experiments.runconfig import job_label
from b2lib.reporting.plot_style import INTERVAL, legend_outside, method_colour, method_order, value_ticks, wrap
from b2lib.training.trainer import RLTrainer
from b2lib.world.evaluation import JUDGE_REWARDS, judge_reward, judge_strict_reward

__all__ = [
    "AXIS",
    "positive_rates",
    "branch_census",
    "group_kind",
    "census_study",
    "census_figure",
    "sparsity_runs",
    "gain_vs_sparsity",
    "sparsity_plot",
    "flat_probability",
    "informative_share",
    "sibling_correlation",
    "census_prediction",
    "groups_needed",
]


def flat_probability(p: float, rho: float, branches: int) -> float:
    """P(all ``branches`` siblings score alike) for a binary reward with success rate ``p`` and intra-group
    correlation ``rho`` (beta-binomial: each group draws its own rate from a Beta with mean ``p``; ``rho`` = 1 / (a + b
    + 1)). ``rho`` = 0 is independent branches: p^B + (1 - p)^B; ``rho`` = 1 makes every group flat. For B = 2 this is
    1 - 2 p (1 - p)(1 - rho)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1]; got {p}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1]; got {rho}")
    if branches < 2:
        raise ValueError(f"a group needs at least 2 branches; got {branches}")
    if p in (0.0, 1.0) or rho == 1.0:
        return 1.0
    if rho == 0.0:
        return p**branches + (1 - p) ** branches
    s = (1 - rho) / rho  # a + b of the Beta
    a, b = p * s, (1 - p) * s
    all_one = math.prod((a + k) / (s + k) for k in range(branches))
    all_zero = math.prod((b + k) / (s + k) for k in range(branches))
    return all_one + all_zero


def informative_share(p: float, rho: float, branches: int) -> float:
    """The share of branch groups whose siblings disagree: 1 - :func:`flat_probability`."""
    return 1.0 - flat_probability(p, rho, branches)


def sibling_correlation(group_means: np.ndarray, branches: int) -> tuple[float, float]:
    """``(p, rho)`` estimated from the mean binary reward of each of many groups of ``branches`` siblings: ``p`` the
    overall mean, ``rho`` from the variance of the group means, Var(m) = p (1 - p) (1 + (B - 1) rho) / B (method of
    moments, clipped to [0, 1]). Needs groups of equal size and at least two of them."""
    m = np.asarray(group_means, dtype=float)
    if m.size < 2:
        raise ValueError("estimating rho needs at least two groups")
    p = float(m.mean())
    if p in (0.0, 1.0):
        return p, float("nan")  # every branch alike: rho is not identified
    var = float(m.var(ddof=1))
    rho = (branches * var / (p * (1 - p)) - 1) / (branches - 1)
    return p, float(min(max(rho, 0.0), 1.0))


def census_prediction(census: pd.DataFrame, by: str = "trained_steps") -> pd.DataFrame:
    """Per value of ``by`` in a :func:`~b2lib.studies.grids.group_census` table (binary reward): the groups, the
    estimated ``p`` and ``rho``, the informative share predicted from them and the one measured (share of "mixed"
    groups), and the share independent branches (``rho`` = 0) would have had."""
    rows = []
    for key, part in census.groupby(by):
        b = int(part["branches"].iloc[0])
        p, rho = sibling_correlation(part["reward_mean"].to_numpy(), b)
        rows.append(
            {
                by: key,
                "groups": len(part),
                "branches": b,
                "p": p,
                "rho": rho,
                "predicted": informative_share(p, rho, b) if not math.isnan(rho) else 0.0,
                "measured": float((part["kind"] == "mixed").mean()),
                "independent": informative_share(p, 0.0, b),
            }
        )
    return pd.DataFrame(rows)


def groups_needed(share: float, informative: int) -> float:
    """Groups to sample for ``informative`` informative ones on average at informative ``share``: what a budget must
    buy under a sparse reward (e.g. a stage size that gives every update as many comparisons as a dense reward)."""
    if share <= 0:
        return float("inf")
    return informative / share


#: The sparsity axis, densest first (``RunConfig.reward`` names): the world's CLIPScore, the judge's graded score, its
#: binary all-correct verdict and the strict binary one (:data:`b2lib.world.evaluation.JUDGE_REWARDS`).
AXIS: tuple[str, ...] = ("clip", "judge_graded", "judge", "judge_strict")


def positive_rates(images, prompts: Sequence[str], clip_scores=None) -> pd.DataFrame:
    """Each reward of :data:`AXIS` on the same images: its mean and its *positive rate*, the share of images it scores
    above 0 (what a binary reward's sparsity is). CLIPScore (``clip_scores``, if given) scores every image, so its
    positive rate is 1 by this definition: the dense end of the axis."""

    rows = []
    if clip_scores is not None:
        c = np.asarray(clip_scores, dtype=float)
        rows.append({"reward": "clip", "mean": float(c.mean()), "positive_rate": 1.0})
    for name, fn in JUDGE_REWARDS.items():
        r = fn(images, list(prompts)).numpy()
        rows.append({"reward": name, "mean": float(r.mean()), "positive_rate": float((r > 0).mean())})
    order = {name: i for i, name in enumerate(AXIS)}
    return pd.DataFrame(rows).sort_values("reward", key=lambda x: x.map(order)).reset_index(drop=True)


def sparsity_runs(
    base, out: str | Path, rewards: Sequence[str] = AXIS, seeds: Sequence[int] = (0, 1, 2, 3, 4)
) -> list[object]:
    """One :class:`~b2lib.experiments.experiment.RunConfig` per reward of the axis, method of ``base`` and seed:
    ``base`` (its setup, budget and every method's point) trained on that reward, in ``out/<reward>/<method>_seed<k>``;
    with ``base.reward_sign == -1`` (the sign control: trained to lower the reward) in ``out/<reward>_negated/...``.

    Why one folder per run: two workers stay busy to the end, a study cut off keeps every run it finished (a rerun
    skips them by fingerprint), and the runs come reward by reward, so the axis fills in one whole column at a time.
    Evaluation is the same for every folder (test judge, CLIPScore, BERTScore on the same prompts and noise), so every
    model is scored on the same independent metrics whatever it was trained on."""
    tag = "" if base.reward_sign == 1 else "_negated"
    return [
        replace(base, reward=r, methods=(m,), seeds=(s,), output_dir=str(Path(out) / f"{r}{tag}" / job_label(m, s)))
        for r in rewards
        for s in seeds
        for m in base.methods
    ]


def gain_vs_sparsity(
    comparisons: Mapping[str, pd.DataFrame], rates: pd.DataFrame, metric: str = "judge_all_ok", split: str = "test"
) -> pd.DataFrame:
    """Each method's gain over the base model on ``metric`` (with its interval), per training reward, next to that
    reward's positive rate on the base model: the table behind :func:`sparsity_plot`. ``comparisons``: reward ->
    that folder's paired comparisons (:func:`b2lib.reporting.report.paired_comparisons`)."""
    rate = rates.set_index("reward")["positive_rate"]
    rows = []
    for reward, table in comparisons.items():
        sel = table[(table["metric"] == metric) & (table["b"] == "base")]
        if "split" in sel:
            sel = sel[sel["split"] == split]
        for _, r in sel.iterrows():
            rows.append(
                {
                    "reward": reward,
                    "positive_rate": float(rate[reward]),
                    "method": r["a"],
                    "diff": r["diff"],
                    "low": r["low"],
                    "high": r["high"],
                }  # fmt: skip
            )
    return pd.DataFrame(rows)


def sparsity_plot(table: pd.DataFrame, metric_label: str = "test judge (all correct),\ngain over base"):
    """Each method's gain over base with its 95 % interval, one column per training reward, densest to sparsest
    (each tick names the reward and its positive rate on the base model), methods side by side in their colours.
    Points are not joined: the rewards are different rewards, not points on one scale."""
    import matplotlib.pyplot as plt

    rewards = table.drop_duplicates("reward").sort_values("positive_rate", ascending=False, kind="stable")
    methods = method_order(table["method"])
    width = 0.7 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.5 * len(rewards) + 1.6, 3.6))
    for i, method in enumerate(methods):
        part = table[table["method"] == method].set_index("reward")
        ks = [k for k, r in enumerate(rewards["reward"]) if r in part.index]
        rows = part.loc[[rewards["reward"].iloc[k] for k in ks]]
        x = np.array(ks) + (i - (len(methods) - 1) / 2) * width
        y = rows["diff"].to_numpy()
        err = np.vstack([y - rows["low"].to_numpy(), rows["high"].to_numpy() - y])
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color=method_colour(method), label=str(method))
    for k in range(len(rewards) - 1):  # the columns are separate rewards
        ax.axvline(k + 0.5, color="lightgrey", lw=0.8)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ticks = [f"{r}\n(positive rate {p:.2f})" for r, p in zip(rewards["reward"], rewards["positive_rate"])]
    ax.set_xticks(range(len(rewards)), ticks, fontsize=8)
    ax.set_xlim(-0.5, len(rewards) - 0.5)
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("training reward, densest to sparsest (positive rate: share of base-model images scored above 0)")
    ax.set_ylabel(metric_label if "\n" in metric_label else wrap(metric_label, 32))
    fig.tight_layout()
    legend_outside(fig, "right", title=f"method\n(dot: gain over base;\nbar: {INTERVAL})")
    return fig


def group_kind(rewards, mean: float) -> str:
    """One group's kind from its members' rewards: "mixed" (they differ: the group carries a comparison), "flat_low"
    (all equal and below ``mean``, the stage's mean reward: under a binary reward every member failed) or "flat_high"
    (all equal, at or above it). The one definition the censuses share."""
    first = float(rewards[0])
    if any(float(x) != first for x in rewards):
        return "mixed"
    return "flat_low" if first < mean else "flat_high"


def branch_census(
    trainer, rewards: Mapping[str, object], draws: int = 10, stage: int = 0, trained_steps: int | None = None
) -> pd.DataFrame:
    """B²'s branch groups scored by several rewards on the *same* samples: ``draws`` independent samples of ``stage``
    (``trainer.sample_stage(..., draw=d)``, not training's own; nothing is trained; ``trained_steps``: the branch
    point, default the schedule's at ``stage``), each image scored by every reward
    in ``rewards`` (name -> ``fn(images, prompts)``). One row per reward, draw and group: its branches, mean reward and
    kind ("mixed", "flat_low": all equal and below the draw's mean, "flat_high"), the table
    :func:`census_prediction` reads. Scoring one set of samples with every reward keeps the sampling noise out of the
    comparison between rewards."""
    rows = []
    for d in range(draws):
        traj, _ = trainer.sample_stage(stage, trained_steps=trained_steps, draw=d + 1)
        for name, fn in rewards.items():
            r = fn(traj.images, traj.prompts).float()
            mean = float(r.mean())
            for g in traj.group_ids.unique().tolist():
                rg = r[traj.group_ids == g]
                kind = group_kind(rg.tolist(), mean)
                rows.append(
                    {
                        "reward": name,
                        "draw": d,
                        "group": g,
                        "branches": len(rg),
                        "reward_mean": float(rg.mean()),
                        "kind": kind,
                    }  # fmt: skip
                )
    return pd.DataFrame(rows)


def census_study(
    prompts: Sequence[str],
    branches: Sequence[int],
    images_per_stage: int,
    draws: int,
    rewards: Mapping[str, object] | None = None,
    preset: str = "embedded",
    recipe: str = "paper",
    depths: Sequence[int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Notebook 16's census on the base model: for each branch count, :func:`branch_census` branched at B²'s first
    stage's point (``split_start`` steps before the end) and at x_T (or at each of ``depths``, trained steps), every
    image scored by each binary reward (default: the judge's binary and strict verdicts), B²'s sampler under
    ``recipe`` (the coarse one explores only the branch step, so its siblings may agree more). Returns the group table
    and, per reward, branch count and depth, :func:`census_prediction` (predicted against measured). Each branch count
    gets its own freshly loaded pipeline, because a trainer adds a LoRA to the pipeline it is given."""

    rewards = rewards or {"judge": judge_reward, "judge_strict": judge_strict_reward}
    parts = []
    for b in branches:
        cfg = trainer_config(preset, "b2", images_per_stage=images_per_stage, branches=b, recipe=recipe, progress=False)
        trainer = RLTrainer(load_models(preset)[0], judge_reward, list(prompts), cfg)
        for steps in depths or (cfg.split_start, cfg.num_steps):
            part = branch_census(trainer, rewards, draws=draws, trained_steps=steps)
            parts.append(part.assign(trained_steps=steps))
    census = pd.concat(parts, ignore_index=True)
    prediction = pd.concat(
        [census_prediction(part).assign(reward=r, B=b) for (r, b), part in census.groupby(["reward", "branches"])],
        ignore_index=True,
    )
    cols = ["reward", "B", "trained_steps", "groups", "p", "rho", "predicted", "measured", "independent"]
    return census, prediction[cols]


#: Colours of the census's lines, one per (reward, branch point): light for half the chain, dark for x_T.
_CENSUS_COLOURS = ("#a6cee3", "#1f78b4", "#fb9a99", "#e31a1c", "#b2df8a", "#33a02c")


def census_figure(prediction: pd.DataFrame):
    """Left: the measured informative share (solid) and the predicted one (dashed) against branches per prefix (log
    scale), one colour per reward and branch point; right: predicted against measured, in the same colours. Only the
    branch counts measured are ticked; the legend sits below both panels."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    handles = []
    for k, ((r, steps), part) in enumerate(prediction.groupby(["reward", "trained_steps"])):
        colour = _CENSUS_COLOURS[k % len(_CENSUS_COLOURS)]
        part = part.sort_values("B")
        axes[0].plot(part["B"], part["measured"], marker="o", color=colour)
        axes[0].plot(part["B"], part["predicted"], ls="--", color=colour)
        axes[1].scatter(part["predicted"], part["measured"], color=colour, edgecolor="black", lw=0.4, zorder=3)
        handles.append(Line2D([], [], color=colour, marker="o", label=f"{r}, branched {steps} steps before the end"))
    handles += [Line2D([], [], color="black", label="measured"), Line2D([], [], color="black", ls="--",
                                                                         label="predicted from (p, rho)")]  # fmt: skip
    axes[0].set(xscale="log", xlabel="branches per prefix (log scale)", ylabel="informative groups (share)")
    axes[0].set_title("measured (solid), predicted (dashed)")
    value_ticks(axes[0], prediction["B"].unique())
    axes[1].plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    axes[1].set(
        xlabel="predicted share", ylabel="measured share", title="prediction against measurement (y = x dotted)"
    )
    fig.tight_layout()
    legend_outside(fig, "below", handles=handles, ncol=3)
    return fig
