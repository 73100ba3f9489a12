"""Figures shared by the notebooks, in one style (:mod:`b2lib.reporting.plot_style`): each method in its own colour in
every figure, legends outside the data, axes labelled with their units, every interval named as what it is."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from b2lib.reporting.plot_style import (
    INTERVAL,
    SD_BAND,
    legend_outside,
    method_colour,
    method_dashes,
    method_handles,
    method_order,
    metric_label,
    set_style,
    wrap,
)
from b2lib.reporting.plots_bars import FACTOR_LABELS, factor_lines, pretraining_loss, ratio_bars

__all__ = [
    "snr_plot",
    "image_grid",
    "save_figure",
    "set_style",
    "training_curves",
    "comparison_grid",
    "ratio_bars",
    "pretraining_loss",
    "curves_grid",
    "tradeoff",
    "factor_lines",
    "health_curves",
    "sweep_plot",
    "interval_plot",
    "sign_control_plot",
    "method_colour",
    "legend_outside",
    "FACTOR_LABELS",
    "HEALTH_COLUMNS",
    "X_LABELS",
]


def _to_hwc(image) -> np.ndarray:
    if torch.is_tensor(image):
        image = image.detach().cpu().float().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return image


def _title_width(scale: float) -> int:
    """Characters per title line that fit over one image of ``scale`` inches at font size 6.5 (no overlap)."""
    return max(10, int(scale * 13))


def image_grid(
    images: Sequence,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    scale: float = 1.3,
    row_labels: Sequence[str] | None = None,
):
    """A grid of images (tensors ``(3, H, W)`` in [0, 1] or uint8 ``(H, W, 3)``) with optional titles, wrapped so that
    neighbouring titles never run into each other."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    titles = [wrap(t, _title_width(scale)) for t in titles] if titles is not None else None
    lines = max((t.count("\n") + 1 for t in titles), default=0) if titles else 0
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * (scale + 0.13 * lines)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if i < n:
            ax.imshow(_to_hwc(images[i]), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=6.5)
    if row_labels is not None:
        for r, label in enumerate(row_labels[:nrows]):
            axes[r, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


#: axis labels of the two cost views of a curve
X_LABELS = {"images_seen": "images generated", "unet_rows_seen": "UNet rows (sampling + update forwards)"}

#: the training-health columns of ``metrics.csv`` (see README "Training health")
HEALTH_COLUMNS = ("reward_mean", "approx_kl", "clipfrac", "grad_norm", "rel_update", "kept")

_LOG_COLUMNS = ("approx_kl", "rel_update", "grad_norm")


def health_curves(metrics, x: str = "images_seen", hue: str = "method"):
    """The training-health panels: train reward, approx KL, clip fraction, grad norm, relative update size, kept
    samples, per stage (log scale where the values span decades, and the axis says so)."""
    fig = training_curves(metrics, HEALTH_COLUMNS, x=x, hue=hue)
    for ax, col in zip(fig.axes, [c for c in HEALTH_COLUMNS if c in metrics]):
        if col in _LOG_COLUMNS and (metrics[col] > 0).any():
            ax.set_yscale("log")
            ax.set_ylabel(f"{metric_label(col, per_stage=True)} (log scale)")
    return fig


def sweep_plot(table, x: str = "lr", hue: str = "grad_accum", y: str = "gain", col: str = "method"):
    """The tuning sweep: train-split reward gain over the base model per grid point, one panel per method; points are
    seeds, lines their mean."""
    dodge = table[hue].nunique() > 1  # seaborn divides the dodge by (hue levels - 1)
    g = sns.catplot(
        data=table, x=x, y=y, hue=hue, col=col, kind="point", errorbar=None, height=3.0, aspect=1.2, dodge=0.2 * dodge
    )
    g.map_dataframe(sns.stripplot, x=x, y=y, hue=hue, dodge=dodge, alpha=0.5, palette="dark:k")
    for ax in g.axes.flat:
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    g.set_axis_labels("learning rate" if x == "lr" else x.replace("_", " "), "train reward − base (paired)")
    return g.figure


def interval_plot(table, label_cols=("template", "metric", "a", "b")):
    """Differences with their 95 % intervals (one row per comparison of
    :func:`b2lib.evaluation.comparisons.paired_comparison`), each in the colour of its first model's method."""
    labels = [" · ".join(f"{r[c]}" for c in label_cols[:2]) + f": {r['a']} − {r['b']}" for _, r in table.iterrows()]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(table) + 0.8))
    for y, (_, r) in enumerate(table.iterrows()):  # each row in the colour of its first model (a in a − b)
        ax.errorbar(
            r["diff"], y, xerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]], fmt="o", color=method_colour(r["a"]),
            capsize=3,
        )  # fmt: skip
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(table)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference a − b (dot: mean; bar: {INTERVAL}, bootstrap over seeds and prompts)")
    fig.tight_layout()
    return fig


def sign_control_plot(table, metric: str = "reward"):
    """Gain, signal and drift with their 95 % intervals per method (:func:`b2lib.evaluation.comparisons.sign_control`):
    learning shows as a signal above zero, damage that does not depend on the reward as a drift below it."""
    t = table[table["metric"] == metric].reset_index(drop=True)
    parts = ("gain", "signal", "drift")
    fig, ax = plt.subplots(figsize=(6.5, 0.9 * len(t) + 1.2))
    for k, (part, colour) in enumerate(zip(parts, ("k", "tab:green", "tab:red"))):
        y = np.arange(len(t)) + (k - 1) * 0.22
        ax.errorbar(
            t[part],
            y,
            xerr=[t[part] - t[f"{part}_low"], t[f"{part}_high"] - t[part]],
            fmt="o",
            capsize=3,
            color=colour,
            label=part,
        )
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(t)), [f"{m} ({s} seeds)" for m, s in zip(t["method"], t["seeds"])])
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} change vs base (dot: mean; bar: {INTERVAL}, bootstrap)")
    fig.tight_layout()
    legend_outside(fig, "right")
    return fig


def snr_plot(table):
    """Per-image gradient SNR with its 95 % interval for every estimator and step subset of
    :func:`b2lib.studies.gradient_snr.snr_study` (selection on and off as two markers): the estimator that trains on a
    budget of N images with the least drift is the one furthest right."""
    t = table.reset_index(drop=True)
    labels = [f"{e} · {s} ({n} steps)" for e, s, n in zip(t["estimator"], t["steps"], t["n_steps"])]
    order = list(dict.fromkeys(labels))
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(order) + 1.4))
    for sel, colour, shift in ((True, "tab:blue", -0.12), (False, "tab:orange", 0.12)):
        part = t[t["selection"] == sel]
        if part.empty:
            continue
        y = np.array([order.index(labels[i]) for i in part.index]) + shift
        per = part["snr_per_image"].to_numpy()
        low = part["snr_low"].to_numpy() / part["images"].to_numpy()
        high = part["snr_high"].to_numpy() / part["images"].to_numpy()
        ax.errorbar(
            per,
            y,
            xerr=[per - low, high - per],
            fmt="o",
            capsize=3,
            color=colour,
            label="kept samples (selection)" if sel else "all samples",
        )
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(order)), order, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("gradient SNR per image generated (dot: estimate; bar: 95 % jackknife interval)")
    fig.tight_layout()
    legend_outside(fig, "right")
    return fig


def _mean_band(ax, data: pd.DataFrame, x: str, y: str, hue: str, markers: bool | None = None) -> list:
    """One line per ``hue`` value in its method's colour and dash: the mean over seeds per stage against the mean
    ``x`` of that stage, and a band of one standard deviation where there are several seeds. Averaging per *stage*
    (not per ``x`` value) keeps a curve whole when seeds reach a stage at different costs (UNet rows differ by
    seed). Markers on every line or none (``None``: when no line has more than 30 stages). Returns the hue values
    drawn, in legend order."""
    data = data.dropna(subset=[x, y])
    if data.empty:
        return []
    levels = method_order(data[hue]) if hue in data else [None]
    dashes = method_dashes(levels)
    key = "stage" if "stage" in data else x
    curves = {}
    for level in levels:
        part = data if level is None else data[data[hue] == level]
        agg = part.groupby(key).agg(xm=(x, "mean"), ym=(y, "mean"), ys=(y, "std"), n=(y, "size"))
        curves[level] = agg.sort_values("xm")
    if markers is None:
        markers = max(len(g) for g in curves.values()) <= 30
    for level, g in curves.items():
        colour = method_colour(level)
        (line,) = ax.plot(g["xm"], g["ym"], color=colour, lw=1.4, marker="o" if markers else None, ms=3.5)
        if dashes.get(level):
            line.set_dashes(dashes[level])
        if (g["n"] > 1).any():
            sd = g["ys"].fillna(0.0)
            ax.fill_between(g["xm"], g["ym"] - sd, g["ym"] + sd, color=colour, alpha=0.15, lw=0)
    return levels


def _curve_legend(fig, levels: Sequence, hue: str) -> None:
    """The curves' one legend, to the right of every panel, with markers where the lines have them."""
    if levels and levels != [None]:
        marked = any(line.get_marker() not in (None, "None", "") for ax in fig.axes for line in ax.get_lines())
        handles = method_handles(levels, marker="o" if marked else None)
        legend_outside(fig, "right", handles=handles, title=f"{hue}\n(mean over seeds;\nband {SD_BAND})")


def _compact_ticks(ax) -> None:
    """Thousands written as ``20k`` on an x axis that reaches 10,000 (UNet rows), so long tick labels do not touch."""
    from matplotlib.ticker import FuncFormatter

    if ax.get_xlim()[1] >= 10_000:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0"))


def smooth_stages(metrics: pd.DataFrame, columns: Sequence[str], window: int, hue: str = "method") -> pd.DataFrame:
    """``columns`` replaced by their trailing mean over ``window`` stages within each run (``hue`` and seed), in stage
    order; the first stages average what there is. Pure: returns a new frame."""
    keys = [k for k in (hue, "seed") if k in metrics] or (lambda _: 0)
    out = metrics.sort_values("stage").copy() if "stage" in metrics else metrics.copy()
    for col in columns:
        out[col] = out.groupby(keys)[col].transform(lambda v: v.rolling(window, min_periods=1).mean())
    return out


def training_curves(
    metrics,
    columns: Sequence[str] = ("reward_mean",),
    x: str = "images_seen",
    hue: str = "method",
    x_label: str | None = None,
    smooth: int = 1,
):
    """Per-stage curves against the number of images generated (the budget both methods share) or another cost
    (``x_label`` names it, e.g. transformer rows on the flow world); mean and band over seeds when there are
    several, each method in its colour, the legend to the right of the panels (at most three panels a row).
    ``smooth`` > 1: each run's values are first a trailing mean over that many stages (:func:`smooth_stages`), so
    that a binary reward's stage-to-stage scatter over hundreds of stages does not hide the trend; the y label says
    so."""
    metrics = pd.DataFrame(metrics)
    columns = [c for c in columns if c in metrics]
    if smooth > 1:
        metrics = smooth_stages(metrics, columns, smooth, hue)
    ncols = min(3, max(len(columns), 1))
    nrows = max(1, -(-len(columns) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    levels: list = []
    for ax, col in zip(axes.flat, columns):
        levels = _mean_band(ax, metrics, x, col, hue) or levels
        ax.set_xlabel(x_label or X_LABELS.get(x, x))
        label = metric_label(col, per_stage=True)
        ax.set_ylabel(label if smooth <= 1 else f"{label},\nmean of the last {smooth} stages")
        _compact_ticks(ax)
    for ax in list(axes.flat)[len(columns) :]:
        ax.remove()
    fig.tight_layout()
    _curve_legend(fig, levels, hue)
    return fig


def comparison_grid(images: dict, prompts: Sequence[str], columns: int = 8, scale: float = 1.4):
    """Rows = models (e.g. base / DDPO / B²), columns = the same prompts and seeds: differences are the models'.
    Prompts are wrapped over two or three lines so that neighbouring titles never touch; each row is labelled with its
    model in the model's method colour."""
    labels = list(images)
    n = min(columns, len(prompts))
    step = max(1, len(prompts) // n)
    idx = list(range(0, len(prompts), step))[:n]
    titles = {i: wrap(prompts[i], _title_width(scale)) for i in idx}
    lines = max(t.count("\n") + 1 for t in titles.values())
    fig, axes = plt.subplots(
        len(labels), n, figsize=(n * scale, len(labels) * scale * 1.05 + 0.13 * lines), squeeze=False
    )
    for r, label in enumerate(labels):
        for c, i in enumerate(idx):
            ax = axes[r, c]
            ax.imshow(_to_hwc(images[label][i]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[i], fontsize=6.5)
            if c == 0:
                ax.set_ylabel(label, fontsize=10, fontweight="bold", color=method_colour(label))
    fig.tight_layout()
    return fig


def curves_grid(
    metrics,
    columns: Sequence[str] = ("reward_mean", "judge_all_ok"),
    row: str = "template",
    x: str = "images_seen",
    hue: str = "method",
):
    """Training curves, one row of panels per ``row`` value (e.g. template or update rule), one column per metric;
    mean and a band of one std over seeds, each method in its colour, one legend to the right of all panels."""
    metrics = pd.DataFrame(metrics)
    rows = list(dict.fromkeys(metrics[row])) if row in metrics else [None]
    columns = [c for c in columns if c in metrics]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(4.2 * len(columns), 3.0 * len(rows)), squeeze=False)
    levels: list = []
    for r, value in enumerate(rows):
        data = metrics if value is None else metrics[metrics[row] == value]
        for c, col in enumerate(columns):
            ax = axes[r, c]
            levels = method_order([*levels, *_mean_band(ax, data, x, col, hue)])
            if value is not None:
                ax.set_title(f"{row}: {value}", fontsize=9)
            ax.set_xlabel(X_LABELS.get(x, x))
            ax.set_ylabel(metric_label(col, per_stage=True))
            _compact_ticks(ax)
    fig.tight_layout()
    _curve_legend(fig, levels, hue)
    return fig


_MARKERS = ("o", "X", "s", "^", "D", "v", "P", "*")


def tradeoff(evals, x: str = "clip_diversity", y: str = "judge_all_ok", hue: str = "method", col: str = "template"):
    """Alignment against diversity, one point per model (seed), one panel per ``col``: up and right is better. Each
    method in its colour (and a marker of its own), the legend to the right of the panels."""
    evals = pd.DataFrame(evals)
    cols = list(dict.fromkeys(evals[col])) if col in evals else [None]
    levels = method_order(evals[hue])
    markers = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(levels)}
    fig, axes = plt.subplots(1, len(cols), figsize=(4.0 * len(cols), 3.4), squeeze=False)
    for ax, value in zip(axes.flat, cols):
        data = evals if value is None else evals[evals[col] == value]
        for m in levels:
            part = data[data[hue] == m]
            ax.scatter(part[x], part[y], s=55, color=method_colour(m), marker=markers[m], edgecolor="white", lw=0.5)
        ax.set_title(f"{col}: {value}" if value is not None else "", fontsize=9)
        ax.set_xlabel(wrap(metric_label(x), 36))
        ax.set_ylabel(wrap(metric_label(y), 36))
    fig.tight_layout()
    handles = [plt.Line2D([], [], ls="", marker=markers[m], ms=7, color=method_colour(m), label=str(m)) for m in levels]
    legend_outside(fig, "right", handles=handles, title=f"{hue} (one point per seed)")
    return fig
