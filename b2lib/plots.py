"""Figures shared by the notebooks (seaborn styling, same look everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

__all__ = [
    "snr_plot",
    "image_grid",
    "save_figure",
    "set_style",
    "training_curves",
    "comparison_grid",
    "ratio_bars",
    "curves_grid",
    "tradeoff",
    "factor_lines",
    "health_curves",
    "sweep_plot",
    "interval_plot",
    "sign_control_plot",
    "HEALTH_COLUMNS",
    "X_LABELS",
]


def set_style() -> None:
    sns.set_theme(style="whitegrid", context="notebook")


def _to_hwc(image) -> np.ndarray:
    if torch.is_tensor(image):
        image = image.detach().cpu().float().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return image


def image_grid(
    images: Sequence,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    scale: float = 1.3,
    row_labels: Sequence[str] | None = None,
):
    """A grid of images (tensors ``(3, H, W)`` in [0, 1] or uint8 ``(H, W, 3)``) with optional titles."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * scale, nrows * scale * (1.25 if titles else 1.0)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if i < n:
            ax.imshow(_to_hwc(images[i]), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=6)
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


def health_curves(metrics, x: str = "images_seen", hue: str = "method"):
    """The training-health panels: train reward, approx KL, clip fraction, grad norm, relative update size, kept
    samples, per stage (log scale where the values span decades)."""
    fig = training_curves(metrics, HEALTH_COLUMNS, x=x, hue=hue)
    for ax, col in zip(fig.axes, [c for c in HEALTH_COLUMNS if c in metrics]):
        if col in ("approx_kl", "rel_update", "grad_norm") and (metrics[col] > 0).any():
            ax.set_yscale("log")
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
    g.set_axis_labels(x, "train reward − base (paired)")
    return g.figure


def interval_plot(table, label_cols=("template", "metric", "a", "b")):
    """Differences with their 95 % intervals (one row per comparison of :func:`b2lib.comparisons.paired_comparison`)."""
    import numpy as np

    labels = [" · ".join(f"{r[c]}" for c in label_cols[:2]) + f": {r['a']} − {r['b']}" for _, r in table.iterrows()]
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(table) + 0.8))
    y = np.arange(len(table))
    ax.errorbar(
        table["diff"],
        y,
        xerr=[table["diff"] - table["low"], table["high"] - table["diff"]],
        fmt="o",
        color="k",
        capsize=3,
    )
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference (95 % bootstrap interval over seeds and prompts)")
    fig.tight_layout()
    return fig


def sign_control_plot(table, metric: str = "reward"):
    """Gain, signal and drift with their 95 % intervals per method (:func:`b2lib.comparisons.sign_control`): learning
    shows as a signal above zero, damage that does not depend on the reward as a drift below it."""
    import numpy as np

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
    ax.set_xlabel(f"{metric} change vs base (95 % bootstrap interval)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def snr_plot(table):
    """Per-image gradient SNR with its 95 % interval for every estimator and step subset of
    :func:`b2lib.gradient_snr.snr_study` (selection on and off as two markers): the estimator that trains on a budget
    of N images with the least drift is the one furthest right."""
    import numpy as np

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
    ax.set_xlabel("gradient SNR per image generated (95 % jackknife interval)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def training_curves(metrics, columns: Sequence[str] = ("reward_mean",), x: str = "images_seen", hue: str = "method"):
    """Per-stage curves against the number of images generated (the budget both methods share); mean and band
    over seeds when there are several."""
    import pandas as pd

    metrics = pd.DataFrame(metrics)
    columns = [c for c in columns if c in metrics]
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.2), squeeze=False)
    for ax, col in zip(axes.flat, columns):
        sns.lineplot(data=metrics, x=x, y=col, hue=hue, marker="o", errorbar="sd", ax=ax)
        ax.set_xlabel(X_LABELS.get(x, x))
        ax.set_ylabel(col.replace("_", " "))
    fig.tight_layout()
    return fig


def comparison_grid(images: dict, prompts: Sequence[str], columns: int = 8, scale: float = 1.4):
    """Rows = models (e.g. base / DDPO / B²), columns = the same prompts and seeds: differences are the models'."""
    labels = list(images)
    n = min(columns, len(prompts))
    step = max(1, len(prompts) // n)
    idx = list(range(0, len(prompts), step))[:n]
    fig, axes = plt.subplots(len(labels), n, figsize=(n * scale, len(labels) * scale * 1.15), squeeze=False)
    for r, label in enumerate(labels):
        for c, i in enumerate(idx):
            ax = axes[r, c]
            ax.imshow(_to_hwc(images[label][i]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(prompts[i], fontsize=6)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def ratio_bars(table, value: str = "median", label: str = "measurement", goal: str = "goal"):
    """Horizontal bars of measured ratios/shares with min-max whiskers and each row's goal as a tick mark
    (a table like :func:`b2lib.bench.summary_table`'s)."""
    import pandas as pd

    table = pd.DataFrame(table).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(table) + 1.0))
    y = np.arange(len(table))
    colours = ["#4c72b0" if g is None or pd.isna(g) or v >= g else "#c44e52" for v, g in zip(table[value], table[goal])]
    ax.barh(y, table[value], color=colours, alpha=0.85)
    if {"min", "max"} <= set(table):
        ax.errorbar(
            table[value],
            y,
            xerr=[table[value] - table["min"], table["max"] - table[value]],
            fmt="none",
            ecolor="black",
            capsize=3,
            lw=1,
        )
    for yi, g in zip(y, table[goal]):
        if g is not None and not pd.isna(g):
            ax.plot([g, g], [yi - 0.4, yi + 0.4], color="black", lw=2, ls="--")
    if "bound" in table:  # the best any loop could reach given the measured fixed costs (e.g. the VAE decode)
        for yi, b in zip(y, table["bound"]):
            if b is not None and not pd.isna(b):
                ax.plot([b], [yi], marker="D", color="#dd8452", ms=5, zorder=3)
    for yi, v in zip(y, table[value]):
        ax.text(v, yi, f" {v:.2f}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(table[label], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio or share (median of repeats; whiskers: min-max; dashed: goal; diamond: best reachable)")
    fig.tight_layout()
    return fig


def curves_grid(
    metrics,
    columns: Sequence[str] = ("reward_mean", "judge_all_ok"),
    row: str = "template",
    x: str = "images_seen",
    hue: str = "method",
):
    """Training curves, one row of panels per ``row`` value (e.g. template), one column per metric; mean and a
    band of one std over seeds."""
    import pandas as pd

    metrics = pd.DataFrame(metrics)
    rows = list(dict.fromkeys(metrics[row])) if row in metrics else [None]
    columns = [c for c in columns if c in metrics]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(4.2 * len(columns), 3.0 * len(rows)), squeeze=False)
    for r, value in enumerate(rows):
        data = metrics if value is None else metrics[metrics[row] == value]
        for c, col in enumerate(columns):
            ax = axes[r, c]
            sns.lineplot(data=data, x=x, y=col, hue=hue, errorbar="sd", ax=ax, legend=(r == 0 and c == 0))
            ax.set_title(f"{value} · {col.replace('_', ' ')}" if value is not None else col, fontsize=9)
            ax.set_xlabel(X_LABELS.get(x, x))
            ax.set_ylabel("")
    fig.tight_layout()
    return fig


def tradeoff(evals, x: str = "clip_diversity", y: str = "judge_all_ok", hue: str = "method", col: str = "template"):
    """Alignment against diversity, one point per model (seed), one panel per ``col``: up and right is better."""
    import pandas as pd

    evals = pd.DataFrame(evals)
    cols = list(dict.fromkeys(evals[col])) if col in evals else [None]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.0 * len(cols), 3.4), squeeze=False)
    for ax, value in zip(axes.flat, cols):
        data = evals if value is None else evals[evals[col] == value]
        sns.scatterplot(data=data, x=x, y=y, hue=hue, style=hue, s=70, ax=ax, legend=ax is axes.flat[0])
        ax.set_title(str(value) if value is not None else "", fontsize=9)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(y.replace("_", " "))
    fig.tight_layout()
    return fig


def factor_lines(
    table,
    factor_col: str = "factor",
    value_col: str = "value",
    metrics: Sequence[str] = ("judge_all_ok", "reward_mean", "clip_diversity"),
):
    """Sensitivity: one panel per (factor, metric), the metric against the factor's values; with several seeds per
    value, their mean and a bar of one std."""
    import pandas as pd

    table = pd.DataFrame(table)
    factors = list(dict.fromkeys(table[factor_col]))
    metrics = [m for m in metrics if m in table]
    fig, axes = plt.subplots(
        len(metrics), len(factors), figsize=(3.2 * len(factors), 2.6 * len(metrics)), squeeze=False
    )
    for c, f in enumerate(factors):
        rows = table[table[factor_col] == f].assign(**{value_col: lambda t: t[value_col].astype(float)})
        data = rows.groupby(value_col)[metrics].agg(["mean", "std"]).sort_index()
        for r, m in enumerate(metrics):
            ax = axes[r, c]
            std = data[(m, "std")].fillna(0.0)
            ax.errorbar(data.index, data[(m, "mean")], yerr=std, marker="o", capsize=3)
            if r == 0:
                ax.set_title(f, fontsize=9)
            if c == 0:
                ax.set_ylabel(m.replace("_", " "))
    fig.tight_layout()
    return fig
