"""The front page's picture of B²-DiffuRL, drawn from the library's own objects, so it cannot drift from the code.

Two panels:

* **Branch-based sampling** at one stage: one shared stochastic prefix from ``x_T`` to the branch point ``T - s``,
  ``B`` branches from there, the trained steps after it (all of them, or only ``window`` steps with a deterministic
  tail: the coarse recipe's ``window=1``), rewards compared within the branch group.
* **Backward progressive training** over the run: per stage, which chain steps are trained, read from a
  :class:`~b2lib.algorithm.schedule.ProgressiveSchedule` (the interval grows from the end of the chain backwards).

Nothing here is hand-placed per setup: change the schedule, the branches or the window and the picture follows.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from b2lib.algorithm.schedule import ProgressiveSchedule

__all__ = ["stage_rows", "b2_schematic"]

_PREFIX, _TRAINED, _TAIL, _IDLE = "#8da0cb", "#e34a33", "#bdbdbd", "#f0f0f0"


def stage_rows(schedule: ProgressiveSchedule, window: int | None, shown: int = 6) -> list[tuple[int, int, int, int]]:
    """``(stage, branch_point, first_untrained_after, num_steps)`` for ``shown`` stages spread over the run.

    Chain indices run ``0 .. T-1`` from ``x_T``; a stage branches at ``T - s`` and trains ``[T - s, T - s + w)``
    with ``w = s`` (no window) or ``min(window, s)``. Pure, so a test can check the picture's geometry."""
    if shown < 1:
        raise ValueError(f"shown must be >= 1, got {shown}.")
    n = schedule.num_stages
    stages = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(shown, n))})
    rows = []
    for k in stages:
        first, end = schedule.interval(k)
        w = end - first if window is None else min(window, end - first)
        rows.append((k, first, first + w, schedule.num_steps))
    return rows


def b2_schematic(schedule: ProgressiveSchedule, branches: int, window: int | None = None, shown: int = 6):
    """The two-panel figure (see the module docstring); returns the matplotlib figure."""
    if branches < 1:
        raise ValueError(f"branches must be >= 1, got {branches}.")
    T = schedule.num_steps
    rows = stage_rows(schedule, window, shown)
    fig, (ax_b, ax_p) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.05, 1]})

    # left: one stage's branch group (the last shown stage with a split inside the chain, else the last)
    mid = [r for r in rows if r[1] > 0]
    k, split, trained_end, _ = mid[len(mid) // 2] if mid else rows[-1]
    ys = np.linspace(-1, 1, branches) if branches > 1 else np.zeros(1)
    ax_b.plot([0, split], [0, 0], color=_PREFIX, lw=4, solid_capstyle="round", label="shared prefix (sampled once)")
    for i, y in enumerate(ys):
        ax_b.plot([split, split + 0.6], [0, y], color=_TRAINED, lw=2)
        ax_b.plot([split + 0.6, trained_end], [y, y], color=_TRAINED, lw=3, label="trained steps" if i == 0 else None)
        if trained_end < T:
            ax_b.plot(
                [trained_end, T], [y, y], color=_TAIL, lw=3, ls="--", label="deterministic tail" if i == 0 else None
            )
        ax_b.text(T + 0.3, y, f"r{i + 1}", va="center", fontsize=9)
    ax_b.axvline(split, color="k", lw=0.8, ls=":")
    ax_b.text(split, 1.35, f"branch point T − s = {split}", ha="center", fontsize=9)
    ax_b.text(0, -1.45, "x_T (noise)", ha="left", fontsize=9)
    ax_b.text(T, -1.45, "x_0 (image)", ha="right", fontsize=9)
    ax_b.set_xlim(-0.5, T + 1.5)
    ax_b.set_ylim(-1.7, 1.7)
    ax_b.set_yticks([])
    ax_b.set_xlabel("denoising step (chain index)")
    ax_b.set_title(f"Branch-based sampling (stage {k}): {branches} branches,\nadvantages compared within the group")
    ax_b.legend(loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=3, fontsize=8, frameon=False)

    # right: the schedule, one row per shown stage
    for j, (k, split, trained_end, _) in enumerate(rows):
        y = len(rows) - 1 - j
        for t in range(T):
            if t < split:
                c = _IDLE
            elif t < trained_end:
                c = _TRAINED
            else:
                c = _TAIL
            ax_p.add_patch(Rectangle((t, y - 0.4), 1, 0.8, facecolor=c, edgecolor="white", lw=0.5))
    ax_p.set_xlim(0, T)
    ax_p.set_ylim(-0.6, len(rows) - 0.4)
    ax_p.set_yticks(range(len(rows)))
    ax_p.set_yticklabels([f"stage {r[0]}" for r in reversed(rows)])
    ax_p.set_xlabel("denoising step (chain index; x_T left, x_0 right)")
    ax_p.set_title(
        f"Backward progressive training: s = {schedule.start} → {schedule.end} of {T} steps\n"
        f"over {schedule.num_stages} stages (branch point moves towards x_T)"
    )
    ax_p.grid(False)
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in (_IDLE, _TRAINED, _TAIL)]
    ax_p.legend(
        handles,
        ["shared prefix", "trained", "deterministic tail" if window else "not trained"],
        loc="upper left",
        bbox_to_anchor=(0.0, -0.2),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    return fig
