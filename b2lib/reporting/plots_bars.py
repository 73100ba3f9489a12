"""Summary figures in the library's one style (:mod:`b2lib.reporting.plot_style`): the speed chart (measured ratios
against their goals), B²'s sensitivity panels (each factor's measured values on a labelled axis) and a pretraining's
loss over its phases.

Why apart from :mod:`b2lib.reporting.plots`: these draw one row or one factor at a time rather than curves or grids of
methods, and each needs its own key (what a bar's colour means, what a factor's axis measures).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from b2lib.reporting.plot_style import SD_BAND, legend_outside, method_colour, metric_label, value_ticks, wrap

__all__ = ["ratio_bars", "factor_lines", "pretraining_loss", "FACTOR_LABELS", "GOAL_COLOURS"]

#: A speed bar's colour says how its median stands against the row's goal.
GOAL_COLOURS = {"met": "#0072B2", "below": "#D55E00", "none": "#BBBBBB"}
_GOAL_NAMES = {"met": "median at or above its goal", "below": "median below its goal", "none": "no goal set"}

#: The x axis of each factor of B²'s sensitivity grid (:data:`b2lib.experiments.setups.MAIN_SENSITIVITY`), with its
# unit.
FACTOR_LABELS = {
    "branches": "branches per prefix B (32 images per stage)",
    "split_start": "trained steps at the first stage (of 20)",
    "stages": "stages (3,840 images in all)",
    "threshold": "selection threshold τ (keep z ≥ τ, z < −τ)",
}


def _goal_status(values: pd.Series, goals: pd.Series) -> list[str]:
    return ["none" if np.isnan(g) else ("met" if v >= g else "below") for v, g in zip(values, goals)]


def _ratio_key(has_whiskers: bool, has_goal: bool, has_bound: bool, used: set[str]) -> list:
    """The speed chart's legend: what each bar colour and each mark stands for."""
    handles = [Patch(color=GOAL_COLOURS[s], label=_GOAL_NAMES[s]) for s in ("met", "below", "none") if s in used]
    if has_whiskers:
        handles.append(Line2D([], [], color="black", lw=1, marker="|", ms=8, label="whisker: min–max over repeats"))
    if has_goal:
        handles.append(Line2D([], [], color="black", lw=1.6, ls="--", label="goal"))
    if has_bound:
        handles.append(
            Line2D([], [], ls="", marker="D", ms=6, mfc="white", mec="black", label="best reachable (fixed costs)")
        )
    return handles


def ratio_bars(table, value: str = "median", label: str = "measurement", goal: str = "goal"):
    """Horizontal bars of measured ratios/shares with min-max whiskers and each row's goal as a dashed tick mark
    (a table like :func:`b2lib.bench.summary_table`'s). A bar's colour says whether its median meets the goal (the
    legend below says so); each value is written to the right of everything drawn on its row, clear of whiskers."""
    table = pd.DataFrame(table).reset_index(drop=True)
    n = len(table)
    labels = [wrap(t, 58) for t in table[label]]
    lines = sum(t.count("\n") + 1 for t in labels)
    fig, ax = plt.subplots(figsize=(9.5, 0.2 * lines + 0.35 * n + 1.2))
    y = np.arange(n)
    v = table[value].astype(float)
    goals = pd.to_numeric(table[goal], errors="coerce") if goal in table else pd.Series(np.nan, index=table.index)
    bounds = pd.to_numeric(table["bound"], errors="coerce") if "bound" in table else pd.Series(np.nan, index=v.index)
    status = _goal_status(v, goals)
    ax.barh(y, v, color=[GOAL_COLOURS[s] for s in status], height=0.62, alpha=0.9)
    whiskers = {"min", "max"} <= set(table)
    if whiskers:
        ax.errorbar(v, y, xerr=[v - table["min"], table["max"] - v], fmt="none", ecolor="black", capsize=3, lw=1)
    for yi, g in zip(y, goals):
        if not np.isnan(g):
            ax.plot([g, g], [yi - 0.42, yi + 0.42], color="black", lw=1.6, ls="--")
    for yi, b in zip(y, bounds):  # the best any loop could reach given the measured fixed costs (e.g. the VAE decode)
        if not np.isnan(b):
            ax.plot([b], [yi], ls="", marker="D", ms=6, mfc="white", mec="black", zorder=3)
    right = pd.concat([v, table["max"] if whiskers else v, goals, bounds], axis=1).max(axis=1)
    span = float(right.max())
    for yi, r, val in zip(y, right, v):
        ax.text(r + 0.02 * span, yi, f"{val:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, span * 1.14)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (×, higher is faster) or share of wall time; bar: median of repeats")
    fig.tight_layout()
    key = _ratio_key(whiskers, bool(goals.notna().any()), bool(bounds.notna().any()), set(status))
    legend_outside(fig, "below", handles=key, ncol=3)
    return fig


def factor_lines(
    table,
    factor_col: str = "factor",
    value_col: str = "value",
    metrics: Sequence[str] = ("judge_all_ok", "reward_mean", "clip_diversity"),
):
    """Sensitivity: one panel per (factor, metric), the metric against the factor's values; with several seeds per
    value, their mean and a bar of one std. Each x axis is labelled with its factor and unit
    (:data:`FACTOR_LABELS`) and ticked at the measured values only (integers where the factor is one)."""
    table = pd.DataFrame(table)
    factors = list(dict.fromkeys(table[factor_col]))
    metrics = [m for m in metrics if m in table]
    colour = method_colour(table["method"].iloc[0] if "method" in table and len(table) else "b2")
    fig, axes = plt.subplots(
        len(metrics), len(factors), figsize=(3.4 * len(factors), 2.6 * len(metrics) + 0.3), squeeze=False
    )
    for c, f in enumerate(factors):
        rows = table[table[factor_col] == f].assign(**{value_col: lambda t: t[value_col].astype(float)})
        data = rows.groupby(value_col)[metrics].agg(["mean", "std"]).sort_index()
        for r, m in enumerate(metrics):
            ax = axes[r, c]
            std = data[(m, "std")].fillna(0.0)
            ax.errorbar(data.index, data[(m, "mean")], yerr=std, marker="o", capsize=3, color=colour)
            value_ticks(ax, data.index)
            if r == 0:
                ax.set_title(f, fontsize=10)
            ax.set_xlabel(FACTOR_LABELS.get(f, f.replace("_", " ")) if r == len(metrics) - 1 else "", fontsize=9)
            if c == 0:
                ax.set_ylabel(wrap(metric_label(m), 26), fontsize=9)
    fig.tight_layout()
    key = [Line2D([], [], color=colour, marker="o", label=f"mean over seeds; bar: {SD_BAND}")]
    legend_outside(fig, "below", handles=key)
    return fig


def pretraining_loss(report: dict, window: int = 100):
    """A pretraining's loss per optimizer step over all its phases (``report``: a world's ``report.json`` with its
    ``earlier_phases``), as a running mean over ``window`` steps, each phase in its own shade, its boundary marked and
    its settings and wall time in the legend: what a longer pretraining bought, step by step."""
    phases = [*report.get("earlier_phases", []), report]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    start = 0
    shades = plt.get_cmap("Blues")(np.linspace(0.55, 0.95, len(phases)))
    for k, (phase, shade) in enumerate(zip(phases, shades)):
        losses = pd.Series(phase["text_to_image"]["losses"])
        smooth = losses.rolling(window, min_periods=1).mean()
        cfg, minutes = phase["config"], phase["text_to_image"]["wall_s"] / 60
        label = (
            f"phase {k + 1}: {len(losses):,} steps from {'random weights' if k == 0 else 'phase ' + str(k)}, "
            f"peak lr {cfg['lr']:g}, {minutes:.0f} min on {phase['threads']} thread(s)"
        )
        ax.plot(np.arange(start, start + len(losses)), smooth, color=shade, lw=1.4, label=label)
        if k:
            ax.axvline(start, color="grey", ls=":", lw=1)
        start += len(losses)
    ax.set_xlabel(f"optimizer step (batch {phases[-1]['config']['batch']})")
    ax.set_ylabel(f"training loss\n(running mean of {window} steps)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 1.2))
    fig.tight_layout()
    legend_outside(ax, where="below")
    return fig
