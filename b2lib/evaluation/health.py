"""Training health of finished runs, from their stage metrics (``metrics.csv``): whether the train reward rises
above its stage-to-stage noise (:func:`reward_trend`), and per method the means of kept samples, KL, update size and
time (:func:`health_summary`) with the largest value of any stage beside them (:func:`health_table`).

Why a module of its own: a reader checks these before believing a final number, and they are functions of the
metrics table alone (no run folders, no evaluations), so a notebook shows them beside any result without the readers
of :mod:`b2lib.reporting.report` or the statistics of :mod:`b2lib.evaluation.comparisons`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["reward_trend", "health_summary", "health_table"]


def reward_trend(metrics: pd.DataFrame, column: str = "reward_mean") -> pd.DataFrame:
    """Does the train reward rise? Per method, over its seeds: the least-squares slope of ``column`` against the stage
    (per seed), the rise it implies over the run (slope x (stages - 1)) with a 95 % t-interval over seeds, the
    stage-to-stage noise (std of each seed's residuals around its line, averaged), and their ratio: the issue's
    "rises by several times its stage-to-stage noise" is ``rise / noise`` well above 1 with a resolved interval."""
    from scipy import stats as st

    rows = []
    for method, m in metrics.groupby("method", sort=False):
        slopes, noises, n_stages = [], [], 0
        for _, r in m.groupby("seed"):
            x, y = r["stage"].to_numpy(float), r[column].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)  # a stage without a reward (e.g. nothing sampled) has no point
            x, y = x[ok], y[ok]
            if len(np.unique(x)) < 2:  # one stage: no line through it
                continue
            slope, intercept = np.polyfit(x, y, 1)
            slopes.append(slope)
            noises.append(float(np.std(y - (slope * x + intercept), ddof=2)) if len(x) > 2 else float("nan"))
            n_stages = max(n_stages, len(x))
        slopes = np.asarray(slopes)
        if not len(slopes):
            rows.append({"method": method, "seeds": 0, "stages": n_stages})
            continue
        span = n_stages - 1
        rise = float(slopes.mean() * span)
        half = (
            float(st.t.ppf(0.975, len(slopes) - 1) * slopes.std(ddof=1) / np.sqrt(len(slopes)) * span)
            if len(slopes) > 1
            else float("nan")
        )
        noise = float(np.nanmean(noises))
        rows.append(
            {
                "method": method,
                "seeds": len(slopes),
                "stages": n_stages,
                "rise": rise,
                "rise_low": rise - half,
                "rise_high": rise + half,
                "noise": noise,
                "rise_over_noise": rise / noise if noise > 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def health_summary(
    metrics: pd.DataFrame, branches: int | None = None, branched: Sequence[str] = ("b2", "branch")
) -> pd.DataFrame:
    """Per method, the mean over stages and seeds of the training-health columns of ``metrics.csv`` (kept samples and
    their signs, flat branch groups, approx KL, relative update size, optimizer steps, update time); with
    ``branches``, also the branch groups per stage (``images // branches``) of the ``branched`` methods."""
    cols = ["kept", "kept_pos", "kept_neg", "flat_groups", "approx_kl", "rel_update", "optimizer_steps", "train_s"]
    m = metrics.copy()
    if branches:
        m["groups"] = (m["images"] // branches).where(m["method"].isin(branched))
        cols.insert(4, "groups")
    return m.groupby("method", sort=False)[[c for c in cols if c in m]].mean()


def health_table(
    metrics: pd.DataFrame, branches: int | None = None, branched: Sequence[str] = ("b2", "branch")
) -> pd.DataFrame:
    """One row per method with everything a reader checks before believing a final number: the stage means of
    :func:`health_summary`, the largest KL to the base model, ``approx_kl`` and clip fraction of any stage (``*_max``;
    a mean can hide one bad stage), and the train reward's rise against its noise (:func:`reward_trend`)."""
    largest_cols = [c for c in ("kl", "approx_kl", "clipfrac") if c in metrics]
    largest = metrics.groupby("method", sort=False)[largest_cols].max().add_suffix("_max")
    table = health_summary(metrics, branches, branched).join(largest)
    if "reward_mean" in metrics:
        table = table.join(reward_trend(metrics).set_index("method"))
    return table
